"""Logical PostgreSQL restore: pg_restore of a stored pg_dump archive into `--target DSN`,
whole or `--include schema.table`, with a dry run that lists what would be dropped and created.
See sources/postgresql.py for how the dump is taken."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import tempfile
from typing import Any

from insite_console import clock
from insite_console.errors import RestoreRefused, SourceError, UsageError
from insite_console.sources.pg_client import (
    GLOBALS_FILE,
    PgTarget,
    pg_tool,
    run_tool,
    scrub,
    source_settings,
)


_TOC_LINE = re.compile(r"^(\d+); (\d+) (\d+) (.*)$")
_TOC_TYPES = sorted([
    "TABLE DATA", "TABLE", "SEQUENCE SET", "SEQUENCE OWNED BY", "SEQUENCE", "FK CONSTRAINT", "CHECK CONSTRAINT",
    "CONSTRAINT", "DEFAULT ACL", "DEFAULT", "MATERIALIZED VIEW DATA", "MATERIALIZED VIEW", "VIEW", "INDEX ATTACH",
    "INDEX", "TRIGGER", "FUNCTION", "PROCEDURE", "AGGREGATE", "SCHEMA", "EXTENSION", "COMMENT", "ACL", "TYPE",
    "DOMAIN", "BLOBS", "BLOB", "BLOB METADATA", "LARGE OBJECT", "FOREIGN TABLE", "POLICY", "ROW SECURITY", "RULE",
    "EVENT TRIGGER", "PUBLICATION TABLE", "PUBLICATION", "SUBSCRIPTION", "COLLATION", "CONVERSION", "OPERATOR CLASS",
    "OPERATOR FAMILY", "OPERATOR", "CAST", "TEXT SEARCH CONFIGURATION", "TEXT SEARCH DICTIONARY", "TABLE ATTACH",
    "STATISTICS", "SERVER", "USER MAPPING", "FOREIGN DATA WRAPPER", "ENCODING", "STDSTRINGS", "SEARCHPATH",
    "DATABASE", "DATABASE PROPERTIES", "SHELL TYPE", "ACCESS METHOD", "TRANSFORM", "LANGUAGE", "PROCEDURAL LANGUAGE",
], key=len, reverse=True)


class TocEntry:
    __slots__ = ("id", "line", "kind", "schema", "name", "owner")

    def __init__(self, line: str):
        match = _TOC_LINE.match(line)
        if not match:
            raise ValueError(line)
        self.id = int(match.group(1))
        self.line = line
        rest = match.group(4)
        self.kind = next((t for t in _TOC_TYPES if rest.startswith(t + " ")), rest.split(" ", 1)[0])
        rest = rest[len(self.kind) + 1:]
        schema, _, rest = rest.partition(" ")
        self.schema = None if schema == "-" else schema
        name, _, owner = rest.rpartition(" ")
        if not name:  # no owner field
            name, owner = owner, ""
        self.name = name
        self.owner = owner

    @property
    def table_token(self) -> str:
        """For CONSTRAINT/DEFAULT/TRIGGER/POLICY entries the name is 'table thing'."""
        return self.name.split(" ", 1)[0]

    def label(self) -> str:
        return f"{self.kind} {self.schema + '.' if self.schema else ''}{self.name}"


class DumpArchive:
    """A stored dump as pg_restore's input: one custom-format stream (fed through stdin, or
    spooled to a file for `-j`), or a directory-format dump (written to a temporary directory)."""

    def __init__(self, ctx, entries: list):
        self.ctx = ctx
        streams = [e for e in entries if e.type == "file" and e.path.endswith(".pgdump")]
        dir_files = [e for e in entries if e.type == "file" and e.path.split("/", 1)[0].endswith(".pgdir")
                     and "/" in e.path]
        if streams:
            self.entry, self.files = streams[0], None
            self.size = streams[0].size
        elif dir_files:
            self.entry, self.files = None, dir_files
            self.size = sum(e.size for e in dir_files)
        else:
            raise SourceError(f"backup {ctx.backup['id']} holds no pg_dump archive")
        self.path: str | None = None
        self._spool: str | None = None

    @property
    def is_directory(self) -> bool:
        return self.files is not None

    def materialize(self) -> str:
        """A local copy pg_restore can seek in (free space checked first)."""
        if self.path:
            return self.path
        spool_dir = tempfile.gettempdir()
        free = shutil.disk_usage(spool_dir).free
        if free < self.size * 1.05 + (64 << 20):
            raise RestoreRefused(f"this restore needs a temporary copy of the dump in {spool_dir}, which has "
                                 f"{clock.human_bytes(free)} free for {clock.human_bytes(self.size)}; free space or "
                                 "set TMPDIR (a custom-format dump with jobs = 1 streams without a copy)")
        self._spool = tempfile.mkdtemp(prefix="insite-pgrestore-", dir=spool_dir)
        if self.files is None:
            targets = [(self.entry, os.path.join(self._spool, "dump.pgdump"))]
            self.path = targets[0][1]
        else:
            self.path = os.path.join(self._spool, "dump.pgdir")
            os.mkdir(self.path, 0o700)
            targets = [(e, os.path.join(self.path, e.path.split("/", 1)[1])) for e in self.files]
        for entry, dest in targets:
            name = os.path.basename(dest)
            if os.path.dirname(dest) not in (self.path, self._spool) or name in ("", ".", ".."):
                raise RestoreRefused(f"unexpected file {entry.path!r} in a directory-format dump")
            with open(dest, "wb") as out, self.ctx.open_entry(entry) as source:
                while True:
                    self.ctx.cancel.check()
                    block = source.read(1 << 20)
                    if not block:
                        break
                    out.write(block)
                    self.ctx.reporter.advance(bytes_done=len(block))
        return self.path

    def run(self, args: list[str], env: dict, secrets: list, what: str, need_file: bool = False) -> str:
        if self.path or self.is_directory or need_file:
            return run_tool(self.ctx, args + [self.materialize()], env, secrets, what)
        return run_tool(self.ctx, args, env, secrets, what, feed=self.entry)

    def close(self) -> None:
        if self._spool:
            shutil.rmtree(self._spool, ignore_errors=True)
            self._spool = self.path = None


def read_toc(ctx, archive: DumpArchive, pg_restore: str) -> list[TocEntry]:
    text = archive.run([pg_restore, "--list"], dict(os.environ), [], "pg_restore --list")
    entries = []
    for line in text.splitlines():
        if line and not line.startswith(";"):
            try:
                entries.append(TocEntry(line))
            except ValueError:
                continue
    return entries


def _definitions(ctx, archive: DumpArchive, pg_restore: str, toc: list[TocEntry]) -> dict[tuple[str, str | None, str], str]:
    """SQL of INDEX / SEQUENCE / SEQUENCE OWNED BY / TABLE / FK CONSTRAINT entries, read from the
    archive's TOC only (definitions, no data)."""
    wanted = [e for e in toc if e.kind in ("INDEX", "SEQUENCE", "SEQUENCE OWNED BY", "TABLE", "FK CONSTRAINT")]
    if not wanted:
        return {}
    with tempfile.NamedTemporaryFile("w", suffix=".list", delete=False) as handle:
        handle.write("\n".join(e.line for e in wanted) + "\n")
        list_path = handle.name
    try:
        text = archive.run([pg_restore, "--use-list", list_path, "--file", "-"], dict(os.environ), [],
                           "pg_restore (reading definitions)")
    finally:
        os.unlink(list_path)
    out: dict[tuple[str, str | None, str], str] = {}
    header = re.compile(r"^-- Name: (.*); Type: (.*); Schema: (.*); Owner: (.*)$", re.M)
    matches = list(header.finditer(text))
    for i, match in enumerate(matches):
        body = text[match.end():matches[i + 1].start() if i + 1 < len(matches) else len(text)]
        schema = None if match.group(3) == "-" else match.group(3)
        out[(match.group(2), schema, match.group(1))] = body
    return out


def select_entries(toc: list[TocEntry], includes: list[str], defs: dict,
                   missing_schemas: set[str] | frozenset = frozenset()) -> list[TocEntry]:
    """The TOC entries of the tables named by `includes` (globs on schema.table), with their data,
    sequences, defaults, constraints, indexes, triggers, policies, comments and grants."""
    def wanted(schema: str | None, table: str) -> bool:
        return any(fnmatch.fnmatchcase(f"{schema}.{table}", pattern) for pattern in includes)

    tables = {(e.schema, e.name) for e in toc
              if e.kind in ("TABLE", "VIEW", "MATERIALIZED VIEW", "FOREIGN TABLE") and wanted(e.schema, e.name)}
    sequences: set[tuple[str | None, str]] = set()
    for (kind, schema, name), body in defs.items():
        if kind in ("SEQUENCE OWNED BY", "SEQUENCE"):
            for tschema, tname in tables:
                if re.search(rf"(OWNED BY|ALTER TABLE( ONLY)?) {re.escape(_qual(tschema, tname))}[. ]", body):
                    sequences.add((schema, name))
    indexes = set()
    for (kind, schema, name), body in defs.items():
        if kind == "INDEX":
            for tschema, tname in tables:
                if re.search(rf" ON (ONLY )?{re.escape(_qual(tschema, tname))} ", body):
                    indexes.add((schema, name))
    chosen = []
    for e in toc:
        key = (e.schema, e.name)
        if e.kind in ("TABLE", "TABLE DATA", "VIEW", "MATERIALIZED VIEW", "MATERIALIZED VIEW DATA",
                      "FOREIGN TABLE") and key in tables:
            chosen.append(e)
        elif e.kind in ("SEQUENCE", "SEQUENCE OWNED BY", "SEQUENCE SET") and key in sequences:
            chosen.append(e)
        elif e.kind == "SCHEMA" and e.name in missing_schemas and e.name in {t[0] for t in tables}:
            chosen.append(e)
        elif e.kind == "INDEX" and key in indexes:
            chosen.append(e)
        elif e.kind in ("CONSTRAINT", "CHECK CONSTRAINT", "DEFAULT", "ROW SECURITY") \
                and (e.schema, e.table_token) in tables:
            chosen.append(e)
        elif e.kind in ("COMMENT", "ACL") and e.name.startswith(("TABLE ", "VIEW ", "SEQUENCE ", "COLUMN ")):
            target = e.name.split(" ", 1)[1]
            target = target.split(".", 1)[0] if e.name.startswith("COLUMN ") else target
            if (e.schema, target) in tables or (e.schema, target) in sequences:
                chosen.append(e)
    return chosen


def skipped_dependents(toc: list[TocEntry], chosen: list[TocEntry]) -> list[TocEntry]:
    """Objects on the chosen tables that a partial restore leaves out because they depend on
    other objects (foreign keys, triggers, policies, rules), as `pg_restore -t` does."""
    tables = {(e.schema, e.name) for e in chosen if e.kind == "TABLE"}
    return [e for e in toc if e.kind in ("FK CONSTRAINT", "TRIGGER", "POLICY", "RULE")
            and (e.schema, e.table_token) in tables]


LARGE_OBJECT_KINDS = ("BLOB", "BLOBS", "BLOB METADATA", "LARGE OBJECT")
_LO_COLUMN = re.compile(r"^\s+(?:\"(?:[^\"]|\"\")*\"|\S+) (?:oid|(?:\S+\.)?lo)(?:\[\])?(?: |,|$)", re.M)


def large_object_entries(toc: list[TocEntry]) -> list[TocEntry]:
    """The dump's large objects: their metadata, data, comments and grants."""
    return [e for e in toc if e.kind in LARGE_OBJECT_KINDS
            or (e.kind in ("COMMENT", "ACL") and e.name.startswith("LARGE OBJECT "))]


def tables_pointing_to_large_objects(chosen: list[TocEntry], defs: dict) -> list[str]:
    """Chosen tables with a column of type oid or lo (the lo extension's domain): their rows may
    name large objects, which `pg_restore -t` would leave out."""
    out = []
    for e in chosen:
        if e.kind == "TABLE" and _LO_COLUMN.search(defs.get(("TABLE", e.schema, e.name), "")):
            out.append(f"{e.schema}.{e.name}")
    return out


def incoming_foreign_keys(toc: list[TocEntry], chosen: list[TocEntry], defs: dict) -> list[dict[str, str]]:
    """Foreign keys of tables NOT restored that reference a restored table (from the dump): the
    rows on the other side point into what the partial restore replaces."""
    tables = {(e.schema, e.name) for e in chosen if e.kind == "TABLE"}
    out = []
    for e in toc:
        if e.kind != "FK CONSTRAINT" or (e.schema, e.table_token) in tables:
            continue
        body = defs.get(("FK CONSTRAINT", e.schema, e.name), "")
        for schema, name in tables:
            if re.search(rf"REFERENCES {re.escape(_qual(schema, name))}\(", body):
                out.append({"constraint": e.name.split(" ", 1)[-1], "from": f"{e.schema}.{e.table_token}",
                            "to": f"{schema}.{name}"})
    return out


def _qual(schema: str | None, name: str) -> str:
    def q(ident: str) -> str:
        return ident if re.fullmatch(r"[a-z_][a-z0-9_$]*", ident) else '"' + ident.replace('"', '""') + '"'
    return f"{q(schema)}.{q(name)}" if schema else q(name)


def _target_objects(conn) -> dict[str, Any]:
    rels = conn.execute(
        "SELECT n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r','p','v','m','S','f') AND n.nspname NOT IN ('pg_catalog','information_schema') "
        "AND n.nspname NOT LIKE 'pg_toast%%' AND n.nspname NOT LIKE 'pg_temp%%'").fetchall()
    funcs = conn.execute(
        "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname NOT IN ('pg_catalog','information_schema')").fetchone()[0]
    los = conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()[0]
    schemas = {row[0] for row in conn.execute("SELECT nspname FROM pg_namespace").fetchall()}
    foreign_keys = conn.execute(
        "SELECT c.conname, fn.nspname, f.relname, tn.nspname, t.relname FROM pg_constraint c "
        "JOIN pg_class f ON f.oid = c.conrelid JOIN pg_namespace fn ON fn.oid = f.relnamespace "
        "JOIN pg_class t ON t.oid = c.confrelid JOIN pg_namespace tn ON tn.oid = t.relnamespace "
        "WHERE c.contype = 'f' AND c.conrelid <> c.confrelid").fetchall()
    return {"relations": {(s, n) for s, n, _k in rels}, "functions": int(funcs), "large_objects": int(los),
            "schemas": schemas, "foreign_keys": foreign_keys}


def restore_logical(ctx) -> dict[str, Any]:
    settings = source_settings(ctx)
    archive = DumpArchive(ctx, list(ctx.entries()))
    try:
        return _restore_logical(ctx, archive, settings)
    finally:
        archive.close()


def _restore_logical(ctx, archive: DumpArchive, settings: dict) -> dict[str, Any]:
    target_dsn = str(ctx.target)
    if "=" not in target_dsn and "://" not in target_dsn:
        raise UsageError(f"--target for a logical PostgreSQL backup is a DSN such as "
                         f"postgresql://user@host:5432/dbname, got {target_dsn!r}")
    own_env = ctx.options.get("target_password_env")
    pg = PgTarget(target_dsn, own_env)  # never the source's password_env: another server, its own secret
    pg_restore = pg_tool("pg_restore", settings)
    jobs = int(ctx.options.get("jobs") or settings.get("jobs") or 1)
    includes = list(ctx.includes or [])

    try:
        with pg.connect() as conn:  # the target must be reachable before we read anything
            existing = _target_objects(conn)
    except SourceError as exc:
        source_env = settings.get("password_env")
        if own_env or not source_env or "password" not in str(exc):
            raise
        raise SourceError(f"{exc}; the source's password_env {source_env} is not used for a target server: pass "
                          f"--target-password-env {source_env} if the target shares it") from None

    ctx.reporter.update(phase="reading catalog of the dump", force=True)
    toc = read_toc(ctx, archive, pg_restore)
    large_objects = large_object_entries(toc)
    lo_count = sum(1 for e in large_objects if e.kind in ("BLOB", "BLOB METADATA"))
    incoming: list[dict[str, str]] = []
    lo_tables: list[str] = []
    if includes:
        defs = _definitions(ctx, archive, pg_restore, toc)
        missing = {e.name for e in toc if e.kind == "SCHEMA"} - existing["schemas"]
        chosen = select_entries(toc, includes, defs, missing)
        left_out = skipped_dependents(toc, chosen)
        if not any(e.kind in ("TABLE", "VIEW", "MATERIALIZED VIEW", "FOREIGN TABLE") for e in chosen):
            raise UsageError(f"--include {', '.join(includes)}: no table of backup {ctx.backup['id']} matches "
                             "(use schema.table, globs allowed: public.*)")
        incoming = incoming_foreign_keys(toc, chosen, defs)
        lo_tables = tables_pointing_to_large_objects(chosen, defs)
        if lo_tables and large_objects:  # rows that name large objects bring them along (all: one BLOBS entry)
            chosen = chosen + large_objects
    else:
        chosen = toc
        left_out = []
    relations = existing["relations"]
    clashes = [e for e in chosen if e.kind in ("TABLE", "VIEW", "MATERIALIZED VIEW", "SEQUENCE", "FOREIGN TABLE")
               and (e.schema, e.name) in relations]
    restored_los = {e.name for e in chosen if e.kind in ("BLOB", "BLOB METADATA")}
    lo_clashes = sorted(restored_los & _existing_large_objects(pg, restored_los), key=int) if restored_los else []
    # a foreign key in the target onto a table this restore drops and recreates makes the drop fail,
    # unless the restore drops that key first (a whole restore does; a partial one leaves keys out)
    problems = []
    replaced = {(e.schema, e.name) for e in clashes}
    dropped_keys = {(e.schema, e.name) for e in chosen if e.kind == "FK CONSTRAINT"}
    for conname, fschema, ftable, tschema, ttable in existing["foreign_keys"]:
        if (tschema, ttable) in replaced and (fschema, f"{ftable} {conname}") not in dropped_keys:
            problems.append(f"the target's {fschema}.{ftable} has foreign key {conname} referencing "
                            f"{tschema}.{ttable}, which this restore drops and recreates (the drop would fail): "
                            "drop that constraint in the target first (a partial restore does not recreate "
                            "foreign keys), or restore the whole database")
    non_empty = bool(relations or existing["functions"] or existing["large_objects"])
    plan = []
    for e in chosen:
        exists = (e.schema, e.name) in relations
        action = "drop and recreate" if exists else ("load data" if e.kind.endswith("DATA") or e.kind in (
            "SEQUENCE SET", "BLOBS", "BLOB") else "create")
        plan.append({"action": action, "type": e.kind.lower(), "path": e.label(), "bytes": 0})
    baselines = (ctx.manifest.get("source_info") or {}).get("baselines") or {}
    selected_tables = {f"{e.schema}.{e.name}" for e in chosen if e.kind == "TABLE"}
    summary = {"objects": len(chosen), "tables": len(selected_tables),
               "existing_in_target": len(clashes), "target": pg.describe(), "jobs": jobs,
               "rows_expected": sum(v for k, v in baselines.items() if k in selected_tables),
               "left_out": [e.label() for e in left_out]}
    warnings = []
    if incoming:
        summary["incoming_foreign_keys"] = incoming
        warnings.append("foreign keys of tables not restored point into the restored tables (their rows may name "
                        "rows that differ after the restore; the constraints are not recreated): "
                        + ", ".join(f"{fk['from']}.{fk['constraint']} → {fk['to']}" for fk in incoming[:20]))
    if includes and large_objects:
        summary["large_objects"] = lo_count if lo_tables else 0
        if lo_tables:
            one = len(lo_tables) == 1
            warnings.append(f"{', '.join(lo_tables)} {'has' if one else 'have'} an oid/lo column: the dump's "
                            f"{lo_count} large object(s) are restored with {'it' if one else 'them'} (pg_restore "
                            "restores large objects all together)")
        else:
            warnings.append(f"the dump's {lo_count} large object(s) are not restored: no included table has an "
                            "oid or lo column that could name them")
    with_globals = bool(ctx.options.get("with_globals"))
    if with_globals:
        roles = _globals_plan(ctx, pg, settings)
        plan = roles["plan"] + plan
        summary["globals"] = {"create": roles["create"], "keep_existing": roles["keep"]}
    if ctx.dry_run:
        notes = [f"pre-flight problem: {problem}" for problem in problems] + [f"warning: {w}" for w in warnings]
        return {"files": len(selected_tables), "bytes_written": 0, "plan": plan, "details": summary,
                "problems": problems, "notes": notes}
    if problems:
        raise RestoreRefused("restore pre-flight failed:\n  - " + "\n  - ".join(problems))
    if not ctx.yes:
        if includes and (clashes or lo_clashes):
            names = ", ".join([e.label() for e in clashes[:5]] + [f"large object {oid}" for oid in lo_clashes[:5]])
            raise RestoreRefused(f"target {pg.describe()} already has {names}; pass --yes to drop and recreate "
                                 "them, or --dry-run to see the plan")
        if not includes and non_empty:
            raise RestoreRefused(
                f"target database {pg.describe()} is not empty ({len(relations)} relations, "
                f"{existing['functions']} functions, {existing['large_objects']} large objects); restore into an "
                "empty database, or pass --yes to drop and recreate the dumped objects")

    notes = []
    if with_globals:
        _run_globals(ctx, pg, settings, roles["sql"])
        notes.append(f"roles and globals restored first: {len(roles['create'])} created "
                     f"({', '.join(roles['create'][:10]) or 'none'}); existing ones kept as they are "
                     f"({', '.join(roles['keep'][:10]) or 'none'})")
    args = [pg_restore, "--no-password", "--exit-on-error", "--dbname", pg.conninfo()]
    if ctx.options.get("no_owner"):
        args.append("--no-owner")
    if ctx.options.get("no_acl"):
        args.append("--no-acl")
    if ctx.yes and (clashes or lo_clashes or (non_empty and not includes)):
        args += ["--clean", "--if-exists"]
    list_path = None
    if includes:
        with tempfile.NamedTemporaryFile("w", suffix=".list", delete=False) as handle:
            handle.write("\n".join(e.line for e in chosen) + "\n")
            list_path = handle.name
        args += ["--use-list", list_path]
    ctx.reporter.update(phase="restoring", bytes_total=archive.size, bytes_done=0, force=True)
    try:
        if jobs > 1:  # pg_restore -j needs a file it can seek in: spooled (custom) or written (directory)
            archive.run(args + [f"--jobs={jobs}"], pg.env(), pg.secrets(), f"pg_restore into {pg.describe()}",
                        need_file=True)
        else:
            archive.run(args + ["--single-transaction"], pg.env(), pg.secrets(), f"pg_restore into {pg.describe()}")
    except SourceError as exc:
        missing = re.search(r'role "([^"]+)" does not exist', str(exc))
        if missing and not with_globals:
            raise SourceError(f"{exc}\nThe target has no role {missing.group(1)!r}, which owns or is granted "
                              "objects of the dump: restore with --with-globals (the backup's roles and tablespaces "
                              "first), create the roles, or restore with --no-owner --no-acl") from None
        raise
    finally:
        if list_path:
            os.unlink(list_path)

    # the baselines next to the restored figures
    comparison = []
    with pg.connect() as conn:
        from psycopg import sql

        for key in sorted(selected_tables):
            schema, _, name = key.partition(".")
            try:
                count = conn.execute(sql.SQL("SELECT count(*) FROM ONLY {}.{}").format(
                    sql.Identifier(schema), sql.Identifier(name))).fetchone()[0]
            except Exception:
                count = None
            expected = baselines.get(key)
            kind = ((ctx.manifest.get("source_info") or {}).get("baseline_kinds") or {}).get(key, "exact")
            comparison.append({"object": key, "backup": expected, "restored": count, "kind": kind,
                               "match": (expected == count) if kind == "exact" else None})
        written = archive.size
        if includes:  # pg_restore read the whole dump but wrote only these tables (and large objects)
            written = conn.execute(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE (n.nspname || '.' || c.relname) = ANY(%s)",
                [sorted(selected_tables)]).fetchone()[0]
            if restored_los:
                written += _large_object_bytes(conn, restored_los)
    mismatched = [c for c in comparison if c["match"] is False]
    notes.insert(0, f"restored {len(selected_tables)} tables"
                 + (f" and {len(restored_los)} large objects" if restored_los else "") + f" into {pg.describe()}")
    notes += [f"warning: {w}" for w in warnings]
    if left_out:
        notes.append("not restored by a partial restore (they depend on other objects; recreate them if needed): "
                     + ", ".join(e.label() for e in left_out[:20]))
    if mismatched:
        notes.append("row counts differ from the backup for: " + ", ".join(c["object"] for c in mismatched[:10]))
    return {"files": len(selected_tables), "bytes_written": int(written), "baselines": comparison,
            "details": summary, "notes": notes}


def _existing_large_objects(pg: PgTarget, oids: set[str]) -> set[str]:
    with pg.connect() as conn:
        rows = conn.execute("SELECT oid::text FROM pg_largeobject_metadata WHERE oid = ANY(%s::oid[])",
                            [sorted(oids)]).fetchall()
    return {row[0] for row in rows}


def _large_object_bytes(conn, oids: set[str]) -> int:
    """The size of the restored large objects (pg_largeobject needs a superuser; 0 without)."""
    try:
        return int(conn.execute("SELECT coalesce(sum(length(data)), 0)::bigint FROM pg_largeobject "
                                "WHERE loid = ANY(%s::oid[])", [sorted(oids)]).fetchone()[0])
    except Exception:
        return 0




_GLOBAL_LINE = re.compile(r'^(?:CREATE|ALTER) (ROLE|TABLESPACE) ("(?:[^"]|"")*"|[^ ;]+)[ ;]')


def _globals_plan(ctx, pg: PgTarget, settings: dict) -> dict[str, Any]:
    """The backup's globals.sql without the roles and tablespaces the target has already (they
    are kept as they are: restoring them would change an existing role's password or rights)."""
    entry = next((e for e in ctx.entries() if e.type == "file" and e.path == GLOBALS_FILE), None)
    if entry is None:
        raise RestoreRefused(f"--with-globals: backup {ctx.backup['id']} carries no roles or globals (taken before "
                             "they were backed up, or pg_dumpall failed: see its warnings); create the roles "
                             "first, or restore with --no-owner --no-acl")
    with ctx.open_entry(entry) as stream:
        text = stream.read().decode("utf-8")
    with pg.connect() as conn:
        have = {("ROLE", row[0]) for row in conn.execute("SELECT rolname FROM pg_roles").fetchall()}
        have |= {("TABLESPACE", row[0]) for row in conn.execute("SELECT spcname FROM pg_tablespace").fetchall()}
    create: list[str] = []
    keep: list[str] = []
    lines = []
    for line in text.splitlines():
        match = _GLOBAL_LINE.match(line)
        if match:
            name = match.group(2)
            name = name[1:-1].replace('""', '"') if name.startswith('"') else name
            if (match.group(1), name) in have:
                if line.startswith("CREATE ") and name not in keep:
                    keep.append(name)
                continue
            if line.startswith("CREATE "):
                create.append(name)
        lines.append(line)
    plan = [{"action": "create", "type": "role/tablespace", "path": name, "bytes": 0} for name in create]
    plan += [{"action": "skip", "type": "role/tablespace", "path": f"{name} (exists; kept as it is)", "bytes": 0}
             for name in keep]
    return {"sql": "\n".join(lines) + "\n", "create": create, "keep": keep, "plan": plan}


def _run_globals(ctx, pg: PgTarget, settings: dict, sql_text: str) -> None:
    """Apply the globals with psql, stopping at the first error (not in one transaction:
    CREATE TABLESPACE cannot run in one)."""
    import subprocess

    ctx.reporter.update(phase="restoring roles and globals", force=True)
    args = [pg_tool("psql", settings), "--no-password", "--no-psqlrc", "--quiet", "-v", "ON_ERROR_STOP=1",
            "--dbname", pg.conninfo(), "-f", "-"]
    try:
        result = subprocess.run(args, input=sql_text.encode(), capture_output=True, env=pg.env(), timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SourceError(f"cannot run psql for the roles and globals: {exc}") from None
    if result.returncode != 0:
        raise SourceError(f"restoring the roles and globals into {pg.describe()} failed (nothing of the dump was "
                          f"restored yet): {scrub(result.stderr.decode('utf-8', 'replace').strip(), pg.secrets())[-800:]}")

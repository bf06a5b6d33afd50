"""A partial logical restore (`--include schema.table`) keeps what the restored rows point to and
says what points at them: the large objects named by an oid column come along, incoming foreign
keys from tables left out are warned about (the dry run too), a target table that references a
table being replaced is a pre-flight problem, and the bytes written are the restored tables',
not the whole dump's."""

from __future__ import annotations

import pytest

from insite_console import backup, restore
from insite_console.errors import RestoreRefused
from tests.pg_servers import *  # noqa: F401,F403
from tests.test_postgresql import new_db, open_ws, pg_config

pytestmark = [pytest.mark.postgres, needs_pg, pytest.mark.timeout(180)]  # noqa: F405

LIBRARY_SQL = r"""
CREATE TABLE public.docs (id int PRIMARY KEY, body oid, title text);
CREATE TABLE public.notes (id int PRIMARY KEY, doc_id int REFERENCES public.docs(id), text text);
CREATE TABLE public.tags (id int PRIMARY KEY, name text);
INSERT INTO public.docs SELECT g, lo_from_bytea(0, convert_to(repeat('page ' || g, 1000), 'UTF8')), 'doc ' || g
FROM generate_series(1, 3) g;
INSERT INTO public.notes SELECT g, (g % 3) + 1, 'note ' || g FROM generate_series(1, 30) g;
INSERT INTO public.tags SELECT g, repeat('t', 5000) FROM generate_series(1, 2000) g;
"""


@pytest.fixture(scope="module")
def library(pg_cluster, tmp_path_factory):
    name = new_db(pg_cluster, "library")
    with pg_cluster.connect(name) as conn:
        conn.execute(LIBRARY_SQL)
    home = tmp_path_factory.mktemp("library")
    (home / "passphrase").write_text("library passphrase\n")
    ws = open_ws(pg_config(home, pg_cluster.dsn_for(name), passphrase=str(home / "passphrase")))
    done = backup.run(ws, "db")
    yield {"db": name, "ws": ws, "backup": done["id"]}
    ws.close()


def _contents(cluster, dbname: str) -> list:
    return cluster.sql("SELECT d.id, d.title, md5(lo_get(d.body)) FROM public.docs d ORDER BY 1", dbname=dbname)


def test_partial_restore_brings_the_large_objects_its_rows_name(pg_cluster, library):
    """Before, `--include public.docs` restored rows whose body oid named no large object."""
    ws, target = library["ws"], new_db(pg_cluster, "lo_target")
    plan = restore.run(ws, library["backup"], pg_cluster.dsn_for(target), includes=["public.docs"], dry_run=True)
    assert plan["details"]["large_objects"] == 3
    assert any("public.docs has an oid/lo column" in note for note in plan["notes"])
    done = restore.run(ws, library["backup"], pg_cluster.dsn_for(target), includes=["public.docs"])
    assert _contents(pg_cluster, target) == _contents(pg_cluster, library["db"])
    assert "3 large objects" in done["notes"][0]
    # bytes written: the restored table and its large objects, not the whole dump (public.tags is most of it)
    dump_size = ws.catalog.backup(library["backup"])["bytes_read"]
    assert 0 < done["bytes_written"] < dump_size / 2, (done["bytes_written"], dump_size)
    # again: the large objects exist now, refused without --yes, replaced with it
    with pytest.raises(RestoreRefused, match="large object"):
        restore.run(ws, library["backup"], pg_cluster.dsn_for(target), includes=["public.docs"])
    pg_cluster.sql("UPDATE public.docs SET title = 'changed'", dbname=target)
    restore.run(ws, library["backup"], pg_cluster.dsn_for(target), includes=["public.docs"], yes=True)
    assert _contents(pg_cluster, target) == _contents(pg_cluster, library["db"])

    # a table without an oid column leaves them out, and says so
    other = new_db(pg_cluster, "lo_none")
    done = restore.run(ws, library["backup"], pg_cluster.dsn_for(other), includes=["public.tags"])
    assert pg_cluster.sql("SELECT count(*) FROM pg_largeobject_metadata", dbname=other) == [(0,)]
    assert any("3 large object(s) are not restored" in note for note in done["notes"])


def test_incoming_foreign_keys_are_warned_and_a_blocking_one_refused(pg_cluster, library):
    """public.notes references public.docs. Restoring docs alone: the dry run and the result warn
    about notes' foreign key. Into a target whose own notes references docs, replacing docs
    would fail at DROP TABLE: the dry run lists it as a pre-flight problem, the restore refuses
    before anything is written."""
    ws, target = library["ws"], new_db(pg_cluster, "fk_target")
    plan = restore.run(ws, library["backup"], pg_cluster.dsn_for(target), includes=["public.docs"], dry_run=True)
    assert plan["details"]["incoming_foreign_keys"] == [
        {"constraint": "notes_doc_id_fkey", "from": "public.notes", "to": "public.docs"}]
    assert any("public.notes.notes_doc_id_fkey → public.docs" in note for note in plan["notes"])
    done = restore.run(ws, library["backup"], pg_cluster.dsn_for(target), includes=["public.docs"])
    assert any("notes_doc_id_fkey" in note for note in done["notes"])

    pg_cluster.sql("CREATE TABLE public.notes (id int, doc_id int REFERENCES public.docs(id))", dbname=target)
    pg_cluster.sql("INSERT INTO public.notes VALUES (1, 1)", dbname=target)
    plan = restore.run(ws, library["backup"], pg_cluster.dsn_for(target), includes=["public.docs"], dry_run=True,
                       yes=True)
    [problem] = plan["problems"]
    assert "public.notes has foreign key notes_doc_id_fkey referencing public.docs" in problem
    with pytest.raises(RestoreRefused, match="notes_doc_id_fkey"):
        restore.run(ws, library["backup"], pg_cluster.dsn_for(target), includes=["public.docs"], yes=True)
    assert pg_cluster.sql("SELECT count(*) FROM public.notes", dbname=target) == [(1,)]
    # without that key, both tables together: nothing blocks
    pg_cluster.sql("ALTER TABLE public.notes DROP CONSTRAINT notes_doc_id_fkey", dbname=target)
    restore.run(ws, library["backup"], pg_cluster.dsn_for(target), includes=["public.docs", "public.notes"],
                yes=True)
    assert pg_cluster.sql("SELECT count(*) FROM public.notes", dbname=target) == [(30,)]

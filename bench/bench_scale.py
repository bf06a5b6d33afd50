"""Memory at scale: prune, index sync and a backup against a repository of a million blobs.

    python bench/bench_scale.py [--blobs 1000000] [--keep]

Builds a synthetic repository: index objects naming `--blobs` blobs in packs of 1,000 (the
packs themselves are not written: what is measured is the bookkeeping, not the I/O), and two
manifests whose file lists reference 90% of them, so one pack in ten is unreferenced. Then, each
in a fresh process so peak RSS is its own: a cold index sync (a new host's first open), a
prune (mark every referenced blob, classify packs, replace the index), and a small backup
that deduplicates against the million-blob index. Prints seconds and peak RSS of each, and the
RSS of a bare `python -c 'import insite_console.repo.repository'` as the baseline.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

PASSPHRASE = "bench passphrase"
ROOT = Path(__file__).resolve().parent.parent
PACK_BLOBS = 1000
FILE_CHUNKS = 10


def build(root: Path, blobs: int) -> None:
    """The synthetic repository (written by this process, in bounded memory)."""
    sys.path.insert(0, str(ROOT))
    from insite_console.repo.packs import DATA
    from insite_console.repo.repository import MANIFEST_VERSION, Repository
    from insite_console.repo.tree import TreeWriter
    from insite_console.sources.base import Entry
    from insite_console.storage.local import LocalStorage

    repo = Repository.init(LocalStorage("bench", root / "repo"), PASSPHRASE, root / "cache")
    packs = blobs // PACK_BLOBS
    batch = []
    for p in range(packs):
        pack_id = os.urandom(32).hex()
        ids = [repo.blob_id(b"%d/%d" % (p, i)).hex() for i in range(PACK_BLOBS)]
        batch.append({"id": pack_id, "size": PACK_BLOBS * 1000 + 100,
                      "blobs": [[bid, DATA, i * 1000, 1000, 1000] for i, bid in enumerate(ids)]})
        if len(batch) == 50:
            repo.write_index(batch)
            batch = []
    if batch:
        repo.write_index(batch)
    for name in ("a", "b"):  # a: half of what b references
        tree = TreeWriter()
        n = 0
        for p in range(packs):
            if p % 10 == 9:  # one pack in ten referenced by nothing
                continue
            if name == "a" and p % 2:
                continue
            for f in range(PACK_BLOBS // FILE_CHUNKS):
                chunks = [(repo.blob_id(b"%d/%d" % (p, f * FILE_CHUNKS + c)).hex(), 1000) for c in range(FILE_CHUNKS)]
                tree.add(Entry(path=f"d{p}/f{f}", type="file", size=1000 * FILE_CHUNKS, chunks=chunks))
                n += 1
        chunks = tree.save(repo)
        repo.flush()
        backup_id = name * 16
        repo.save_manifest({"version": MANIFEST_VERSION, "id": backup_id, "policy": "tree", "source": "tree",
                            "source_type": "files", "type": "full", "parent_id": None,
                            "started_at": "2026-12-01T00:00:00Z", "finished_at": "2026-12-01T00:00:01Z",
                            "hostname": "bench", "paths": [], "compression": "zstd", "tree": chunks,
                            "totals": {"files": n}, "source_info": {}, "warnings": []})
    repo.close()


PHASES = {
    "cold index sync": """
        repo = Repository.open(storage, PASSPHRASE, root / "cache-cold")
        print(len(repo.index.packs()), "packs")
    """,
    "prune (mark, classify, replace index)": """
        from insite_console.repo import prune
        repo = Repository.open(storage, PASSPHRASE, root / "cache")
        with repo.lock("prune", exclusive=True) as lock:
            print(prune.collect(repo, lock))
    """,
    "backup of 200 files beside a million-blob index": """
        from insite_console.repo.tree import TreeWriter
        from insite_console.sources.base import Entry
        repo = Repository.open(storage, PASSPHRASE, root / "cache")
        with repo.lock("backup") as lock:
            tree = TreeWriter()
            for i in range(200):
                chunks = repo.save_bytes(os.urandom(4096) + bytes(60000))
                tree.add(Entry(path=f"new/f{i}", type="file", size=64096, chunks=chunks))
            repo.flush()
            print(len(tree.save(repo)), "tree chunks")
    """,
}


def run_phase(root: Path, code: str) -> tuple[float, float, str]:
    script = "import os, sys\nsys.path.insert(0, %r)\n" % str(ROOT) + textwrap.dedent("""
        from pathlib import Path
        from insite_console.repo.repository import Repository
        from insite_console.storage.local import LocalStorage
        PASSPHRASE = %r
        root = Path(%r)
        storage = LocalStorage("bench", root / "repo")
    """ % (PASSPHRASE, str(root))) + textwrap.dedent(code) + textwrap.dedent("""
        # VmHWM, not ru_maxrss: ru_maxrss survives exec and would report the parent's size
        print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")))
    """)
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    lines = out.stdout.strip().splitlines()
    return elapsed, int(lines[-1]) / 1024, lines[-2] if len(lines) > 1 else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blobs", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="insite-bench-scale-"))
    try:
        started = time.perf_counter()
        build(root, args.blobs)
        print(f"built a repository of {args.blobs:,} blobs in {time.perf_counter() - started:.1f}s at {root}")
        baseline = run_phase(root, "print('baseline')")
        print(f"{'baseline: python + insite_console imported':<52} {baseline[0]:6.1f}s  peak RSS {baseline[1]:6.0f} MiB")
        for name, code in PHASES.items():
            elapsed, rss, last = run_phase(root, code)
            print(f"{name:<52} {elapsed:6.1f}s  peak RSS {rss:6.0f} MiB  ({last[:80]})")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

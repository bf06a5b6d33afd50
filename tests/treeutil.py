"""Build test trees and compare restored trees with the originals, metadata included."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path


def build_tree(root: Path, files: int = 200, seed: int = 1) -> None:
    """A mixed tree: nested dirs, small text, binaries, an empty dir, symlinks, odd names, modes."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    dirs = [root]
    for i in range(max(1, files // 50)):
        d = rng.choice(dirs) / f"dir{i:03d}"
        d.mkdir(exist_ok=True)
        dirs.append(d)
    for i in range(files):
        d = rng.choice(dirs)
        kind = i % 10
        path = d / f"file{i:05d}.{'bin' if kind == 0 else 'txt'}"
        if kind == 0:
            path.write_bytes(rng.randbytes(rng.randint(1, 50_000)))
        else:
            path.write_text(f"line {i}\n" * rng.randint(0, 40))
        if kind == 3:
            os.chmod(path, 0o600)
        if kind == 4:
            os.chmod(path, 0o755)
        os.utime(path, ns=(1_700_000_000_000_000_000 + i * 1_000_003, 1_700_000_000_000_000_000 + i * 1_000_003))
    (root / "empty dir").mkdir(exist_ok=True)
    (root / "name with spaces.txt").write_text("spaces\n")
    (root / "new\nline.txt").write_text("newline in name\n")
    (root / os.fsdecode(b"latin1-\xe9t\xe9.txt")).write_text("not utf-8\n")
    (root / "big.bin").write_bytes(rng.randbytes(3 * 1024 * 1024))
    (root / "link-to-file").symlink_to("name with spaces.txt")
    (root / "dangling-link").symlink_to("/nonexistent/target")
    (root / "link-outside").symlink_to("/etc/passwd")


def snapshot_tree(root: Path) -> dict[bytes, tuple]:
    """path -> (type, mode, owner, mtime_ns, xattrs, content, link target or device, hard-link
    group) for everything under root. A hard-link group is named by its first path in walk order."""
    result = {}
    groups: dict[tuple[int, int], bytes] = {}
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = os.fsencode(path.relative_to(root))
            st = os.lstat(path)
            xattrs = {n: os.getxattr(path, n, follow_symlinks=False)
                      for n in os.listxattr(path, follow_symlinks=False)}
            common = (stat.S_IFMT(st.st_mode), (st.st_uid, st.st_gid), xattrs)
            if stat.S_ISLNK(st.st_mode):
                result[rel] = ("link", *common, os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                result[rel] = ("dir", *common, stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            elif stat.S_ISREG(st.st_mode):
                group = groups.setdefault((st.st_dev, st.st_ino), rel) if st.st_nlink > 1 else None
                result[rel] = ("file", *common, stat.S_IMODE(st.st_mode), st.st_mtime_ns, path.read_bytes(), group)
            else:
                result[rel] = ("node", *common, stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_rdev)
    return result


def assert_same_tree(original: Path, restored: Path) -> None:
    a, b = snapshot_tree(original), snapshot_tree(restored)
    missing = sorted(set(a) - set(b))[:5]
    extra = sorted(set(b) - set(a))[:5]
    assert not missing and not extra, f"missing {missing}, extra {extra}"
    different = [k for k in a if a[k] != b[k]]
    assert not different, f"{len(different)} entries differ, e.g. {different[:3]}: {a[different[0]][:3]} vs {b[different[0]][:3]}"

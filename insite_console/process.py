"""Who a process is, beyond its pid: the machine, the boot, the pid namespace and the start
time. A pid alone is not an identity (after a reboot or enough forks another process holds
it), and a host name is not a machine (cloned VMs, containers with a fixed host name). Used by
the catalog's runs and claims and by the repository's locks."""

from __future__ import annotations

import os


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read().strip() or None
    except OSError:
        return None


def boot_id() -> str | None:
    """This boot of the kernel (Linux); None where there is no such file."""
    return _read("/proc/sys/kernel/random/boot_id")


def machine_id() -> str | None:
    """This machine (/etc/machine-id, or dbus's copy), else this boot (a minimal container has
    no machine id), else None."""
    return _read("/etc/machine-id") or _read("/var/lib/dbus/machine-id") or boot_id()


def pid_namespace() -> str | None:
    """This process's pid namespace ('pid:[N]'): containers on one machine each have their own,
    and a pid means nothing outside its namespace."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rpartition(b")")[2].split()
        return fields[19].decode()
    except (OSError, IndexError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (in this pid namespace); one we may not signal counts."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True

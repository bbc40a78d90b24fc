"""Part files of a cache file, one per writer, so that two writers never share bytes.

Several processes may fetch the same file into one cache at once: replicas on a shared
ReadWriteMany volume, two ClipServices on one claim, a prefetch Job replaced midway. Each writes
`<dest>.part.<writer>` of its own, and the fetch moves it to `<dest>` with one atomic rename once
it is verified, so a file at its final name is always one writer's complete bytes. Nothing
relies on file locks, which some shared volumes do not honour.

A writer resumes its own part, and adopts (renames to its own name) the part of a writer that is
gone: one on this machine whose process has exited, or one nobody has written for `stale_s`,
measured against the volume's own clock (the mtime of a file just touched there), so clocks
that disagree between nodes do not matter. A part still being written is left alone.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
from pathlib import Path

_TOKEN = secrets.token_hex(4)  # tells this process from an earlier one that had its pid


def _machine() -> str:
    """This host and process namespace: where a pid names one process."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pid_ns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        boot = pid_ns = ""
    seed = f"{socket.gethostname()}/{boot}/{pid_ns}"
    return hashlib.sha256(seed.encode()).hexdigest()[:12]


def writer() -> str:
    """This process's name in its part files: `<machine>.<pid>.<token>`."""
    return f"{_machine()}.{os.getpid()}.{_TOKEN}"


def part_of(dest: Path, who: str | None = None) -> Path:
    """The part file `who` (default: this process) writes `dest` into."""
    return dest.with_name(f"{dest.name}.part.{who or writer()}")


def validator_of(part: Path) -> Path:
    """Where a part's ETag or Last-Modified is kept, for an If-Range resume."""
    return part.with_name(part.name + ".etag")


def claim(dest: Path, stale_s: float) -> Path:
    """This process's part of `dest`: its own from an earlier try, else the largest part of a
    writer that is gone (renamed to ours), else a new empty one."""
    mine = part_of(dest)
    with open(mine, "ab"):
        pass
    if mine.stat().st_size:
        return mine
    os.utime(mine)
    now = mine.stat().st_mtime  # the volume's clock (NFS sets it to the server's time)
    for other in sorted(_others(dest), key=_size, reverse=True):
        if not _gone(dest, other, now, stale_s):
            continue
        try:
            os.replace(other, mine)  # atomic: of two adopters, one finds the name gone
        except FileNotFoundError:
            continue
        os.utime(mine)  # written from now on: no third writer takes it for abandoned
        try:
            os.replace(validator_of(other), validator_of(mine))
        except FileNotFoundError:
            validator_of(mine).unlink(missing_ok=True)
        return mine
    return mine


def sweep(dest: Path, stale_s: float) -> None:
    """Remove the parts of `dest` whose writers are gone (after `dest` is published)."""
    now = _size_and_mtime(dest)[1]
    for other in _others(dest):
        if _gone(dest, other, now, stale_s):
            other.unlink(missing_ok=True)
            validator_of(other).unlink(missing_ok=True)


def discard(part: Path) -> None:
    """Remove a part and its validator."""
    part.unlink(missing_ok=True)
    validator_of(part).unlink(missing_ok=True)


def _others(dest: Path) -> list[Path]:
    """Other writers' parts of `dest` (and an unnamed `.part` of an older clipserve)."""
    mine = part_of(dest)
    return [
        p
        for p in dest.parent.glob(f"{dest.name}.part*")
        if p != mine and not p.name.endswith(".etag")
    ]


def _gone(dest: Path, part: Path, now: float, stale_s: float) -> bool:
    """Whether the part's writer has stopped: its process exited (on this machine), or the
    part has not changed for `stale_s`."""
    machine, _, rest = part.name.removeprefix(f"{dest.name}.part.").partition(".")
    pid = rest.partition(".")[0]
    if machine == _machine() and pid.isdigit() and not _alive(int(pid)):
        return True
    mtime = _size_and_mtime(part)[1]
    return mtime > 0 and now - mtime > stale_s


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # an earlier process with this pid (its token differs from ours)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _size(path: Path) -> int:
    return _size_and_mtime(path)[0]


def _size_and_mtime(path: Path) -> tuple[int, float]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return 0, 0.0
    return st.st_size, st.st_mtime

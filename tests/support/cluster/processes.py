"""Start control-plane processes with logs in files, and stop them by their own PIDs."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Proc:
    """A started component: name, PID, binary path (to re-identify the PID) and log file."""

    name: str
    pid: int
    binary: str
    log: str


def _die_with_parent() -> None:
    # Runs in the child before exec: if the test process is killed outright, the kernel kills
    # the component instead of leaving it orphaned. SIGKILL, because a SIGTERM arriving at every
    # component at once leaves kube-apiserver's graceful shutdown waiting on a dead etcd.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def spawn(
    name: str,
    argv: list[str],
    log_dir: Path,
    *,
    tie_to_parent: bool,
    pass_fds: tuple[int, ...] = (),
    env: dict[str, str] | None = None,
) -> Proc:
    """Start argv in its own session, stdout+stderr to <log_dir>/<name>.log."""
    log = log_dir / f"{name}.log"
    preexec: Callable[[], None] | None = _die_with_parent if tie_to_parent else None
    with log.open("ab") as out:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec,
            pass_fds=pass_fds,
            env=env,
        )
    return Proc(name=name, pid=popen.pid, binary=argv[0], log=str(log))


def is_running(proc: Proc) -> bool:
    """True while proc.pid is alive and still runs proc.binary (guards against PID reuse)."""
    try:
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{proc.pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    # State field after the ")" of the command name; Z = exited but not yet reaped.
    if stat.rsplit(")", 1)[1].split()[0] == "Z":
        _reap(proc.pid)
        return False
    argv0 = cmdline.split(b"\0", 1)[0].decode(errors="replace")
    if not argv0:
        # cmdline reads empty for a moment while the kernel sets up a freshly exec'd process.
        try:
            argv0 = os.readlink(f"/proc/{proc.pid}/exe")
        except OSError:
            return True
    return os.path.realpath(argv0) == os.path.realpath(proc.binary)


def _reap(pid: int) -> None:
    # Not our child when started by an earlier `up`: init reaps it then.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop(procs: list[Proc], grace_s: float = 10.0) -> None:
    """SIGTERM each process in order, wait up to grace_s, then SIGKILL whatever is left."""
    for proc in procs:
        if not is_running(proc):
            continue
        os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while is_running(proc) and time.monotonic() < deadline:
            time.sleep(0.1)
        if is_running(proc):
            os.kill(proc.pid, signal.SIGKILL)
            while is_running(proc):
                time.sleep(0.05)
        _reap(proc.pid)


def log_tail(proc: Proc, lines: int = 30) -> str:
    """The last lines of a component's log, for error messages."""
    try:
        text = Path(proc.log).read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])

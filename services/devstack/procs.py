"""Process, pid-file and port helpers shared by the broker and the database server."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import structlog

from services.devstack.errors import StackError

log = structlog.get_logger()

_DETACH_SCRIPT = Path(__file__).with_name("_detach.py")


def read_pid(pid_file: Path) -> int | None:
    """First line of a pid file as an int (postmaster.pid has the pid on line 1)."""
    try:
        first = pid_file.read_text(encoding="ascii", errors="replace").split("\n", 1)[0].strip()
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    return int(first) if first.isdigit() else None


def process_cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def pid_alive(pid: int, cmdline_contains: str | None = None) -> bool:
    """True when ``pid`` is a live (not zombie) process, optionally running a given program."""
    if pid <= 0:
        return False
    with contextlib.suppress(ChildProcessError, OSError):
        reaped, _ = os.waitpid(pid, os.WNOHANG)  # reap it if it happens to be our child
        if reaped == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        state = stat.rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):
            return False
    except (OSError, IndexError):
        pass
    if cmdline_contains is not None:
        return cmdline_contains in process_cmdline(pid)
    return True


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    interval: float = 0.25,
    abort: Callable[[], bool] | None = None,
) -> bool:
    """Poll ``predicate`` until it is true (True) or ``timeout`` passes / ``abort()`` (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if abort is not None and abort():
            return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def spawn_detached(
    cmd: Sequence[str],
    *,
    pid_file: Path,
    log_file: Path,
    cwd: Path,
    env: dict[str, str] | None = None,
) -> int:
    """Start ``cmd`` fully detached (own session, re-parented to init) and return its pid.

    stdout/stderr are appended to ``log_file``; the pid is written to ``pid_file``.
    """
    pid_file.unlink(missing_ok=True)
    launcher = subprocess.run(
        [sys.executable, str(_DETACH_SCRIPT), str(pid_file), str(log_file), "--", *cmd],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        start_new_session=True,
        timeout=30,
        check=False,
    )
    pid = read_pid(pid_file)
    if launcher.returncode != 0 or pid is None:
        detail = (launcher.stderr or launcher.stdout).strip().splitlines()
        raise StackError(
            f"Could not launch {cmd[0]} ({detail[-1] if detail else 'no output'}); read {log_file}."
        )
    return pid


def terminate(pid: int, timeout: float, cmdline_contains: str | None = None) -> bool:
    """SIGTERM ``pid``, wait up to ``timeout`` s, then SIGKILL. True if it had to be killed."""
    if not pid_alive(pid, cmdline_contains):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if wait_for(lambda: not pid_alive(pid), timeout, interval=0.2):
        return False
    log.warning("devstack.process_kill", pid=pid, waited_s=timeout)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not wait_for(lambda: not pid_alive(pid), 10.0, interval=0.1):
        raise StackError(f"Process {pid} survived SIGKILL; check it with `ps -p {pid}`.")
    return True


def run_logged(
    cmd: Sequence[str],
    *,
    what: str,
    log_file: Path,
    timeout: float,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a short command, append its output to ``log_file``, raise StackError on failure."""
    try:
        result = subprocess.run(
            list(cmd),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,
            check=False,
        )
    except FileNotFoundError as exc:
        raise StackError(f"{what} failed: {cmd[0]} not found.") from exc
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"{what} timed out after {timeout:.0f} s; read {log_file}.") from exc
    output = (result.stdout or "") + (result.stderr or "")
    if output:
        with contextlib.suppress(OSError), log_file.open("a", encoding="utf-8") as fh:
            fh.write(f"--- devstack: {what}: {' '.join(cmd)}\n{output}")
            if not output.endswith("\n"):
                fh.write("\n")
    if result.returncode != 0:
        last = output.strip().splitlines()[-1] if output.strip() else "no output"
        raise StackError(f"{what} failed with exit code {result.returncode} ({last}); read {log_file}.")
    return result


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock so that concurrent `ensure_up`/`down` calls serialise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

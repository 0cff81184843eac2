"""Launcher run as a separate short-lived interpreter: ``python _detach.py PIDFILE LOGFILE -- CMD...``.

It forks CMD (stdin from /dev/null, stdout+stderr appended to LOGFILE), writes CMD's pid to
PIDFILE and exits at once. CMD is therefore re-parented away from whoever asked for it, lives in
its own session and never becomes a zombie child of a long-lived Python process (pytest, ...).
Only the standard library: this file is executed by path, not imported.
"""

from __future__ import annotations

import os
import resource
import sys

# A Kafka broker keeps files open per partition (segments, indexes): tests create many
# short-lived topics, so the broker gets as many open files as this machine allows.
WANTED_OPEN_FILES = 1 << 20


def _raise_open_files_limit() -> None:
    """Raise this process's (and so CMD's) open-files limit: the hard limit too when we may
    (root), else the soft limit up to the hard one. Best effort."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        with open("/proc/sys/fs/nr_open", encoding="ascii") as fh:
            ceiling = min(WANTED_OPEN_FILES, int(fh.read().strip()))
    except (OSError, ValueError):
        ceiling = WANTED_OPEN_FILES
    for wanted in ((ceiling, ceiling), (hard, hard)):
        if wanted[0] <= soft and wanted[1] <= hard:
            return
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, wanted)
            return
        except (ValueError, OSError):
            continue


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        sys.stderr.write("usage: _detach.py PIDFILE LOGFILE -- CMD [ARG...]\n")
        return 2
    pid_file, log_file, cmd = argv[0], argv[1], argv[3:]
    if os.getpid() != os.getsid(0):
        os.setsid()
    _raise_open_files_limit()
    log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    child = os.fork()
    if child == 0:
        os.dup2(null_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        try:
            os.execvp(cmd[0], cmd)
        except OSError as exc:
            os.write(2, f"devstack: cannot execute {cmd[0]}: {exc}\n".encode())
        os._exit(127)
    tmp = f"{pid_file}.tmp"
    with open(tmp, "w", encoding="ascii") as fh:
        fh.write(f"{child}\n")
    os.replace(tmp, pid_file)
    return 0


if __name__ == "__main__":
    os._exit(main(sys.argv[1:]))

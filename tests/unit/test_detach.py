"""The local stack's launcher gives the broker as many open files as the machine allows:
a broker with thousands of test topics otherwise dies with "Too many open files"."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

from services.devstack import _detach
from tests.support.pipeline import wait_until


def test_the_launched_command_gets_a_raised_open_files_limit(tmp_path: Path) -> None:
    pid_file, log_file = tmp_path / "cmd.pid", tmp_path / "cmd.log"
    subprocess.run(
        [sys.executable, _detach.__file__, str(pid_file), str(log_file), "--", "sh", "-c", "ulimit -n"],
        check=True,
        timeout=30,
    )
    wait_until(lambda: log_file.read_text().strip() != "", timeout=10, message="the command's output")
    granted = int(log_file.read_text().strip())
    # At least the hard limit (the soft one is often lower); more where we may raise it.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert granted >= hard

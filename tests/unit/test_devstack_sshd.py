"""The local sshd is started only when no SFTP server of the user's is named (issue #11)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.devstack import stack
from services.devstack.config import Paths


def test_an_external_sftp_host_starts_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OPTOUT_SFTP_HOST", "sftp.mailhouse.example")
    started: list[Path] = []
    monkeypatch.setattr(stack.sshd_server, "ensure_running", lambda paths, install: started.append(paths))
    assert stack._sftp(Paths(root=tmp_path, state_dir=tmp_path / ".run", kafka_libs=tmp_path), True) is None
    assert started == []
    assert not (tmp_path / ".run").exists()

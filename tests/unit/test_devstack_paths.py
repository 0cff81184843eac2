"""Where the local stack keeps its state: inside the checkout when the PostgreSQL OS user can
reach it, otherwise a per-checkout folder that server can use by itself (a clone under /root
or in a ``mktemp -d`` folder, both 0700)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.devstack import config as c
from services.devstack.errors import StackError

PG_UID, PG_GID = 4242, 4242  # an account that owns nothing here, like a fresh postgres user


@pytest.fixture
def private_repo(tmp_path: Path) -> Path:
    """A checkout inside a folder only its owner may enter (what ``mktemp -d`` makes)."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    os.chmod(private, 0o700)
    repo = private / "optout"
    repo.mkdir()
    os.chmod(tmp_path, 0o755)
    return repo


@pytest.fixture
def open_repo() -> Iterator[Path]:
    """A checkout every user may traverse to (pytest's own tmp_path is 0700 under root)."""
    with tempfile.TemporaryDirectory(prefix="optout-open-", dir="/tmp") as folder:
        repo = Path(folder) / "optout"
        repo.mkdir()
        for path in (Path(folder), repo):
            os.chmod(path, 0o755)
        yield repo


def test_reachable_needs_the_execute_bit_that_applies_to_the_account(open_repo: Path) -> None:
    folder = open_repo / "f"
    folder.mkdir()
    os.chmod(folder, 0o750)
    stat = folder.stat()
    assert not c.reachable_by(folder / "x", PG_UID, {PG_GID})  # "other": no x
    assert c.reachable_by(folder / "x", PG_UID, {stat.st_gid})  # the folder's group: g+x
    assert c.reachable_by(folder / "x", stat.st_uid, set())  # its owner: u+x
    os.chmod(folder, 0o701)
    assert c.reachable_by(folder / "x", PG_UID, {PG_GID})  # o+x is enough to traverse


def test_a_checkout_the_server_can_reach_keeps_its_state_inside(open_repo: Path) -> None:
    if not c.reachable_by(open_repo, PG_UID, {PG_GID}):
        pytest.skip("the temporary folder itself is out of reach of other users here")
    assert c.default_state_dir(open_repo, euid=0, pg_account=(PG_UID, {PG_GID})) == open_repo / ".run"


def test_a_private_checkout_gets_a_deterministic_folder_the_server_can_use(
    private_repo: Path, tmp_path: Path
) -> None:
    fallback = tmp_path / "var-tmp"
    chosen = c.default_state_dir(
        private_repo, euid=0, pg_account=(PG_UID, {PG_GID}), fallback_parent=fallback
    )
    assert chosen.parent == fallback and chosen.name.startswith("optout-")
    # The same checkout finds the same folder again (`make down`, `env`); another one does not.
    again = c.default_state_dir(private_repo, euid=0, pg_account=(PG_UID, {PG_GID}), fallback_parent=fallback)
    other = private_repo.parent / "other"
    other.mkdir()
    elsewhere = c.default_state_dir(other, euid=0, pg_account=(PG_UID, {PG_GID}), fallback_parent=fallback)
    assert again == chosen and elsewhere != chosen
    # No postgres account yet (it is created on first start): only o+x counts.
    assert c.default_state_dir(private_repo, euid=0, pg_account=None, fallback_parent=fallback) == chosen


def test_not_root_means_the_server_runs_as_us_and_the_state_stays_inside(private_repo: Path) -> None:
    chosen = c.default_state_dir(private_repo, euid=1000, pg_account=(PG_UID, {PG_GID}))
    assert chosen == private_repo / ".run"


def test_paths_from_env_moves_the_state_and_says_why(
    private_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(c.ENV_STACK_DIR, raising=False)
    monkeypatch.setattr(c, "repo_root", lambda: private_repo)
    monkeypatch.setattr(c, "FALLBACK_PARENT", tmp_path / "var-tmp")
    monkeypatch.setattr(c.os, "geteuid", lambda: 0)
    monkeypatch.setattr(c, "pg_os_account", lambda: (PG_UID, {PG_GID}))
    paths = c.Paths.from_env()
    assert paths.state_dir.parent == tmp_path / "var-tmp"
    assert paths.state_dir_note and str(private_repo) in paths.state_dir_note
    assert c.ENV_STACK_DIR in paths.state_dir_note
    # An explicit OPTOUT_STACK_DIR always wins, and needs no note.
    monkeypatch.setenv(c.ENV_STACK_DIR, str(tmp_path / "mine"))
    explicit = c.Paths.from_env()
    assert explicit.state_dir == (tmp_path / "mine").resolve() and explicit.state_dir_note == ""


def test_the_moved_state_dir_is_created_open_to_the_server_and_must_be_ours(tmp_path: Path) -> None:
    target = tmp_path / "var-tmp" / "optout-abc"
    paths = c.Paths(root=tmp_path, state_dir=target, kafka_libs=tmp_path / "libs", state_dir_note="moved")
    old_umask = os.umask(0o077)  # a strict umask must not make it unreachable
    try:
        paths.prepare_state_dir()
    finally:
        os.umask(old_umask)
    assert target.is_dir() and target.stat().st_mode & 0o011 == 0o011
    paths.prepare_state_dir()  # again: fine
    # Someone else's folder or a symlink planted at that name is refused, not used.
    target.rmdir()
    target.symlink_to(tmp_path)
    with pytest.raises(StackError, match=c.ENV_STACK_DIR):
        paths.prepare_state_dir()

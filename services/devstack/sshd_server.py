"""The private local OpenSSH server that plays the mail house's SFTP endpoint.

Debian's ``openssh-server`` (installed with apt-get when missing, like PostgreSQL), run
from its own ``sshd_config`` under ``<state>/sshd`` on 127.0.0.1:12222, never the system's
sshd or port 22. Everything is generated on first start and kept:

    sshd/
      sshd_config          written on every start
      host_ed25519_key     the server's host key (ssh-keygen)
      client_ed25519_key   the connector's login key (no passphrase); .pub is authorized
      authorized_keys      that public key only
      known_hosts          ``[127.0.0.1]:12222 ssh-ed25519 ...``: what the connector pins
      sshd.pid
      root/                the SFTP root (ChrootDirectory when we are root)
        inbox/             where files are uploaded; the mail-house stand-in reads it

Login: key only (``PasswordAuthentication no``, ``KbdInteractiveAuthentication no``), one
account, ``ForceCommand internal-sftp`` (no shell, no forwarding). As root the account is
the system user ``optout-mailhouse`` (created with useradd when missing), chrooted to
``root/`` so it sees ``/inbox``; as an unprivileged user sshd can only log that same user
in, without a chroot, and the remote folder is the inbox's absolute path.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
from dataclasses import dataclass
from pathlib import Path

import structlog

from services.devstack import config as c
from services.devstack.config import Paths
from services.devstack.errors import StackError
from services.devstack.procs import (
    pid_alive,
    port_open,
    read_pid,
    run_logged,
    spawn_detached,
    terminate,
    wait_for,
)

log = structlog.get_logger()

SSHD_HOST = "127.0.0.1"
SSHD_PORT = 12222  # OPTOUT_DEVSTACK_SSHD_PORT moves it (a second stack beside the first)
ENV_SSHD_PORT = "OPTOUT_DEVSTACK_SSHD_PORT"
SSHD_ACCOUNT = "optout-mailhouse"  # the login when we are root
SSHD_READY_TIMEOUT_S = 20.0
SSHD_PROGRAM = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")  # Debian's sshd refuses to start as root without it

# Set OPTOUT_SFTP_HOST to a mail house's own server and nothing is started here.
ENV_SFTP_HOST = "OPTOUT_SFTP_HOST"
ENV_SFTP_PORT = "OPTOUT_SFTP_PORT"
ENV_SFTP_USERNAME = "OPTOUT_SFTP_USERNAME"
ENV_SFTP_REMOTE_DIR = "OPTOUT_SFTP_REMOTE_DIR"
ENV_SFTP_KNOWN_HOSTS = "OPTOUT_SFTP_KNOWN_HOSTS"
ENV_SFTP_PRIVATE_KEY_FILE = "OPTOUT_SFTP_PRIVATE_KEY_FILE"
ENV_SFTP_LOCAL_DIR = "OPTOUT_STANDIN_SFTP_INBOX"  # the inbox on local disk, for the stand-in


@dataclass(frozen=True)
class SftpInfo:
    host: str
    port: int
    username: str
    remote_dir: str
    known_hosts: Path
    private_key: Path
    local_dir: Path

    def env(self) -> dict[str, str]:
        return {
            ENV_SFTP_HOST: self.host,
            ENV_SFTP_PORT: str(self.port),
            ENV_SFTP_USERNAME: self.username,
            ENV_SFTP_REMOTE_DIR: self.remote_dir,
            ENV_SFTP_KNOWN_HOSTS: str(self.known_hosts),
            ENV_SFTP_PRIVATE_KEY_FILE: str(self.private_key),
            ENV_SFTP_LOCAL_DIR: str(self.local_dir),
        }


# --- layout -----------------------------------------------------------------------------------
def sshd_dir(paths: Paths) -> Path:
    return paths.state_dir / "sshd"


def _file(paths: Paths, name: str) -> Path:
    return sshd_dir(paths) / name


def log_file(paths: Paths) -> Path:
    return paths.logs_dir / "sshd.log"


def pid_file(paths: Paths) -> Path:
    return _file(paths, "sshd.pid")


def config_file(paths: Paths) -> Path:
    return _file(paths, "sshd_config")


def sftp_root(paths: Paths) -> Path:
    return _file(paths, "root")


def inbox(paths: Paths) -> Path:
    return sftp_root(paths) / "inbox"


def _is_root() -> bool:
    return os.geteuid() == 0


def running_pid(paths: Paths) -> int | None:
    pid = read_pid(pid_file(paths))
    if pid is not None and pid_alive(pid, str(config_file(paths))):
        return pid
    return None


# --- install and accounts ---------------------------------------------------------------------
def ensure_sshd_program(paths: Paths, install: bool) -> str:
    if os.access(SSHD_PROGRAM, os.X_OK):
        return SSHD_PROGRAM
    if not install:
        raise StackError("OpenSSH's sshd was not found: install it with `apt-get install -y openssh-server`.")
    if not _is_root() or shutil.which("apt-get") is None:
        raise StackError(
            "OpenSSH's sshd was not found and cannot be installed from here: run "
            "`sudo apt-get install -y openssh-server` (or set OPTOUT_SFTP_HOST to your SFTP server)."
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log.info("devstack.sshd_install", command="apt-get install -y openssh-server")
    for cmd, what in (
        (["apt-get", "update"], "apt-get update"),
        (
            ["apt-get", "install", "-y", "--no-install-recommends", "openssh-server"],
            "Installing openssh-server",
        ),
    ):
        run_logged(cmd, what=what, log_file=log_file(paths), timeout=900, env=env)
    if not os.access(SSHD_PROGRAM, os.X_OK):
        raise StackError(
            f"apt-get installed openssh-server but {SSHD_PROGRAM} is missing; read {log_file(paths)}."
        )
    return SSHD_PROGRAM


def _login_account(paths: Paths) -> pwd.struct_passwd:
    """``optout-mailhouse`` when we are root (created when missing), else ourselves."""
    if not _is_root():
        return pwd.getpwuid(os.geteuid())
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(SSHD_ACCOUNT)
    log.info("devstack.sshd_account_create", user=SSHD_ACCOUNT)
    run_logged(
        # '*' (not '!'): an unusable password that sshd does not treat as a locked account.
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/",
            "--shell",
            "/usr/sbin/nologin",
            "--password",
            "*",
            SSHD_ACCOUNT,
        ],
        what=f"Creating the {SSHD_ACCOUNT} OS user",
        log_file=log_file(paths),
        timeout=60,
    )
    return pwd.getpwnam(SSHD_ACCOUNT)


def _chroot_possible(folder: Path) -> bool:
    """sshd's rule for ChrootDirectory: every component root-owned, not group/other-writable."""
    for part in (folder, *folder.parents):
        st = part.stat()
        if st.st_uid != 0 or st.st_mode & 0o022:
            return False
    return True


def _keygen(key: Path, paths: Paths) -> None:
    if key.is_file():
        return
    run_logged(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"optout devstack {key.name}", "-f", str(key)],
        what=f"ssh-keygen {key.name}",
        log_file=log_file(paths),
        timeout=60,
    )


# --- start / stop -----------------------------------------------------------------------------
def _prepare(paths: Paths) -> tuple[pwd.struct_passwd, bool]:
    folder = sshd_dir(paths)
    for path in (paths.logs_dir, folder, sftp_root(paths)):
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o755)
    account = _login_account(paths)
    chroot = _is_root() and _chroot_possible(sftp_root(paths))
    inbox(paths).mkdir(exist_ok=True)
    if _is_root():
        os.chown(inbox(paths), account.pw_uid, account.pw_gid)
    host_key, client_key = _file(paths, "host_ed25519_key"), _file(paths, "client_ed25519_key")
    _keygen(host_key, paths)
    _keygen(client_key, paths)
    authorized = _file(paths, "authorized_keys")
    authorized.write_text(Path(f"{client_key}.pub").read_text())
    os.chmod(authorized, 0o644)
    host_pub = Path(f"{host_key}.pub").read_text().split()
    _file(paths, "known_hosts").write_text(f"[{SSHD_HOST}]:{sshd_port()} {host_pub[0]} {host_pub[1]}\n")
    lines = [
        "# Written by services/devstack on every start; edits here are overwritten.",
        f"ListenAddress {SSHD_HOST}:{sshd_port()}",
        f"HostKey {host_key}",
        "PidFile none",  # the launcher records the pid
        f"AuthorizedKeysFile {authorized}",
        "AuthenticationMethods publickey",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin no" if account.pw_uid != 0 else "PermitRootLogin prohibit-password",
        "UsePAM no",
        # The keys file is ours, in our state dir; the checkout's parents need not pass sshd's
        # ownership walk.
        "StrictModes no",
        f"AllowUsers {account.pw_name}",
        "AllowTcpForwarding no",
        "AllowAgentForwarding no",
        "X11Forwarding no",
        "PermitTunnel no",
        "PrintMotd no",
        "LogLevel INFO",
        "Subsystem sftp internal-sftp",
        f"ForceCommand internal-sftp -d {'/inbox' if chroot else inbox(paths)}",
    ]
    if chroot:
        lines.append(f"ChrootDirectory {sftp_root(paths)}")
    config_file(paths).write_text("\n".join(lines) + "\n")
    return account, chroot


def sshd_port() -> int:
    return c.port_setting(ENV_SSHD_PORT, SSHD_PORT, 0)


def info(paths: Paths) -> SftpInfo:
    account = _login_account(paths)
    chroot = _is_root() and _chroot_possible(sftp_root(paths))
    return SftpInfo(
        host=SSHD_HOST,
        port=sshd_port(),
        username=account.pw_name,
        remote_dir="/inbox" if chroot else str(inbox(paths)),
        known_hosts=_file(paths, "known_hosts"),
        private_key=_file(paths, "client_ed25519_key"),
        local_dir=inbox(paths),
    )


def ensure_running(paths: Paths, install: bool) -> SftpInfo:
    """Start our sshd unless it already runs; its addresses and files."""
    if running_pid(paths) is not None and port_open(SSHD_HOST, sshd_port()):
        return info(paths)
    if port_open(SSHD_HOST, sshd_port()):
        raise StackError(
            f"Port {sshd_port()} is held by a process this stack did not start; stop it or set "
            f"{ENV_SFTP_HOST} to use that server."
        )
    program = ensure_sshd_program(paths, install)
    _prepare(paths)
    if _is_root():
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    run_logged(
        [program, "-t", "-f", str(config_file(paths))], what="sshd -t", log_file=log_file(paths), timeout=30
    )
    pid = spawn_detached(
        [program, "-D", "-e", "-f", str(config_file(paths))],
        pid_file=pid_file(paths),
        log_file=log_file(paths),
        cwd=sshd_dir(paths),
    )
    if not wait_for(
        lambda: port_open(SSHD_HOST, sshd_port()), SSHD_READY_TIMEOUT_S, abort=lambda: not pid_alive(pid)
    ):
        raise StackError(f"sshd did not listen on {SSHD_HOST}:{sshd_port()}; read {log_file(paths)}.")
    log.info("devstack.sshd_started", pid=pid, port=sshd_port(), log=str(log_file(paths)))
    return info(paths)


def stop(paths: Paths) -> bool:
    """Stop our sshd and its open sessions; True when one ran."""
    pid = running_pid(paths)
    if pid is None:
        return False
    sessions = _children(pid)  # one sshd per open SFTP session; they outlive the listener
    terminate(pid, c.STOP_TIMEOUT_S, str(config_file(paths)))
    for session in sessions:
        terminate(session, c.STOP_TIMEOUT_S, "sshd")
    pid_file(paths).unlink(missing_ok=True)
    return True


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def status(paths: Paths) -> dict[str, object]:
    pid = running_pid(paths)
    return {
        "running": pid is not None,
        "pid": pid,
        "address": f"{SSHD_HOST}:{sshd_port()}",
        "inbox": str(inbox(paths)),
        "known_hosts": str(_file(paths, "known_hosts")),
        "log": str(log_file(paths)),
    }

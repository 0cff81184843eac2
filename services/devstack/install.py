"""Locate (and, when allowed, install) what the stack runs on: a JVM, the Kafka jars and the
PostgreSQL server binaries."""

from __future__ import annotations

import glob
import hashlib
import os
import pwd
import re
import shutil
import subprocess
from pathlib import Path

import structlog

from services.devstack.config import PG_OS_USER, Paths
from services.devstack.errors import StackError
from services.devstack.procs import run_logged

log = structlog.get_logger()

# Jar-name globs that must all be present in the libs folder for the broker to start.
REQUIRED_JARS = (
    "kafka_2.13-*.jar",
    "kafka-clients-*.jar",
    "kafka-server-*.jar",
    "kafka-tools-*.jar",
    "log4j-core-*.jar",
    "log4j-slf4j-impl-*.jar",
)
_STAMP = ".pom.sha256"  # sha256 of the pom the jars were copied from
REQUIRED_PG_PROGRAMS = ("initdb", "pg_ctl", "postgres", "pg_isready")
MIN_JAVA_MAJOR = 17


# --- Java -----------------------------------------------------------------------------------
def find_java() -> str:
    """Path of a Java 17+ ``java``; StackError naming what to install when there is none."""
    java_home = os.environ.get("JAVA_HOME")
    candidates = [str(Path(java_home) / "bin" / "java")] if java_home else []
    if found := shutil.which("java"):
        candidates.append(found)
    for java in candidates:
        if not os.access(java, os.X_OK):
            continue
        try:
            out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
        if match:
            major = int(match.group(1))
            if major == 1 and match.group(2):  # "1.8" style
                major = int(match.group(2))
            if major >= MIN_JAVA_MAJOR:
                return java
            log.warning("devstack.java_too_old", java=java, major=major)
    raise StackError(
        "Java 17 or newer is needed to run the local Kafka broker but none was found: "
        "install it (e.g. `apt-get install -y openjdk-17-jre-headless`) or set JAVA_HOME."
    )


# --- Kafka jars -----------------------------------------------------------------------------
def _missing_jars(libs: Path) -> list[str]:
    return [pattern for pattern in REQUIRED_JARS if not glob.glob(str(libs / pattern))]


def _pom_digest(pom: Path) -> str:
    return hashlib.sha256(pom.read_bytes()).hexdigest()


def _fetch_jars(paths: Paths, target: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError(
            "Maven is needed to download the Kafka jars but `mvn` was not found: "
            "install it (e.g. `apt-get install -y maven`)."
        )
    cmd = [
        mvn,
        "-q",
        "-B",
        "-Dstyle.color=never",
        "-f",
        str(paths.kafka_pom),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={target}",
        "-DincludeScope=runtime",
    ]
    log.info("devstack.kafka_jars_fetch", command=" ".join(cmd))
    paths.logs_dir.mkdir(parents=True, exist_ok=True)
    run_logged(
        cmd,
        what="Downloading the Kafka jars with Maven",
        log_file=paths.kafka_log,
        timeout=900,
        cwd=paths.root,
    )


def ensure_kafka_jars(paths: Paths, install: bool) -> Path:
    """Make sure the broker's jars are in ``paths.kafka_libs``; returns that folder.

    The default folder is re-fetched when ``deploy/kafka/pom.xml`` changed since the last fetch.
    """
    libs = paths.kafka_libs
    missing = _missing_jars(libs)
    if not paths.kafka_pom.is_file():
        if missing:
            raise StackError(
                f"The Kafka jars are missing from {libs} ({', '.join(missing)}) and "
                f"{paths.kafka_pom} is not there to fetch them."
            )
        return libs
    digest = _pom_digest(paths.kafka_pom)
    stamp = libs / _STAMP
    stale = (
        paths.kafka_libs_managed
        and not missing
        and (not stamp.is_file() or stamp.read_text().strip() != digest)
    )
    if not missing and not stale:
        return libs
    if not install:
        if missing:
            raise StackError(
                f"The Kafka jars are missing from {libs} ({', '.join(missing)}); run "
                "`python -m services.devstack up` (installs them) or the mvn command in "
                f"{paths.kafka_pom}."
            )
        log.warning("devstack.kafka_jars_stale", libs=str(libs), pom=str(paths.kafka_pom))
        return libs

    if not paths.kafka_libs_managed:
        # A folder chosen by the user: only fill it, never wipe it.
        libs.mkdir(parents=True, exist_ok=True)
        _fetch_jars(paths, libs)
    else:
        staging = libs.with_name(libs.name + ".new")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            _fetch_jars(paths, staging)
        except StackError:
            shutil.rmtree(staging, ignore_errors=True)
            if missing:
                raise
            log.warning("devstack.kafka_jars_refresh_failed_using_old", libs=str(libs))
            return libs
        (staging / _STAMP).write_text(digest + "\n")
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
    still_missing = _missing_jars(libs)
    if still_missing:
        raise StackError(
            f"Maven ran but {libs} still lacks {', '.join(still_missing)}; check {paths.kafka_pom}."
        )
    log.info("devstack.kafka_jars_ready", libs=str(libs))
    return libs


# --- PostgreSQL binaries --------------------------------------------------------------------
def _version_key(bindir: str) -> tuple[int, ...]:
    version = Path(bindir).parent.name
    return tuple(int(p) for p in re.findall(r"\d+", version)) or (0,)


def find_pg_bindir() -> Path | None:
    """Highest-version PostgreSQL server bin dir (Debian layout first, then ``pg_config``)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    if pg_config := shutil.which("pg_config"):
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=False
            )
            if out.returncode == 0 and out.stdout.strip():
                candidates.append(out.stdout.strip())
        except (OSError, subprocess.TimeoutExpired):
            pass
    for bindir in candidates:
        path = Path(bindir)
        if all(os.access(path / prog, os.X_OK) for prog in REQUIRED_PG_PROGRAMS):
            return path
    return None


def ensure_pg_bindir(paths: Paths, install: bool) -> Path:
    bindir = find_pg_bindir()
    if bindir is not None:
        return bindir
    if not install:
        raise StackError(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found: "
            "install them with `apt-get install -y postgresql`."
        )
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise StackError(
            "PostgreSQL server binaries were not found and cannot be installed from here: "
            "run `sudo apt-get install -y postgresql` (or your OS's equivalent)."
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    paths.logs_dir.mkdir(parents=True, exist_ok=True)
    log.info("devstack.postgres_install", command="apt-get update && apt-get install -y postgresql")
    run_logged(
        ["apt-get", "update"],
        what="apt-get update",
        log_file=paths.pg_log,
        timeout=600,
        env=env,
    )
    run_logged(
        ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"],
        what="Installing PostgreSQL with apt-get",
        log_file=paths.pg_log,
        timeout=900,
        env=env,
    )
    bindir = find_pg_bindir()
    if bindir is None:
        raise StackError(
            f"apt-get installed postgresql but no server binaries were found under "
            f"/usr/lib/postgresql/*/bin; read {paths.pg_log}."
        )
    return bindir


def ensure_pg_os_user(paths: Paths) -> pwd.struct_passwd:
    """The unprivileged OS account that runs initdb/pg_ctl when we are root."""
    try:
        return pwd.getpwnam(PG_OS_USER)
    except KeyError:
        pass
    log.info("devstack.postgres_os_user_create", user=PG_OS_USER)
    run_logged(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/var/lib/postgresql",
            "--shell",
            "/usr/sbin/nologin",
            PG_OS_USER,
        ],
        what=f"Creating the {PG_OS_USER} OS user",
        log_file=paths.pg_log,
        timeout=60,
    )
    return pwd.getpwnam(PG_OS_USER)

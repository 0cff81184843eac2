"""Run pipeline services as separate ``optout run`` processes with JSON logs captured to
files (observability e2e tests). Each process gets its own metrics port; stand-ins get
free ports; everything is scoped to the test's topic prefix and database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from services.common.settings import Settings
from tests.support.logcapture import CAPTURE, ErrorEvent, json_log_errors
from tests.support.pipeline import free_port, standin_ports_env


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    metrics_port: int

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5)


class ServiceProcesses:
    def __init__(self, cfg: Settings, workdir: Path, **extra_env: str) -> None:
        self.cfg = cfg
        self.workdir = workdir
        self.procs: list[Proc] = []
        # Errors the children log fail the test like the test process's own (tests/conftest.py).
        CAPTURE.watch(self.error_events)
        esp_port, partners_port = free_port(), free_port()
        partners = [
            {"name": n, "url": f"http://127.0.0.1:{partners_port}/partners/{n}", "token": f"dev-{n}-token"}
            for n in ("adnetwork", "databroker")
        ]
        (workdir / "mail_house").mkdir(exist_ok=True)
        self.env = {
            **standin_ports_env(),  # every stand-in on a free port; the two used are set below
            **{k: v for k, v in os.environ.items() if not k.startswith("OPTOUT_")},
            "OPTOUT_KAFKA_BOOTSTRAP": cfg.kafka_bootstrap,
            "OPTOUT_DATABASE_URL": cfg.dsn(),
            "OPTOUT_ADMIN_DATABASE_URL": cfg.admin_dsn(),
            "OPTOUT_TOPIC_PREFIX": cfg.topic_prefix,
            "OPTOUT_TOPIC_PARTITIONS": str(cfg.topic_partitions),
            "OPTOUT_BATCH_TIMEOUT_MS": "50",
            "OPTOUT_LOG_FORMAT": "json",
            "OPTOUT_LOG_LEVEL": "debug",
            "OPTOUT_STANDIN_EMAIL_PROVIDER_PORT": str(esp_port),
            "OPTOUT_STANDIN_PARTNERS_PORT": str(partners_port),
            "OPTOUT_EMAIL_PROVIDER_URL": f"http://127.0.0.1:{esp_port}",
            "OPTOUT_PARTNERS": json.dumps(partners),
            "OPTOUT_MAIL_HOUSE_DIR": str(workdir / "mail_house"),
            "OPTOUT_CONNECTOR_RETRY_INITIAL_SECONDS": "0.05",
            **extra_env,
        }

    def start(self, *spec: str) -> Proc:
        name = "-".join(spec)
        index = sum(1 for p in self.procs if p.name == name)
        port = free_port()
        out = self.workdir / f"{name}.{index}.stdout.log"
        err = self.workdir / f"{name}.{index}.stderr.log"
        with out.open("wb") as o, err.open("wb") as e:
            popen = subprocess.Popen(
                [sys.executable, "-m", "services.cli.main", "run", *spec],
                env={**self.env, "OPTOUT_METRICS_PORT": str(port)},
                cwd=self.workdir,
                stdout=o,
                stderr=e,
            )
        proc = Proc(name, popen, out, err, port)
        self.procs.append(proc)
        return proc

    def wait_ready(self, proc: Proc, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = proc.popen.poll()
            assert code is None, f"{proc.name} exited {code}: {proc.stderr.read_text()[-2000:]}"
            try:
                if proc.get("/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"{proc.name} not ready within {timeout:.0f}s")

    def stop(self, proc: Proc, timeout: float = 60.0) -> int:
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGTERM)
        try:
            return proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait(10)
            raise AssertionError(f"{proc.name} did not stop within {timeout:.0f}s of SIGTERM") from None

    def stop_all(self) -> dict[str, int]:
        codes = {}
        for proc in reversed(self.procs):
            if proc.popen.returncode is None:
                codes[proc.name] = self.stop(proc)
        return codes

    def error_events(self) -> list[ErrorEvent]:
        """Lines at level error or above (and tracebacks) of every child's logs."""
        return [e for p in self.procs for e in json_log_errors(p.name, (p.stdout, p.stderr))]

    def log_lines(self) -> list[tuple[str, str, str]]:
        """(process, stream, line) of every log line written so far."""
        lines = []
        for proc in self.procs:
            for stream, path in (("stdout", proc.stdout), ("stderr", proc.stderr)):
                lines.extend(
                    (proc.name, stream, line) for line in path.read_text(errors="replace").splitlines()
                )
        return lines


def json_lines(lines: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    return [json.loads(line) for _, stream, line in lines if stream == "stdout" and line.strip()]

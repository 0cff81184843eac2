"""Services as real OS processes (``optout run ...``), so faults are real: SIGKILL, restarts,
several instances in one consumer group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.pipeline import wait_until


@dataclass
class Instance:
    name: str
    spec: list[str]
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class Fleet:
    env: dict[str, str]
    log_dir: Path
    instances: list[Instance] = field(default_factory=list)
    counter: int = 0

    def start(self, name: str, *spec: str) -> Instance:
        self.counter += 1
        log = self.log_dir / f"{name}-{self.counter}.log"
        handle = log.open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "run", *spec],
            env={**os.environ, **self.env},
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        handle.close()
        instance = Instance(name, list(spec), proc, log)
        self.instances.append(instance)
        return instance

    def alive(self, name: str) -> list[Instance]:
        return [i for i in self.instances if i.name == name and i.proc.poll() is None]

    def kill9(self, instance: Instance) -> None:
        instance.proc.send_signal(signal.SIGKILL)
        instance.proc.wait(10)

    def restart(self, instance: Instance) -> Instance:
        return self.start(instance.name, *instance.spec)

    def wait_consuming(self, timeout: float = 120.0) -> None:
        """Until every consumer started so far logged that it consumes (the shared consume
        loop's ``consuming`` line): a fault schedule that starts earlier hits processes still
        importing on a busy machine, and a broker restart then fails their start-up check."""
        consumers = [i for i in self.instances if i.spec[0] != "standins"]

        def consuming(instance: Instance) -> bool:
            if instance.proc.poll() is not None:
                head = instance.log.read_text(encoding="utf-8", errors="replace")[-500:]
                raise AssertionError(f"{instance.name} exited ({instance.proc.returncode}) on start: {head}")
            return '"event": "consuming"' in instance.log.read_text(encoding="utf-8", errors="replace")

        wait_until(lambda: all(consuming(i) for i in consumers), timeout, 0.25, "every service consuming")

    def died_unexpectedly(self, killed: set[int]) -> list[Instance]:
        """Instances that exited although nobody killed them."""
        return [i for i in self.instances if i.proc.poll() is not None and i.proc.pid not in killed]

    def stop_all(self, timeout: float = 30.0) -> None:
        for i in self.instances:
            if i.proc.poll() is None:
                i.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for i in self.instances:
            try:
                i.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                i.proc.kill()
                i.proc.wait(5)

    def log_lines(self) -> list[str]:
        lines: list[str] = []
        for path in sorted(self.log_dir.glob("*.log")):
            lines.extend(path.read_text(encoding="utf-8", errors="replace").splitlines())
        return lines

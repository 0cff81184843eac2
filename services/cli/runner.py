"""``optout run``: run one service in this process, or several as supervised child processes.

``optout run SERVICE`` imports that service's modules only (and ``run`` with several
services imports none: each child imports its own); README, "Process start-up".
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from services.common.errors import ConfigurationError
from services.common.logging import get_logger
from services.common.settings import Settings, settings
from services.common.shutdown import install_stop_handlers

log = get_logger(__name__)

ServiceMain = Callable[[Settings, threading.Event], None]


def _intake() -> ServiceMain:
    from services.intake.service import run

    return run


def _confirmer() -> ServiceMain:
    from services.confirmer.service import run

    return run


def _standins() -> ServiceMain:
    from services.standins.server import run

    return run


def _web() -> ServiceMain:
    from services.web.service import run

    return run


def _inbound() -> ServiceMain:
    from services.inbound.service import run

    return run


def _lookup() -> ServiceMain:
    from services.lookup.service import run

    return run


def _exporter() -> ServiceMain:
    from services.observability.exporter import run

    return run


# Service name -> (needs the database, a loader: imports the service's module, returns its
# entry point). Only the service run is imported. Connectors are "connector NAME".
SERVICES: dict[str, tuple[bool, Callable[[], ServiceMain]]] = {
    "intake": (True, _intake),
    "exporter": (True, _exporter),
    "standins": (False, _standins),
    "confirmer": (True, _confirmer),
    "web": (False, _web),
    "inbound": (True, _inbound),  # the replay memory of webhook tokens is in PostgreSQL
    "lookup": (True, _lookup),
}
# Services that never use Kafka: not checked at start-up, not part of their readiness (the
# lookup API answers from PostgreSQL alone, so a broker outage does not stop senders asking).
NO_BROKER = {"lookup"}
# What `optout run all` (and `make run`) starts.
PIPELINE: list[list[str]] = [
    ["intake"],
    ["confirmer"],
    ["standins"],
    ["connectors"],  # one connector per destination of the destinations file
    ["web"],
    ["exporter"],
    ["inbound"],  # last, so the metrics ports of the others stay as they were
    ["lookup"],  # after inbound, for the same reason (OPTOUT_METRICS_PORT + index)
]


def _connector_main(name: str) -> ServiceMain:
    from services.connectors.registry import connector_runner

    return connector_runner(name, settings())


def _pipeline() -> list[list[str]]:
    """What `optout run all` starts: PIPELINE with one connector per destination."""
    specs: list[list[str]] = []
    for spec in PIPELINE:
        if spec == ["connectors"]:
            specs.extend(["connector", d.id] for d in settings().destinations)
        else:
            specs.append(spec)
    return specs


def parse_specs(tokens: list[str]) -> list[list[str]]:
    """``intake connector mail_house confirmer`` -> [[intake], [connector, mail_house], [confirmer]]."""
    specs: list[list[str]] = []
    i = 0
    while i < len(tokens):
        name = tokens[i]
        if name == "connector":
            if i + 1 >= len(tokens):
                raise ConfigurationError("'optout run connector' needs a connector NAME")
            specs.append([name, tokens[i + 1]])
            i += 2
            continue
        if name == "all":
            specs.extend(_pipeline())
        elif name not in SERVICES:
            known = ", ".join([*SERVICES, "connector NAME", "all"])
            raise ConfigurationError(f"unknown service {name!r}; known: {known}")
        else:
            specs.append([name])
        i += 1
    return [s for s in specs if s]


def _run_one(spec: list[str]) -> int:
    from services.common.db import require_schema
    from services.common.kafka import check_broker
    from services.observability.health import serve_health

    cfg = settings()
    if spec[0] == "connector":
        needs_db, main = True, _connector_main(spec[1])  # connectors keep a dedupe store
    else:
        needs_db, load = SERVICES[spec[0]]
        main = load()  # before the health server: ready only once the service's code is loaded
    needs_kafka = spec[0] not in NO_BROKER
    if needs_kafka:
        check_broker(cfg)
    if needs_db:
        require_schema(cfg.dsn())
    stop = threading.Event()
    install_stop_handlers(stop)
    serve_health(cfg, needs_db, needs_kafka=needs_kafka)
    for scope in cfg.destinations.unserved_scopes():
        log.warning(
            "no destination serves this scope: a request naming it is dead-lettered "
            "(ALL skips it); see the destinations file",
            scope=scope.value,
            destinations=cfg.destinations.names,
        )
    log.info("service starting", service=" ".join(spec))
    main(cfg, stop)
    log.info("service stopped", service=" ".join(spec))
    return 0


def _supervise(specs: list[list[str]]) -> int:
    """Start each service as a child process; stop all on SIGTERM/SIGINT or when one dies."""
    stop = threading.Event()
    install_stop_handlers(stop)
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    base_port = settings().metrics_port
    for index, spec in enumerate(specs):
        env = dict(os.environ)
        if base_port:
            env["OPTOUT_METRICS_PORT"] = str(base_port + index)
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "run", *spec],
            env=env,
        )
        children.append((" ".join(spec), proc))
        log.info("started", service=" ".join(spec), pid=proc.pid)
    exit_code = 0
    try:
        while not stop.is_set():
            for name, proc in children:
                code = proc.poll()
                if code is not None:
                    log.error("service exited; stopping the others", service=name, exit_code=code)
                    exit_code = code or 1
                    stop.set()
            time.sleep(0.5)
    finally:
        for _, proc in children:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for name, proc in children:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("service did not stop in time; killing", service=name)
                proc.kill()
    return exit_code


def cmd_run(args: argparse.Namespace) -> int:
    specs = parse_specs(args.services)
    if not specs:
        raise ConfigurationError("name at least one service to run")
    if len(specs) == 1:
        return _run_one(specs[0])
    return _supervise(specs)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        help="run services in the foreground",
        description="Run one service in this process, or several as child processes. "
        "Services: intake, confirmer, web, inbound, lookup, standins, exporter, 'connector NAME' "
        "(NAME: a destination of the destinations file), or 'all' (one connector per destination).",
    )
    p.add_argument("services", nargs="+", metavar="SERVICE")
    p.set_defaults(handler=cmd_run)

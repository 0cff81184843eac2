"""CPU of one connector batch, per connector of the shipped destinations file (issue #15).

    .venv/bin/python -m benchmarks.bench_batch_cpu [--batch 25] [--batches 300] [--profile NAME]

At 500 opt-outs/s each connector handles ~20 batches a second of a few dozen commands, and a
batch costs a service a few ms of CPU whatever its size, so the fixed cost of a batch is what
issue #15's "CPU per opt-out" is made of. This runs each connector's ``ConnectorStep.submit``
(decode, dedupe lookup, the people's locks and newest-applied read, the provider call,
record, produce the acks and wait for their delivery) on batches of realistic commands
(``benchmarks.common.generate_events`` planned by intake's own planning), against the real
stack (a fresh database and topics) and the providers' stand-ins in a child process, and
prints, per batch: the process's CPU (every thread: librdkafka's, the HTTP pools') and the
main thread's alone. The consume loop (fetching, storing offsets) is not in it: bench-e2e
measures the whole.

``--profile NAME`` runs that connector's batches under cProfile and prints the top functions.
``--only intake`` (or ``intake`` among others) measures intake's ``IntakeStep.submit`` the same
way, on batches of generated opt-out requests (decode, validate, plan, record, produce the
commands, publish the subject states and wait for every delivery); ``--profile intake``
profiles it (the main thread's CPU: the database and states threads' work shows as waits).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

from confluent_kafka import Message

from services.common.avro import default_codec
from services.common.clock import SystemClock
from services.common.gc_tuning import tune_gc
from services.common.kafka import create_topics, make_producer
from services.common.settings import Settings
from services.connectors.dedupe import DedupeStore
from services.connectors.kit import ConnectorStep
from services.connectors.registry import build_connector
from services.devstack.procs import port_open
from services.domain.planning import plan_commands
from services.domain.validation import validate_request
from services.intake.step import IntakeStep, intake_producer
from tests.faults.environment import create_database, drop_database, drop_topics, pipeline_env
from tests.support.pipeline import wait_until

from .bench_intake import _proc_cpu, _thread_group
from .common import generate_events, load_average, note, setup_logging, start_stack


def messages_by_destination(settings: Settings, events: int, seed: int) -> dict[str, list[Message]]:
    """Every command of ``events`` generated requests, encoded, as consumed messages."""
    codec = default_codec()
    now = datetime.now(UTC)
    skew = timedelta(seconds=settings.clock_skew_seconds)
    found: dict[str, list[Message]] = defaultdict(list)
    for event in generate_events(events, seed=seed, now=now):
        request = validate_request(event.record, now, skew, settings.default_phone_region)
        for planned in plan_commands(request, now, settings.destinations):
            queue = found[planned.destination]
            queue.append(
                Message(
                    topic=settings.suppress_topic(planned.destination),
                    partition=len(queue) % settings.topic_partitions,
                    offset=len(queue),
                    key=request.event_id.encode(),
                    value=codec.encode("SuppressionCommand", planned.record),
                )
            )
    return found


def request_messages(settings: Settings, events: int, seed: int) -> list[Message]:
    """``events`` generated opt-out requests, encoded, as intake consumes them."""
    codec = default_codec()
    return [
        Message(
            topic=settings.requests_topic,
            partition=i % settings.topic_partitions,
            offset=i,
            key=event.key.encode(),
            value=codec.encode("OptOutRequested", {**event.record, "action": "OPT_OUT", "device_id": None}),
        )
        for i, event in enumerate(generate_events(events, seed=seed, now=datetime.now(UTC)))
    ]


def threads_cpu() -> dict[int, tuple[str, float]]:
    """This process's threads: id -> (group, CPU s) from /proc (librdkafka's as one group)."""
    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    found: dict[int, tuple[str, float]] = {}
    for entry in os.listdir("/proc/self/task"):
        cpu = _proc_cpu(f"/proc/self/task/{entry}/stat")
        name = names.get(int(entry))
        if name is None:
            try:
                name = Path(f"/proc/self/task/{entry}/comm").read_text().strip()
            except OSError:
                continue
        if cpu is not None:
            found[int(entry)] = (_thread_group(name), cpu)
    return found


def by_thread(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], count: int) -> str:
    """CPU ms per batch by thread group between two ``threads_cpu`` samples."""
    groups: dict[str, float] = defaultdict(float)
    for tid, (group, cpu) in after.items():
        groups[group] += cpu - before.get(tid, (group, 0.0))[1]
    return ", ".join(
        f"{group} {1e3 * cpu / count:.2f}"
        for group, cpu in sorted(groups.items(), key=lambda g: -g[1])
        if cpu
    )


def measure(
    settings: Settings,
    name: str,
    messages: list[Message],
    batch: int,
    warm: int,
    profile: bool,
    gap: float = 0.0,
) -> tuple[int, float, float, str]:
    """(batches measured, process CPU s, main-thread CPU s, CPU ms per batch by thread) of
    ``name``'s step over ``messages``."""
    step: IntakeStep | ConnectorStep
    if name == INTAKE:
        step = IntakeStep(settings, intake_producer(settings), default_codec(), SystemClock())
    else:
        step = ConnectorStep(
            settings,
            build_connector(settings, name),
            make_producer(settings),
            default_codec(),
            SystemClock(),
            DedupeStore(settings.dsn(), name, settings.database_prepared_statements),
        )
    batches = [messages[i : i + batch] for i in range(0, len(messages), batch)]
    try:
        for b in batches[:warm]:
            step.submit(b)
            step.poll()
        measured = batches[warm:]
        profiler = cProfile.Profile(time.thread_time) if profile else None  # CPU, not waits
        cpu, thread, threads = time.process_time(), time.thread_time(), threads_cpu()
        if profiler is not None:
            profiler.enable()
        for b in measured:
            step.submit(b)
            step.poll()
            if gap:  # idle between batches, as in a pipeline at a steady rate
                time.sleep(gap)
        if profiler is not None:
            profiler.disable()
        cpu, thread = time.process_time() - cpu, time.thread_time() - thread
        split = by_thread(threads, threads_cpu(), len(measured))
        if profiler is not None:
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(60)
            out.write("\n--- by own time\n")
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(40)
            print(out.getvalue(), file=sys.stderr)
        return len(measured), cpu, thread, split
    finally:
        step.close()


INTAKE = "intake"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=25, help="commands per batch")
    parser.add_argument("--batches", type=int, default=300, help="batches measured per connector")
    parser.add_argument("--warm", type=int, default=20, help="batches before measuring")
    parser.add_argument("--only", default="", help="comma-separated connectors (default: all)")
    parser.add_argument("--profile", default="", help="connector to run under cProfile")
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument(
        "--gap-ms",
        type=float,
        default=0.0,
        help="idle between batches (100: a batch every ~100 ms, as at 500/s; 0: back to back)",
    )
    parser.add_argument(
        "--default-gc", action="store_true", help="keep CPython's collector thresholds (no tune_gc)"
    )
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    if not args.default_gc:
        tune_gc()  # as the services' processes do
    stack = start_stack()
    work = Path(tempfile.mkdtemp(prefix="bench-batch-cpu-"))
    database = f"optout_bench_{os.urandom(4).hex()}"
    app, admin = create_database(stack, database)
    env = pipeline_env(stack, app, admin, work, log_level=args.log_level.lower())
    os.environ.update(env)
    settings = Settings()
    create_topics(settings, settings.all_topics(), partitions=settings.topic_partitions)
    log = (work / "standins.log").open("wb")
    standins = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "run", "standins"],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    before = load_average()
    lines: list[str] = []
    try:
        ports = [int(v) for k, v in env.items() if k.startswith("OPTOUT_STANDIN_") and k.endswith("_PORT")]
        wait_until(  # every stand-in listens (or their process died)
            lambda: standins.poll() is not None or all(port_open("127.0.0.1", p) for p in ports),
            timeout=60,
            message="the stand-ins to listen",
        )
        if standins.poll() is not None:
            raise SystemExit(f"bench-batch-cpu: the stand-ins exited; see {work / 'standins.log'}")
        names = [
            n for n in (INTAKE, *settings.destinations.names) if not args.only or n in args.only.split(",")
        ]
        # Enough requests that the smallest destination (mail_house, ~1 in 7) fills its batches.
        events = (args.warm + args.batches) * args.batch * 8
        queues: dict[str, list[Message]] = {}
        if any(name != INTAKE for name in names):
            note(f"planning {events:,} requests")
            queues = messages_by_destination(settings, events, seed=int.from_bytes(os.urandom(2)))
        for name in names:
            wanted = (args.warm + args.batches) * args.batch
            if name == INTAKE:
                messages = request_messages(settings, wanted, seed=int.from_bytes(os.urandom(2)))
            else:
                messages = queues[name][:wanted]
            count, cpu, thread, split = measure(
                settings,
                name,
                messages,
                args.batch,
                args.warm,
                profile=name == args.profile,
                gap=args.gap_ms / 1000,
            )
            lines.append(
                f"  {name:<22} {count:>5} batches of {args.batch}: process {1e3 * cpu / count:6.2f} ms "
                f"({1e6 * cpu / (count * args.batch):5.0f} µs a message), main thread "
                f"{1e3 * thread / count:6.2f} ms; by thread (/proc, ms): {split}"
            )
            note(lines[-1].strip())
    finally:
        standins.send_signal(signal.SIGTERM)
        standins.wait(10)
        log.close()
        drop_database(stack, database)
        drop_topics(settings)
    print(f"bench-batch-cpu: load average before {before}, after {load_average()}; CPU per batch")
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

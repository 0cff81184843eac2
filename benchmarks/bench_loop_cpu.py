"""CPU per batch of the consume loop alone, beside a bare librdkafka loop (issue #15).

    .venv/bin/python -m benchmarks.bench_loop_cpu [--burst 7] [--every-ms 50] [--seconds 20]

At 500 opt-outs/s every service takes about 20 batches per 1,000 opt-outs, so what a batch
costs before the step's own work (fetching, the loop's linger, storing offsets, its retry
wrapper, metrics) is paid about 120 times per 1,000 opt-outs across the six services. This
measures it on the real broker: a child process writes bursts of ``--burst`` messages every
``--every-ms`` ms (as intake writes a batch's commands to a command topic) to a fresh topic
of 6 partitions, and this process consumes them with a step that does nothing, two ways,
alternated ``--rounds`` times, each with a fresh group, measured from ``--warm-seconds`` after
its first batch:

- **bare**: the confluent-kafka example's loop at the same batch boundaries, on the same
  consumer settings (``make_consumer``): ``consume(1, timeout)``, then what is fetched already,
  ``store_offsets`` of the last message; nothing else;
- **ours**: ``services.common.consumer_loop.ConsumerLoop`` with a connector's linger
  (``CONNECTOR_BATCH_LINGER_MS``), as every service runs it.

Printed: each one's process CPU per batch (every thread: librdkafka's too; /proc), by thread,
and per burst (the same work for both: the bare loop, which does not linger, splits a burst
into several batches), and ours against bare per burst; the load average before and after.
"""

from __future__ import annotations

import argparse
import multiprocessing
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.synchronize import Event

from confluent_kafka import Message

from services.common.consumer_loop import ConsumerLoop, commit_config
from services.common.kafka import create_topics, make_consumer, make_producer, next_offsets
from services.common.settings import CONNECTOR_BATCH_LINGER_MS, Settings
from tests.faults.environment import drop_topics

from .bench_batch_cpu import by_thread, threads_cpu
from .common import load_average, note, setup_logging

PARTITIONS = 6
WAYS = ("bare", "ours")
JOIN_TIMEOUT_SECONDS = 60.0


def write_bursts(prefix: str, topic: str, burst: int, every: float, stop: Event) -> None:
    """The child: ``burst`` messages every ``every`` seconds until ``stop`` is set."""
    setup_logging("WARNING")
    producer = make_producer(Settings(topic_prefix=prefix))
    value = b"x" * 300  # about a SuppressionCommand's size
    while not stop.is_set():
        for _ in range(burst):
            producer.produce(topic, value=value, key=uuid.uuid4().hex)
        producer.flush(10)
        stop.wait(every)
    producer.flush(10)


class NullStep:
    """A step that does nothing but count (``services.common.consumer_loop.Step``)."""

    def __init__(self) -> None:
        self.batches = 0
        self.messages = 0

    def submit(self, messages: Sequence[Message]) -> None:
        self.batches += 1
        self.messages += len(messages)

    def poll(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class Figure:
    way: str
    batches: int
    messages: int
    cpu: float  # process CPU seconds over the window
    threads: str  # CPU ms per batch by thread

    @property
    def per_batch_ms(self) -> float:
        return 1e3 * self.cpu / max(self.batches, 1)

    def per_burst_ms(self, burst: int) -> float:
        return 1e3 * self.cpu * burst / max(self.messages, 1)


def window(way: str, counts: Callable[[], tuple[int, int]], warm: float, seconds: float) -> Figure:
    """Measure ``seconds`` once the loop took its first batch and ``warm`` more seconds passed:
    batches and messages from ``counts``, this process's CPU and its threads'."""
    deadline = time.monotonic() + JOIN_TIMEOUT_SECONDS
    while counts()[0] == 0:  # the group joins and the first burst arrives
        if time.monotonic() > deadline:
            raise SystemExit(f"bench-loop-cpu: {way} took no batch within {JOIN_TIMEOUT_SECONDS:.0f}s")
        time.sleep(0.05)
    time.sleep(warm)  # a steady rate of batches before measuring (a duration, not a condition)
    batches, messages = counts()
    cpu, threads = time.process_time(), threads_cpu()
    time.sleep(seconds)  # the window itself: the load runs meanwhile
    after_batches, after_messages = counts()
    count = after_batches - batches
    return Figure(
        way,
        count,
        after_messages - messages,
        time.process_time() - cpu,
        by_thread(threads, threads_cpu(), count),
    )


def measured(
    way: str, run: Callable[[], None], stop: threading.Event, step: NullStep, warm: float, seconds: float
) -> Figure:
    """``run`` on a thread of its own until ``stop``, measured by ``window``."""
    thread = threading.Thread(target=run, name=f"{way}-loop")
    thread.start()
    try:
        return window(way, lambda: (step.batches, step.messages), warm, seconds)
    finally:
        stop.set()
        thread.join()


def bare(settings: Settings, topic: str, warm: float, seconds: float) -> Figure:
    group = f"{settings.topic_prefix}bare-{uuid.uuid4().hex[:6]}"
    consumer = make_consumer(settings, group, **commit_config(settings))
    consumer.subscribe([topic])
    step, stop = NullStep(), threading.Event()

    def run() -> None:
        while not stop.is_set():
            batch = consumer.consume(1, settings.batch_timeout_ms / 1000)
            if not batch:
                continue
            usable = [m for m in batch + consumer.consume(settings.batch_size - 1, 0) if m.error() is None]
            if usable:
                step.submit(usable)
                consumer.store_offsets(offsets=next_offsets(usable))

    try:
        return measured("bare", run, stop, step, warm, seconds)
    finally:
        consumer.close()


def ours(settings: Settings, topic: str, warm: float, seconds: float) -> Figure:
    step, stop = NullStep(), threading.Event()
    group = f"{settings.topic_prefix}ours-{uuid.uuid4().hex[:6]}"
    linger = CONNECTOR_BATCH_LINGER_MS
    loop = ConsumerLoop(settings, "bench-loop", [topic], step, stop, group_id=group, linger_ms=linger)
    return measured("ours", loop.run, stop, step, warm, seconds)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--burst", type=int, default=7, help="messages per burst (a connector's batch)")
    parser.add_argument("--every-ms", type=float, default=50.0, help="a burst every this many ms")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured per way and round")
    parser.add_argument(
        "--warm-seconds", type=float, default=3.0, help="after the first batch, before each measurement"
    )
    parser.add_argument("--rounds", type=int, default=2, help="bare then ours, this many times")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    prefix = f"bloop{uuid.uuid4().hex[:8]}."
    settings = Settings(topic_prefix=prefix, topic_partitions=PARTITIONS)
    topic = f"{prefix}bursts"
    before = load_average()
    create_topics(settings, [topic], partitions=PARTITIONS)
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    writer = context.Process(
        target=write_bursts, args=(prefix, topic, args.burst, args.every_ms / 1000, stop), daemon=True
    )
    writer.start()
    figures: list[Figure] = []
    try:
        for round_ in range(1, args.rounds + 1):
            note(f"round {round_}: bare")
            figures.append(bare(settings, topic, args.warm_seconds, args.seconds))
            note(f"round {round_}: ours")
            figures.append(ours(settings, topic, args.warm_seconds, args.seconds))
    finally:
        stop.set()
        writer.join(30)
        drop_topics(settings)
    print(
        f"bench-loop-cpu: bursts of {args.burst} every {args.every_ms:.0f} ms to {PARTITIONS} partitions; "
        f"load average before {before}, after {load_average()}; CPU per batch (a step that does nothing)"
    )
    for f in figures:
        print(
            f"  {f.way:<5} {f.batches:>5} batches, {f.messages / max(f.batches, 1):5.1f} messages each: "
            f"{f.per_batch_ms:5.2f} ms a batch, {f.per_burst_ms(args.burst):5.2f} ms a burst; "
            f"by thread (ms a batch): {f.threads}"
        )
    mean = {
        w: sum(f.per_burst_ms(args.burst) for f in figures if f.way == w) / args.rounds
        for w in ("bare", "ours")
    }
    print(
        f"bench-loop-cpu: burst={args.burst} bare={mean['bare']:.2f} ms/burst "
        f"ours={mean['ours']:.2f} ms/burst ours/bare={mean['ours'] / mean['bare']:.2f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

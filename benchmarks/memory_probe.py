"""Run one service under a memory probe: where its resident memory is (diagnostics for
``make bench-memory``, issue #15).

    .venv/bin/python -m benchmarks.memory_probe OUT.jsonl [--every 15] [--trim-after S]
        [--slow-confirmer S] -- run confirmer

runs ``optout run ...`` in this process and, every ``--every`` seconds, appends one JSON line
to OUT.jsonl:

* ``rss``: resident MiB; ``smaps``: MiB resident by kind of mapping (``heap``: glibc's main
  arena; ``arenas64``: anonymous 64 MiB-aligned mappings, glibc's per-thread arenas, where
  librdkafka's broker threads allocate; ``anon``: other anonymous mappings, mostly Python's
  obmalloc arenas; ``libs``: shared libraries);
* ``malloc``: glibc's ``mallinfo2()`` in MiB: ``uordblks`` in use, ``fordblks`` free (held by
  the allocator: what ``malloc_trim`` could return); ``hblkhd`` in mmapped blocks;
* ``py_blocks``: Python's allocated blocks; ``gc_objects`` and ``types`` (the 12 most common
  types of ``gc.get_objects()``);
* ``kafka``: the consume loop's librdkafka statistics (``queued``: the consumer's queue,
  ``replyq``, which every partition's fetch queue is forwarded to; ``lag``: the group's
  lag summed over partitions);
* with ``--trim-after S``, from S seconds on: RSS before and after ``malloc_trim(0)`` (this
  changes what follows: use it in a run of its own).

``--slow-confirmer S`` sleeps S seconds before each confirmer batch, so the confirmer falls
behind intake whatever the machine's load (how the prefetch queue was shown to grow with the
lag). ``bench_resources --backlog N --probe confirmer`` starts the confirmer this way.
The probe patches two methods (the lag tracker's ``on_stats`` and, when asked, the
confirmer's ``submit``): a diagnostic, not a way to run a service.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import gc
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 2**20
ARENA_ALIGNMENT = 64 * MIB
_MALLINFO_FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks")
_MALLINFO_FIELDS += ("fordblks", "keepcost")


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO_FIELDS]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _Mallinfo2
_libc.malloc_trim.argtypes = [ctypes.c_size_t]
_kafka: dict[str, int] = {}


def rss_mib() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE // MIB


def smaps_mib() -> dict[str, int]:
    kb: collections.Counter[str] = collections.Counter()
    kind = ""
    for line in Path("/proc/self/smaps").read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        if not parts[0].endswith(":"):  # a mapping's header: range perms offset dev inode [path]
            low, high = (int(x, 16) for x in parts[0].split("-"))
            path = parts[5] if len(parts) > 5 else ""
            if path == "[heap]":
                kind = "heap"
            elif ".so" in path:
                kind = "libs"
            elif path.startswith("/"):
                kind = "files"
            elif not path:
                aligned = low % ARENA_ALIGNMENT == 0 or high - low == ARENA_ALIGNMENT
                kind = "arenas64" if aligned else "anon"
            else:
                kind = "other"
        elif parts[0] == "Rss:":
            kb[kind] += int(parts[1])
    return {k: v // 1024 for k, v in sorted(kb.items())}


def malloc_mib() -> dict[str, int]:
    info = _libc.mallinfo2()
    return {name: int(getattr(info, name)) // MIB for name in ("arena", "uordblks", "fordblks", "hblkhd")}


def snapshot(elapsed: float, trim: bool) -> dict[str, Any]:
    counts = collections.Counter(type(o).__name__ for o in gc.get_objects())
    record: dict[str, Any] = {
        "t": round(elapsed),
        "rss": rss_mib(),
        "smaps": smaps_mib(),
        "malloc": malloc_mib(),
        "py_blocks": sys.getallocatedblocks(),
        "gc_objects": sum(counts.values()),
        "types": dict(counts.most_common(12)),
        "kafka": dict(_kafka),
    }
    if trim:
        before = rss_mib()
        _libc.malloc_trim(0)
        record["trim"] = {"before": before, "after": rss_mib()}
    return record


def _watch(out: Path, every: float, trim_after: float | None) -> None:
    started = time.monotonic()
    while True:
        time.sleep(every)
        elapsed = time.monotonic() - started
        record = snapshot(elapsed, trim_after is not None and elapsed >= trim_after)
        with out.open("a") as f:
            f.write(json.dumps(record) + "\n")


def _patch_stats() -> None:
    from services.observability import consumer_lag

    original = consumer_lag.ConsumerLagTracker.on_stats

    def on_stats(self: consumer_lag.ConsumerLagTracker, raw: str) -> None:
        stats = json.loads(raw)
        partitions = [
            p
            for topic in stats.get("topics", {}).values()
            for key, p in topic.get("partitions", {}).items()
            if key != "-1"
        ]
        _kafka["queued"] = int(stats.get("replyq", 0))
        _kafka["lag"] = sum(max(int(p.get("consumer_lag", 0)), 0) for p in partitions)
        original(self, raw)

    consumer_lag.ConsumerLagTracker.on_stats = on_stats


def _slow_confirmer(seconds: float) -> None:
    from confluent_kafka import Message

    from services.confirmer import step

    original = step.ConfirmerStep.submit

    def submit(self: step.ConfirmerStep, messages: Sequence[Message]) -> None:
        time.sleep(seconds)
        original(self, messages)

    step.ConfirmerStep.submit = submit


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("out", type=Path, help="JSON lines appended here")
    parser.add_argument("--every", type=float, default=15.0, help="seconds between snapshots")
    parser.add_argument("--trim-after", type=float, default=None, help="malloc_trim(0) from then on")
    parser.add_argument("--slow-confirmer", type=float, default=0.0, help="sleep before each batch")
    given = list(sys.argv[1:] if argv is None else argv)
    split = given.index("--") if "--" in given else len(given)
    args = parser.parse_args(given[:split])
    command = given[split + 1 :] or ["run", "confirmer"]  # after "--": the optout command
    _patch_stats()
    if args.slow_confirmer:
        _slow_confirmer(args.slow_confirmer)
    threading.Thread(target=_watch, args=(args.out, args.every, args.trim_after), daemon=True).start()
    from services.cli.main import main as optout

    return optout(command)


if __name__ == "__main__":
    raise SystemExit(main())

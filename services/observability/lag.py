"""Consumer lag arithmetic and a Burrow-style evaluator (pure: no broker, no clock).

Burrow (linkedin/Burrow, "Consumer Lag Evaluation Rules") judges each partition of a
group over a sliding window of the group's last N offset commits, each stored with
its commit time and the lag at that moment; no fixed lag threshold is needed:

- no lag now                                       -> OK
- the committed offset went backwards and has not
  caught up with where it was (Burrow PR #716)       -> REWIND
- no commit for longer than the window spans, and
  not caught up with a recent end offset either     -> STOP  (now - last > last - first)
- lag zero at any commit of the window               -> OK
- every commit of the window has the same offset     -> STALL (committing, not advancing)
- offsets advance but the lag never decreases        -> WARN  (consumer too slow)
- otherwise                                          -> OK
checked in that order, as current Burrow does (STOP before the zero-lag rule: the
window may be old). A group's status is its worst partition's.

We read committed offsets through the offsets API, which does not give commit times,
so a *window* here is built from observations (see ``PartitionWindow.observe``): an
offset seen for the first time counts as a commit at the time it was seen. An unchanged
offset while a live member of the group owns the partition counts as a repeated commit
once ``repeat_after`` seconds passed since the last one (so a running consumer that does
not advance turns STALL, not STOP, and a slow batch is not flagged at once); while a
member owns the partition the STOP rule is not applied. When nobody owns it nothing is
committed, and a stopped consumer with lag turns STOP as soon as the time since its last
commit exceeds the window's span. Trend rules (STALL, WARN) need two commits or more.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from itertools import pairwise

DEFAULT_WINDOW = 10
DEFAULT_REPEAT_AFTER = 30.0  # seconds an owned, unmoving offset takes to count as a repeated commit
NO_OFFSET = -1001  # librdkafka's RD_KAFKA_OFFSET_INVALID: "nothing committed"


class Status(IntEnum):
    """Partition status, ordered by severity as in Burrow."""

    OK = 0
    WARN = 1
    ERR = 2
    STOP = 3
    STALL = 4
    REWIND = 5


def burrow_group_status(worst: Status) -> Status:
    """Burrow's group-level summary: OK, WARN or ERR (STOP, STALL and REWIND are errors)."""
    return Status.ERR if worst >= Status.ERR else worst


@dataclass(frozen=True)
class CommitSample:
    """One offset commit of a partition: the offset, the lag then, and when (unix seconds)."""

    offset: int
    lag: int
    timestamp: float


def message_lag(committed: int | None, end: int, start: int = 0) -> int:
    """Messages not yet consumed: end offset - committed offset (never negative).

    ``committed`` None (or librdkafka's -1001) means nothing committed: with
    ``auto.offset.reset=earliest`` everything from ``start`` (the low watermark) is lag.
    A committed offset below ``start`` (messages deleted by retention) counts from ``start``.
    """
    if end < 0:
        return 0
    position = start if committed is None or committed < 0 else max(committed, start)
    return max(0, end - position)


def lag_seconds(now_ms: int, oldest_unconsumed_ms: int | None, lag: int) -> float | None:
    """Age of the oldest unconsumed message in seconds: 0 when caught up, None when unknown."""
    if lag <= 0:
        return 0.0
    if oldest_unconsumed_ms is None or oldest_unconsumed_ms < 0:
        return None
    return max(0.0, (now_ms - oldest_unconsumed_ms) / 1000.0)


# --- Burrow rules -------------------------------------------------------------------------
def lag_ever_zero(window: Sequence[CommitSample]) -> bool:
    return any(s.lag == 0 for s in window)


def rewound(window: Sequence[CommitSample]) -> bool:
    return any(b.offset < a.offset for a, b in pairwise(window))


def rewound_unrecovered(window: Sequence[CommitSample]) -> bool:
    """An offset went backwards and the latest commit is still below where it was."""
    peak = -1
    dropped_from: int | None = None
    for a, b in pairwise(window):
        peak = max(peak, a.offset)
        if b.offset < a.offset:
            dropped_from = peak
    return dropped_from is not None and window[-1].offset < dropped_from


def recently_caught_up(window: Sequence[CommitSample], recent_ends: Sequence[int]) -> bool:
    """The last commit reached an end offset seen recently (Burrow's broker offset ring)."""
    return any(end <= window[-1].offset for end in recent_ends)


def stopped(window: Sequence[CommitSample], now: float) -> bool:
    first, last = window[0].timestamp, window[-1].timestamp
    return (now - last) > (last - first)


def stalled(window: Sequence[CommitSample]) -> bool:
    return len(window) >= 2 and all(s.offset == window[0].offset for s in window)


def lag_not_decreasing(window: Sequence[CommitSample]) -> bool:
    return len(window) >= 2 and all(b.lag >= a.lag for a, b in pairwise(window))


def evaluate_partition(
    window: Sequence[CommitSample],
    current_lag: int,
    now: float,
    owner_alive: bool = False,
    recent_ends: Sequence[int] = (),
) -> Status:
    """Burrow's partition status for ``window`` (oldest first) and the lag now.

    ``owner_alive``: a live group member owns the partition, so it has not stopped
    (the STOP rule is skipped; a live consumer that does not advance is STALL).
    ``recent_ends``: end offsets observed lately; reaching one delays STOP."""
    if not window or current_lag <= 0:
        return Status.OK
    if rewound_unrecovered(window):
        return Status.REWIND
    if not owner_alive and stopped(window, now) and not recently_caught_up(window, recent_ends):
        return Status.STOP
    if lag_ever_zero(window):
        return Status.OK
    if rewound(window):
        return Status.REWIND
    if stalled(window):
        return Status.STALL
    if lag_not_decreasing(window):
        return Status.WARN
    return Status.OK


def worst(statuses: Iterable[Status]) -> Status:
    return max(statuses, default=Status.OK)


# --- the window -----------------------------------------------------------------------------
class PartitionWindow:
    """The last ``size`` commits of one partition, built from periodic observations."""

    def __init__(self, size: int = DEFAULT_WINDOW, repeat_after: float = DEFAULT_REPEAT_AFTER) -> None:
        if size < 1:
            raise ValueError("window size must be at least 1")
        self.samples: deque[CommitSample] = deque(maxlen=size)
        self.repeat_after = repeat_after
        self.owned = False
        self.recent_ends: deque[int] = deque(maxlen=size)

    def observe(self, offset: int, lag: int, now: float, owned: bool, end: int | None = None) -> bool:
        """Record an observation; return True when it counted as a commit.

        A new offset is a commit. The same offset again is a repeated commit only while a
        live member owns the partition and ``repeat_after`` seconds passed since the last
        commit; without an owner nothing was committed since."""
        self.owned = owned
        if end is not None:
            self.recent_ends.append(end)
        last = self.samples[-1] if self.samples else None
        if last is None or offset != last.offset or (owned and now - last.timestamp >= self.repeat_after):
            self.samples.append(CommitSample(offset, lag, now))
            return True
        return False

    def evaluate(self, current_lag: int, now: float) -> Status:
        return evaluate_partition(
            list(self.samples), current_lag, now, owner_alive=self.owned, recent_ends=list(self.recent_ends)
        )

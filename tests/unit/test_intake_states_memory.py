"""What intake's state encoding keeps between publications (README, "Memory through a
backlog"): nothing per request beyond one publication, and a bounded cache of instants."""

from __future__ import annotations

import gc
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta

from services.common.avro import default_codec
from services.intake import states


def _rows(count: int, start: int) -> list[list[states.StateRow]]:
    base = datetime(2026, 12, 1, tzinfo=UTC)
    out = []
    for i in range(start, start + count):
        since = base - timedelta(milliseconds=i)  # every request its own instant
        request_id = str(uuid.UUID(int=i))
        subject = f"email_sha256:{i:064x}"
        out.append(
            [
                (subject, "EMAIL_MARKETING", True, since, request_id, "OPT_OUT"),
                (subject, "THIRD_PARTY_SHARING", True, since, request_id, "OPT_OUT"),
            ]
        )
    return out


def _publish(rows: list[list[states.StateRow]]) -> None:
    encode = states.state_encoder(default_codec())  # one per publication, as publish_current_states
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    for subject_rows in rows:
        assert encode(subject_rows[0][0], subject_rows, now) is not None


def test_publications_of_new_requests_leave_nothing_behind_but_the_bounded_instants() -> None:
    tracemalloc.start()  # before the warm-up: the instants cached then are traced too
    try:
        _publish(_rows(10_000, 0))  # the instant cache full (it churns, bounded, from here)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for n in range(1, 4):  # 30,000 more requests, a publication of 10,000 at a time
            _publish(_rows(10_000, n * 10_000))
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 1024 * 1024, f"{grown:,} bytes kept after 30,000 requests"
    info = states._instant.cache_info()
    assert info.currsize == info.maxsize <= 8192
    big = [
        name
        for name, value in vars(states).items()
        if isinstance(value, dict | list | set) and len(value) > 1000
    ]
    assert big == []

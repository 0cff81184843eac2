"""The pure part of ``optout replay``: commands per subject, ids, throttle, ETA."""

from __future__ import annotations

from datetime import UTC, datetime

from services.common.contract import Destination, Identifier, Scope
from services.replay.plan import (
    Suppressed,
    TokenBucket,
    eta_seconds,
    is_replay,
    replay_command,
    replay_command_id,
    sealed_kind,
    usable,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SINCE = datetime(2026, 11, 1, tzinfo=UTC)
H = "a" * 64


def dest(identifiers: set[Identifier], requires: set[Identifier], name: str = "d") -> Destination:
    return Destination(name, frozenset({Scope.EMAIL_MARKETING}), frozenset(identifiers), frozenset(requires))


RAW = dest({Identifier.EMAIL, Identifier.CUSTOMER_ID}, {Identifier.EMAIL})
HASHES = dest(
    {Identifier.EMAIL_SHA256, Identifier.PHONE_SHA256}, {Identifier.EMAIL_SHA256, Identifier.PHONE_SHA256}
)
ROW = Suppressed(f"email_sha256:{H}", ("EMAIL_MARKETING",), SINCE)


def test_a_raw_destination_gets_the_decrypted_email_and_no_hash() -> None:
    assert sealed_kind(ROW.subject, RAW) == "email"
    record = replay_command("r1", RAW, ROW, "ada@example.com", NOW)
    assert record is not None
    assert (record["email"], record["email_sha256"], record["customer_id"]) == ("ada@example.com", None, None)
    assert record["request_id"] == "replay:r1" and is_replay(record["request_id"])
    assert record["action"] == "OPT_OUT" and record["scopes"] == ["EMAIL_MARKETING"]
    assert record["requested_at"] == int(SINCE.timestamp() * 1000)


def test_a_hashes_only_destination_gets_the_hash_and_needs_no_decryption() -> None:
    assert sealed_kind(ROW.subject, HASHES) is None
    record = replay_command("r1", HASHES, ROW, None, NOW)
    assert record is not None and record["email_sha256"] == H and record["email"] is None


def test_subjects_the_destination_cannot_use_are_skipped() -> None:
    assert replay_command("r1", RAW, ROW, None, NOW) is None  # raw value no longer listed
    device = Suppressed(f"device_sha256:{H}", ("EMAIL_MARKETING",), SINCE)
    assert replay_command("r1", RAW, device, None, NOW) is None and not usable(device.subject, RAW)
    customer = Suppressed("cust:42", ("EMAIL_MARKETING",), SINCE)
    assert replay_command("r1", RAW, customer, None, NOW) is None  # email required
    assert usable(ROW.subject, RAW) and usable(ROW.subject, HASHES)


def test_command_ids_are_deterministic_per_replay_destination_and_subject() -> None:
    one = replay_command_id("r1", "d", ROW.subject)
    assert one == replay_command_id("r1", "d", ROW.subject)
    assert (
        len({one, replay_command_id("r2", "d", ROW.subject), replay_command_id("r1", "e", ROW.subject)}) == 3
    )


def test_the_token_bucket_holds_the_rate_after_a_one_second_burst() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(10, clock=lambda: now[0], sleep=sleep)
    for _ in range(30):
        bucket.take()
    assert abs(now[0] - 2.0) < 1e-9  # 10 at once, then 20 at 10/s


def test_eta() -> None:
    assert eta_seconds(0, 10, 1.0) is None
    assert eta_seconds(25, 100, 5.0) == 15.0

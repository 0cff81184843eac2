"""Reconciliation's pure logic: comparison by hash of the normalized identifier, deterministic
re-issue ids, the commands it builds, and the confirmer's namespace check."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from services.common.contract import Destination, Identifier, Scope, is_reconcile_request
from services.common.errors import ConfigurationError
from services.common.settings import Settings
from services.connectors.email_provider import EmailProviderConnector
from services.domain.identity import sha256_hex
from services.reconcile.drift import RANK_STEP, Expected, compare, hash_of, reissue_ids
from services.reconcile.run import command_records, read_back_of
from services.standins.email_provider_api import EmailProviderStandin
from tests.support.commands import make_command
from tests.support.standin_transport import Routed

SINCE = datetime(2026, 11, 1, tzinfo=UTC)


def expected(*values: str) -> dict[str, Expected]:
    return {sha256_hex(v): Expected(sha256_hex(v), ("EMAIL_MARKETING",), SINCE) for v in values}


def test_provider_values_are_normalized_before_hashing() -> None:
    drift = compare(
        expected("ada@example.com", "bob@example.com", "cy@example.com"),
        [" Ada@Example.COM ", "bob@example.com", "stranger@example.com", "not an address"],
        Identifier.EMAIL,
    )
    assert [m.sha256 for m in drift.missing] == [sha256_hex("cy@example.com")]
    assert drift.unknown == [sha256_hex("stranger@example.com")]
    assert (drift.expected, drift.present, drift.unreadable) == (3, 3, 1)


def test_phones_are_compared_in_e164() -> None:
    assert hash_of(Identifier.PHONE, "+1 (415) 555-0100") == sha256_hex("+14155550100")
    assert hash_of(Identifier.PHONE, "nope") is None


def test_nothing_missing_nothing_unknown() -> None:
    drift = compare(expected("a@example.com"), ["A@example.com"], Identifier.EMAIL)
    assert drift.missing == [] and drift.unknown == []


def test_reissue_ids_are_deterministic_per_generation() -> None:
    first = reissue_ids("mailgun", "ab" * 32, 0)
    assert first == reissue_ids("mailgun", "ab" * 32, 0)
    assert first != reissue_ids("mailgun", "ab" * 32, 1) != reissue_ids("sendgrid", "ab" * 32, 0)
    assert first[0] == f"reconcile:mailgun:{'ab' * 32}:0" and is_reconcile_request(first[0])
    assert not is_reconcile_request("3f1c2d4e-0000-4000-8000-000000000000")


def test_commands_carry_only_what_the_destination_takes_and_rank_after_the_request() -> None:
    dest = Destination(
        "mailgun", frozenset({Scope.EMAIL_MARKETING}), frozenset({Identifier.EMAIL}), frozenset(), "mailgun"
    )
    wanted = expected("ada@example.com", "lost@example.com")
    missing = list(wanted.values())
    now = datetime(2026, 12, 1, tzinfo=UTC)
    records = command_records(
        dest, Identifier.EMAIL, missing, {sha256_hex("ada@example.com"): "ada@example.com"}, {}, now
    )
    assert len(records) == 1  # no value for the second: not re-issued (counted as unsendable)
    (record,) = records
    assert record["email"] == "ada@example.com" and record["email_sha256"] == sha256_hex("ada@example.com")
    assert record["phone"] is None and record["customer_id"] is None
    assert record["scopes"] == ["EMAIL_MARKETING"] and record["action"] == "OPT_OUT"
    assert record["requested_at"] == int((SINCE + RANK_STEP).timestamp() * 1000)
    assert record["request_id"].startswith("reconcile:mailgun:")


def test_the_legacy_email_provider_lists_its_suppressions() -> None:
    standin = EmailProviderStandin(token="tok")
    routed = Routed(standin.handle)
    connector = EmailProviderConnector("https://esp.test", SecretStr("tok"), routed.client())
    connector.apply([make_command(SINCE, "email_provider", email=f"e{i}@example.com") for i in range(3)])

    assert sorted(connector.list_suppressed()) == [f"e{i}@example.com" for i in range(3)]
    assert (routed.requests[-1].method, routed.requests[-1].url.path) == (
        "GET",
        "/v3/asm/suppressions/global",
    )


def test_webhook_partners_have_no_list_to_read_and_are_refused_in_one_line() -> None:
    dest = Destination(
        "partners",
        frozenset({Scope.THIRD_PARTY_SHARING}),
        frozenset({Identifier.EMAIL_SHA256}),
        frozenset(),
        "webhook_partners",
    )
    with pytest.raises(
        ConfigurationError,
        match=r"destination .partners' \(webhook_partners\): reconciliation is not supported",
    ):
        read_back_of(Settings(), dest)

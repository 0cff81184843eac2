"""The connector kit and the three connectors' pure logic (issue: connector kit).

No broker, no database. The connectors' HTTP is exercised against the stand-ins' own
request handlers through ``httpx.MockTransport`` (the integration tests use sockets).
"""

from __future__ import annotations

import csv
import io
import random
import unicodedata
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from services.common.avro import default_codec
from services.common.clock import ManualClock, to_millis
from services.common.contract import AckStatus
from services.common.errors import PoisonMessage, RetriableError
from services.common.settings import PartnerEndpoint, Settings
from services.connectors import mail_house as mh
from services.connectors.dedupe import StoredOutcome, clip_detail, first_of_each
from services.connectors.email_provider import EmailProviderConnector, rejected_addresses, success_results
from services.connectors.http import (
    Verdict,
    classify_status,
    clean_reason,
    error_reason,
    parse_retry_after,
    post_json,
)
from services.connectors.kit import (
    Command,
    Connector,
    CredentialsRefused,
    IncompleteBatch,
    Outcome,
    ack_record,
    apply_once,
    decode_command,
    stored_outcomes,
)
from services.connectors.registry import KINDS, build_connector, connector_runner
from services.connectors.third_party_sharing import ThirdPartySharingConnector, combine, partner_record
from services.domain.identity import sha256_hex
from services.standins.email_provider_api import EmailProviderStandin, FixedWindowLimiter
from services.standins.partners_api import PartnersStandin, looks_raw, validate_opt_outs
from services.standins.web import App, Request
from tests.support.commands import make_command

NOW = datetime(2025, 3, 14, 9, 26, 53, tzinfo=UTC)
ADDRESS = {
    "name": "Ada  Lovelace",
    "lines": ["12 St James's Sq", "Flat 2", "Wing B", "Floor 3"],
    "city": "London",
    "region": None,
    "postal_code": "SW1Y 4JH",
    "country": "GB",
}


def cmd(destination: str = "email_provider", **fields: object) -> Command:
    return make_command(NOW, destination, **fields)


def transport(app: App) -> httpx.MockTransport:
    """Route httpx requests to a stand-in's handler function."""

    def handler(request: httpx.Request) -> httpx.Response:
        answer = app(
            Request(
                request.method,
                request.url.path,
                {k.lower(): v for k, v in request.headers.items()},
                request.content,
            )
        )
        return httpx.Response(answer.status, json=answer.body, headers=dict(answer.headers))

    return httpx.MockTransport(handler)


# --- dedupe -----------------------------------------------------------------------------------
def test_first_of_each_keeps_the_first_occurrence_in_order() -> None:
    a, b = cmd(), cmd()
    again = cmd(command_id=a.command_id, request_id=a.request_id)
    assert first_of_each([a, b, again, b]) == [a, b]
    assert first_of_each([]) == []


def test_stored_outcomes_match_pending_commands_and_ignore_strays() -> None:
    a, b = cmd(), cmd()
    returned = [
        Outcome.applied(a.command_id),
        Outcome.rejected("not-pending", "x"),
        Outcome.rejected(a.command_id, "second answer for a"),
    ]
    matched, ignored = stored_outcomes([a, b], returned, NOW)
    assert set(matched) == {a.command_id}
    assert matched[a.command_id] == StoredOutcome(a.command_id, a.request_id, AckStatus.APPLIED, None, NOW)
    assert ignored == ["not-pending", a.command_id]


def test_clip_detail_bounds_and_strips_nul() -> None:
    assert clip_detail(None) is None
    clipped = clip_detail("a\x00b" * 400)
    assert clipped is not None and len(clipped) == 500 and "\x00" not in clipped


# --- one apply() call with an in-memory fake connector ----------------------------------------
class ScriptedConnector(Connector):
    """Fails per a script, then applies; records every call."""

    destination = "email_provider"

    def __init__(self, script: Sequence[BaseException | None]) -> None:
        self.script = list(script)
        self.calls: list[list[str]] = []

    def apply(self, commands: Sequence[Command]) -> list[Outcome]:
        self.calls.append([c.command_id for c in commands])
        step = self.script.pop(0) if self.script else None
        if step is not None:
            raise step
        return [Outcome.applied(c.command_id) for c in commands]


def test_apply_once_returns_every_outcome() -> None:
    a, b = cmd(), cmd()
    run = apply_once(ScriptedConnector([]), [a, b], ManualClock(NOW))
    assert run.error is None and set(run.outcomes) == {a.command_id, b.command_id}
    assert {o.status for o in run.outcomes.values()} == {AckStatus.APPLIED}


def test_apply_once_lets_a_transient_error_through_to_the_loop() -> None:
    with pytest.raises(RetriableError) as limited:
        apply_once(ScriptedConnector([RetriableError("429", retry_after=120.0)]), [cmd()], ManualClock(NOW))
    assert limited.value.retry_after == 120.0  # the loop waits it out, polling


@pytest.mark.expected_errors("connector returned outcomes for commands it was not given")
def test_commands_without_an_outcome_make_a_retriable_error() -> None:
    a, b = cmd(), cmd()

    class HalfConnector(ScriptedConnector):
        def apply(self, commands: Sequence[Command]) -> list[Outcome]:
            self.calls.append([c.command_id for c in commands])
            return [Outcome.applied(commands[0].command_id), Outcome.applied("stray")]

    run = apply_once(HalfConnector([]), [a, b], ManualClock(NOW))
    assert set(run.outcomes) == {a.command_id}
    assert isinstance(run.error, RetriableError) and "1 commands" in str(run.error)


def test_incomplete_batch_keeps_its_progress_with_its_error() -> None:
    a, b = cmd(), cmd()

    class Partial(ScriptedConnector):
        def apply(self, commands: Sequence[Command]) -> list[Outcome]:
            done = [Outcome.applied(c.command_id) for c in commands if c.command_id == a.command_id]
            raise IncompleteBatch(done, RetriableError("second chunk failed", retry_after=1.0))

    run = apply_once(Partial([]), [a, b], ManualClock(NOW))
    assert set(run.outcomes) == {a.command_id}  # kept, so it is recorded and not re-applied
    assert isinstance(run.error, IncompleteBatch) and run.error.retry_after == 1.0


def test_a_connector_bug_is_not_retried() -> None:
    fake = ScriptedConnector([KeyError("bug")])
    with pytest.raises(KeyError):
        apply_once(fake, [cmd()], ManualClock(NOW))
    assert len(fake.calls) == 1


# --- decoding and acks ------------------------------------------------------------------------
def test_decode_command_checks_type_and_destination() -> None:
    codec = default_codec()
    command = cmd("mail_house", postal_address=ADDRESS)
    record = {
        **command.__dict__,
        "scopes": list(command.scopes),
        "issued_at": to_millis(command.issued_at),
        "deadline": to_millis(command.deadline),
        "action": command.action.value,
        "requested_at": 0,
    }
    payload = codec.encode("SuppressionCommand", record)
    decoded = decode_command(codec, payload, "mail_house")
    assert decoded.command_id == command.command_id and decoded.issued_at == command.issued_at
    with pytest.raises(PoisonMessage) as wrong_dest:
        decode_command(codec, payload, "email_provider")
    assert wrong_dest.value.reason == "wrong_destination"
    ack = codec.encode(
        "SuppressionAck",
        {"command_id": "c", "request_id": "r", "destination": "d", "status": "APPLIED", "acked_at": 0},
    )
    with pytest.raises(PoisonMessage) as wrong_type:
        decode_command(codec, ack, "mail_house")
    assert wrong_type.value.reason == "wrong_message_type"
    with pytest.raises(PoisonMessage):
        decode_command(codec, b"not avro at all", "mail_house")


def test_ack_record_encodes_as_a_suppression_ack() -> None:
    stored = StoredOutcome("cid", "rid", AckStatus.REJECTED, "email provider: hard bounce", NOW)
    _, decoded = default_codec().decode(
        default_codec().encode("SuppressionAck", ack_record(stored, "email_provider"))
    )
    assert decoded == {
        "command_id": "cid",
        "request_id": "rid",
        "destination": "email_provider",
        "status": "REJECTED",
        "detail": "email provider: hard bounce",
        "acked_at": NOW,
    }


# --- HTTP helpers -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "verdict"),
    [
        (200, Verdict.OK),
        (201, Verdict.OK),
        (429, Verdict.TRANSIENT),
        (408, Verdict.TRANSIENT),
        (500, Verdict.TRANSIENT),
        (503, Verdict.TRANSIENT),
        (401, Verdict.CREDENTIALS),
        (403, Verdict.CREDENTIALS),
        (404, Verdict.CONFIGURATION),
        (400, Verdict.PERMANENT),
        (413, Verdict.PERMANENT),
        (422, Verdict.PERMANENT),
        (302, Verdict.TRANSIENT),
    ],
)
def test_classify_status(code: int, verdict: Verdict) -> None:
    assert classify_status(code) is verdict


def test_parse_retry_after() -> None:
    assert parse_retry_after("3", NOW) == 3.0
    assert parse_retry_after(" 1.5 ", NOW) == 1.5
    assert parse_retry_after("-4", NOW) == 0.0
    assert parse_retry_after("Fri, 14 Mar 2025 09:27:23 GMT", NOW) == 30.0
    assert parse_retry_after("Fri, 14 Mar 2025 09:00:00 GMT", NOW) == 0.0  # in the past
    assert parse_retry_after(None, NOW) is None
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after("nan", NOW) is None


def test_error_reason_and_clean_reason_carry_no_pii() -> None:
    response = httpx.Response(400, json={"errors": [{"message": "jane@example.com bounced"}]})
    assert error_reason(response) == "HTTP 400: [email] bounced"
    assert error_reason(httpx.Response(418, text="teapot\nline two")) == "HTTP 418: teapot line two"
    assert clean_reason("call +14155550123 now") == "call [phone] now"
    assert len(clean_reason("x" * 1000)) == 300


# --- email provider ---------------------------------------------------------------------------
def _esp(**standin_kwargs: Any) -> tuple[EmailProviderConnector, EmailProviderStandin]:
    standin = EmailProviderStandin(token="tok", **standin_kwargs)
    client = httpx.Client(transport=transport(standin.handle), base_url="http://esp")
    return EmailProviderConnector("http://esp", SecretStr("tok"), client, ManualClock(NOW)), standin


def test_email_provider_maps_added_already_and_rejected() -> None:
    connector, standin = _esp(rejected={"bounced@example.com": "hard bounce on 2025-01-02"})
    first = cmd(email="a@example.com")
    applied = {o.command_id: o for o in connector.apply([first])}
    assert applied[first.command_id].status is AckStatus.APPLIED
    again = cmd(email="a@example.com")
    bad = cmd(email="bounced@example.com")
    fresh = cmd(email="b@example.com")
    no_email = cmd()
    out = {o.command_id: o for o in connector.apply([again, bad, fresh, no_email])}
    assert out[again.command_id].status is AckStatus.ALREADY_SUPPRESSED
    assert out[bad.command_id] == Outcome.rejected(
        bad.command_id, "email provider: hard bounce on 2025-01-02"
    )
    assert out[fresh.command_id].status is AckStatus.APPLIED  # re-sent after the 400
    assert out[no_email.command_id].status is AckStatus.REJECTED
    assert set(standin.suppressed) == {"a@example.com", "b@example.com"}
    assert standin.answers == {201: 2, 400: 1}


def test_email_provider_transient_answers_raise_with_retry_after() -> None:
    connector, _ = _esp(rate_limit_per_second=1, retry_after_seconds=4)
    connector.apply([cmd(email="x@example.com")])
    with pytest.raises(RetriableError) as limited:
        connector.apply([cmd(email="y@example.com")])
    assert limited.value.retry_after is not None and limited.value.retry_after >= 4
    failing, _ = _esp(failure_rate=1.0)
    with pytest.raises(RetriableError) as unavailable:
        failing.apply([cmd(email="z@example.com")])
    assert unavailable.value.retry_after == 1.0


def test_email_provider_wrong_token_is_credentials_refused_not_rejected() -> None:
    standin = EmailProviderStandin(token="right")
    client = httpx.Client(transport=transport(standin.handle))
    connector = EmailProviderConnector(
        "http://esp", SecretStr("wrong"), client, ManualClock(NOW), credentials_check_seconds=11.0
    )
    with pytest.raises(IncompleteBatch) as raised:
        connector.apply([cmd(email="a@example.com")])
    assert isinstance(raised.value.cause, CredentialsRefused)
    assert raised.value.retry_after == 11.0 and raised.value.outcomes == []
    assert standin.suppressed == {}


@pytest.mark.parametrize("status", [401, 403])
def test_every_http_kind_turns_401_and_403_into_credentials_refused(status: int) -> None:
    client = httpx.Client(transport=httpx.MockTransport(lambda _r: httpx.Response(status, json={})))
    with pytest.raises(CredentialsRefused) as raised:
        post_json(client, "http://x/y", SecretStr("t"), {}, NOW, "partner p", credentials_check_seconds=3.0)
    assert raised.value.retry_after == 3.0


def test_email_provider_splits_batches_at_1000() -> None:
    connector, standin = _esp()
    commands = [cmd(email=f"user{i}@example.com") for i in range(1500)]
    outcomes = connector.apply(commands)
    assert len(outcomes) == 1500 and {o.status for o in outcomes} == {AckStatus.APPLIED}
    assert standin.answers == {201: 2} and len(standin.suppressed) == 1500


def test_email_provider_incomplete_batch_keeps_the_first_chunk() -> None:
    connector, _ = _esp(rate_limit_per_second=1)
    commands = [cmd(email=f"user{i}@example.com") for i in range(1001)]
    with pytest.raises(IncompleteBatch) as partial:
        connector.apply(commands)
    assert len(partial.value.outcomes) == 1000 and partial.value.retry_after is not None


def test_success_and_rejection_parsing() -> None:
    assert success_results(["a@x.io", "b@x.io"], {"already_suppressed": ["B@x.io"]}) == {
        "a@x.io": (AckStatus.APPLIED, None),
        "b@x.io": (AckStatus.ALREADY_SUPPRESSED, None),
    }
    assert rejected_addresses(
        ["a@x.io"], {"errors": [{"email": "A@X.IO", "message": "no"}, {"email": "other@x.io"}, "junk"]}
    ) == {"a@x.io": "email provider: no"}
    assert rejected_addresses(["a@x.io"], None) == {}


# --- mail house -------------------------------------------------------------------------------
def test_csv_row_normalizes_and_folds_address_lines() -> None:
    command = cmd("mail_house", postal_address=ADDRESS, customer_id="C-42")
    row = mh.csv_row(command, ADDRESS, date(2025, 3, 14))
    assert dict(zip(mh.COLUMNS, row, strict=True)) == {
        "request_id": command.request_id,
        "command_id": command.command_id,
        "name": "ADA LOVELACE",
        "address_line_1": "12 ST JAMES'S SQ",
        "address_line_2": "FLAT 2",
        "address_line_3": "WING B, FLOOR 3",
        "city": "LONDON",
        "region": "",
        "postal_code": "SW1Y 4JH",
        "country": "GB",
        "suppressed_on": "2025-03-14",
        # The mail house suppresses the address only where it is on file for this customer.
        "customer_id": "C-42",
        "action": "OPT_OUT",
    }
    assert mh.csv_row(cmd("mail_house"), ADDRESS, date(2025, 3, 14))[-2] == ""
    opt_in = cmd("mail_house", postal_address=ADDRESS, action="OPT_IN")
    assert mh.csv_row(opt_in, ADDRESS, date(2025, 3, 14))[-1] == "OPT_IN"


def test_a_day_file_written_before_the_action_column_is_upgraded() -> None:
    old_header = ",".join(mh.COLUMNS_BEFORE_ACTION).encode() + b"\r\n"
    old_row = mh.render_rows([mh.csv_row(cmd("mail_house"), ADDRESS, date(2025, 3, 14))[:-1]], False)
    new = cmd("mail_house", postal_address=ADDRESS, action="OPT_IN")
    plan = mh.plan_file(old_header + old_row, [new], date(2025, 3, 14))
    assert plan.content is not None
    lines = plan.content.decode().splitlines()
    assert lines[0].endswith(",customer_id,action")
    assert lines[1].endswith(",OPT_OUT") and lines[2].endswith(",OPT_IN")
    assert len(mh.command_ids_in(plan.content)) == 2


def test_csv_cells_cannot_be_formulas_or_break_lines() -> None:
    address = {**ADDRESS, "name": '=HYPERLINK("http://x")', "lines": ["1 Main\nSt", "\x07"]}
    row = mh.csv_row(cmd("mail_house"), address, date(2025, 1, 1))
    assert row[2].startswith("'=")
    assert row[3] == "1 MAIN ST" and row[4] == ""
    assert mh.normalize_field(" a\u0301b\t c ") == "ÁB C"


def _normalize_field_reference(value: str | None) -> str:
    """normalize_field before its ASCII fast path (the benchmark's CSV cost, issue #11)."""
    if not value:
        return ""
    text = unicodedata.normalize("NFC", value)
    text = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in text)
    return " ".join(text.split()).upper()


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.text(alphabet=st.characters(max_codepoint=127))))
def test_normalize_field_fast_path_agrees_with_the_full_normalization(value: str) -> None:
    assert mh.normalize_field(value) == _normalize_field_reference(value)


def test_plan_file_adds_only_new_command_ids() -> None:
    day = date(2025, 3, 14)
    a, b = cmd("mail_house", postal_address=ADDRESS), cmd("mail_house", postal_address=ADDRESS)
    first = mh.plan_file(b"", [a], day)
    assert first.content is not None and first.rows_added == 1
    second = mh.plan_file(first.content, [a, b, cmd("mail_house")], day)
    assert second.rows_added == 1 and second.content is not None
    rows = list(csv.DictReader(io.StringIO(second.content.decode())))
    assert [r["command_id"] for r in rows] == [a.command_id, b.command_id]
    assert [o.status for o in second.outcomes] == [AckStatus.APPLIED, AckStatus.APPLIED, AckStatus.REJECTED]
    assert mh.plan_file(second.content, [a, b], day).content is None


def test_mail_house_writes_atomically_and_never_duplicates(tmp_path: Path) -> None:
    clock = ManualClock(NOW)
    connector = mh.MailHouseConnector(tmp_path, clock)
    leftover = tmp_path / ".suppressions-2025-03-13.csv.dead.tmp"
    leftover.write_text("half a row")
    commands = [cmd("mail_house", postal_address=ADDRESS) for _ in range(3)]
    connector.apply(commands[:2])
    connector.apply(commands)  # a re-applied batch
    path = tmp_path / "suppressions-2025-03-14.csv"
    rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    assert sorted(r["command_id"] for r in rows) == sorted(c.command_id for c in commands)
    assert not leftover.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".suppressions.lock", path.name]
    clock.advance(timedelta(days=1))
    connector.apply(commands[:1])
    assert (tmp_path / "suppressions-2025-03-15.csv").exists()


# --- third-party sharing ----------------------------------------------------------------------
def _hashed(**fields: object) -> Command:
    return cmd("third_party_sharing", **fields)


def test_partner_record_holds_only_hashes() -> None:
    email_hash = sha256_hex("jane@example.com")
    command = _hashed(
        customer_id="C-42",
        email_sha256=email_hash,
        phone_sha256="not-a-hash",
        email="jane@example.com",
        phone="+14155550123",
    )
    record = partner_record(command)
    assert record == {
        "reference": command.command_id,
        "email_sha256": email_hash,
        "customer_id_sha256": sha256_hex("C-42"),
    }
    assert partner_record(_hashed(email="jane@example.com")) is None


def test_combine_requires_every_partner() -> None:
    out = combine(["a", "b"], {"b": ["p1: no", "p2: nope"]})
    assert out == [Outcome.applied("a"), Outcome.rejected("b", "p1: no; p2: nope")]


def test_third_party_connector_reaches_every_partner_with_hashes_only() -> None:
    standin = PartnersStandin({"p1": "t1", "p2": "t2"})
    partners = [
        PartnerEndpoint(name=n, url=f"http://partners/partners/{n}", token=SecretStr(t))
        for n, t in (("p1", "t1"), ("p2", "t2"))
    ]
    connector = ThirdPartySharingConnector(
        partners, httpx.Client(transport=transport(standin.handle)), ManualClock(NOW)
    )
    good = _hashed(email_sha256=sha256_hex("a@example.com"), customer_id="C-1")
    empty = _hashed()
    out = {o.command_id: o for o in connector.apply([good, empty])}
    assert out[good.command_id].status is AckStatus.APPLIED
    assert out[empty.command_id].status is AckStatus.REJECTED
    for partner in standin.partners.values():
        assert set(partner.opt_outs) == {good.command_id}
        assert all("@" not in body and "C-1" not in body for body in partner.raw_bodies)


def test_a_partner_refusal_rejects_with_its_name() -> None:
    standin = PartnersStandin({"p1": "t1"})
    wrong = PartnerEndpoint(name="p1", url="http://partners/partners/p1", token=SecretStr("t1"))
    connector = ThirdPartySharingConnector([wrong], httpx.Client(transport=transport(standin.handle)))
    answer = standin.handle(
        Request(
            "POST",
            "/partners/p1/opt-outs",
            {"authorization": "Bearer t1"},
            b'{"opt_outs": [{"reference": "r", "email_sha256": "jane@x.io"}]}',
        )
    )
    assert answer.status == 400 and answer.body["reason"] == "raw_identifier"
    out = connector.apply([_hashed(phone_sha256=sha256_hex("+14155550123"))])
    assert out[0].status is AckStatus.APPLIED
    refusing = PartnersStandin({"p1": "t1"}, failure_rate=1.0)
    connector = ThirdPartySharingConnector([wrong], httpx.Client(transport=transport(refusing.handle)))
    with pytest.raises(RetriableError):
        connector.apply([_hashed(customer_id="C-9")])


def test_partner_validation() -> None:
    h = sha256_hex("x")
    assert validate_opt_outs({"opt_outs": [{"reference": "r", "email_sha256": h}]}) == (
        [{"reference": "r", "email_sha256": h}],
        None,
    )
    assert validate_opt_outs({"opt_outs": [{"reference": "r", "email": "a"}]})[1] == "unknown fields: email"
    assert validate_opt_outs({"opt_outs": [{"reference": "r", "email_sha256": h.upper()}]})[1]
    assert validate_opt_outs({"opt_outs": [{"email_sha256": h}]})[1]
    assert validate_opt_outs([])[1]
    assert looks_raw('{"x": "jane@example.com"}') and looks_raw('"+14155550123"')
    assert not looks_raw(f'{{"email_sha256": "{h}"}}')


# --- stand-in details and registry ------------------------------------------------------------
def test_fixed_window_limiter() -> None:
    now = [100.25]
    limiter = FixedWindowLimiter(2, lambda: now[0])
    assert limiter.admit() is None and limiter.admit() is None
    assert limiter.admit() == pytest.approx(0.75)
    now[0] = 101.0
    assert limiter.admit() is None
    assert FixedWindowLimiter(0).admit() is None


def test_email_standin_failure_rate_is_roughly_honoured() -> None:
    standin = EmailProviderStandin(token="t", failure_rate=0.3, rng=random.Random(7))
    for i in range(400):
        standin.handle(
            Request(
                "POST",
                "/v3/asm/suppressions/global",
                {"authorization": "Bearer t"},
                f'{{"recipient_emails": ["u{i}@example.com"]}}'.encode(),
            )
        )
    assert 0.2 < standin.answers[503] / 400 < 0.4
    assert standin.answers[503] + standin.answers[201] == 400


def test_registry_runs_the_destinations_of_the_default_file() -> None:
    from services.common.errors import ConfigurationError

    assert {"email_provider", "local_mail_house", "partners"} <= set(KINDS)
    cfg = Settings()
    with pytest.raises(ConfigurationError, match="known: email_provider, mail_house, third_party_sharing"):
        connector_runner("fax_machine", cfg)
    assert callable(connector_runner("mail_house", cfg))
    for name in cfg.destinations.names:
        connector = build_connector(cfg, name)
        assert connector.destination == name
        connector.close()


def test_a_partners_destination_with_raw_identifiers_is_refused() -> None:
    from dataclasses import replace

    from services.common.contract import Identifier
    from services.common.errors import ConfigurationError

    cfg = Settings()
    leaky = replace(
        cfg.destinations["third_party_sharing"],
        identifiers=frozenset({Identifier.EMAIL, Identifier.EMAIL_SHA256}),
    )
    with pytest.raises(
        ConfigurationError, match=r"'third_party_sharing' \(partners\) receives hashes only: remove email"
    ):
        KINDS["partners"]()(leaky, cfg)

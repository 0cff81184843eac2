"""The replay's own command writer (services/replay/encode.py) against the reference: the
same bytes as ``Codec.encode("SuppressionCommand", plan.replay_command(...))``, the same ids
as ``plan.replay_command_id``, for every destination kind and subject kind."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.avro import Codec, default_codec
from services.common.clock import to_millis
from services.common.contract import Action, Destination, Identifier, Scope
from services.common.records import PostalAddressRecord, SuppressionCommandRecord
from services.replay.encode import CommandEncoder, CommandIds, ReplayBuilder, write_long
from services.replay.plan import Suppressed, replay_command, replay_command_id, request_id_of

NOW = datetime(2026, 12, 1, 12, 0, 0, 123456, tzinfo=UTC)
H = "ab" * 32
ADDRESS: PostalAddressRecord = {
    "name": "Ada Lovelace",
    "lines": ["12 St James's Square"],
    "city": "London",
    "region": None,
    "postal_code": "SW1Y 4JH",
    "country": "GB",
}

texts = st.text(max_size=300)
optional_texts = st.none() | texts
scopes = st.lists(st.sampled_from([s.value for s in Scope]), max_size=5)
millis = st.integers(min_value=-(2**62), max_value=2**62)


@pytest.fixture(scope="module")
def codec() -> Codec:
    return default_codec()


@settings(max_examples=300, deadline=None)
@given(
    command_id=texts,
    request_id=texts,
    destination=texts,
    customer_id=optional_texts,
    email=optional_texts,
    phone=optional_texts,
    email_sha256=optional_texts,
    phone_sha256=optional_texts,
    scope_list=scopes,
    issued_at=millis,
    requested_at=millis,
)
def test_the_encoder_writes_the_codecs_bytes(
    command_id: str,
    request_id: str,
    destination: str,
    customer_id: str | None,
    email: str | None,
    phone: str | None,
    email_sha256: str | None,
    phone_sha256: str | None,
    scope_list: list[str],
    issued_at: int,
    requested_at: int,
) -> None:
    codec = default_codec()
    encoder = CommandEncoder(codec, request_id, destination, Action.OPT_OUT.value)
    encoder.at(issued_at)
    record = SuppressionCommandRecord(
        command_id=command_id,
        request_id=request_id,
        destination=destination,
        customer_id=customer_id,
        email=email,
        phone=phone,
        postal_address=None,
        email_sha256=email_sha256,
        phone_sha256=phone_sha256,
        scopes=scope_list,
        issued_at=issued_at,
        deadline=issued_at,
        action=Action.OPT_OUT.value,
        requested_at=requested_at,
        device_id=None,
    )
    fast = encoder.encode(
        command_id, customer_id, email, phone, email_sha256, phone_sha256, scope_list, requested_at
    )
    assert fast == codec.encode("SuppressionCommand", record)
    assert encoder.encode_record(record) == fast


def test_a_record_off_the_fixed_shape_goes_through_the_codec(codec: Codec) -> None:
    encoder = CommandEncoder(codec, "replay:r", "d", Action.OPT_OUT.value)
    encoder.at(5)
    record = SuppressionCommandRecord(
        command_id="c",
        request_id="replay:r",
        destination="d",
        customer_id=None,
        email=None,
        phone=None,
        postal_address=ADDRESS,
        email_sha256=None,
        phone_sha256=None,
        scopes=["POSTAL_MARKETING"],
        issued_at=5,
        deadline=5,
        action=Action.OPT_OUT.value,
        requested_at=1,
        device_id="dev",
    )
    assert encoder.encode_record(record) == codec.encode("SuppressionCommand", record)


@pytest.mark.parametrize("value", [0, 1, -1, 63, -64, 64, 2**31, -(2**63), 2**63 - 1])
def test_longs_are_zigzag_varints(value: int) -> None:
    n = (value << 1) ^ (value >> 63)
    assert int.from_bytes(write_long(value)[-1:], "little") < 0x80
    decoded, shift = 0, 0
    for byte in write_long(value):
        decoded |= (byte & 0x7F) << shift
        shift += 7
    assert decoded == n


def test_a_schema_with_unknown_fields_is_refused(tmp_path: pytest.TempPathFactory, codec: Codec) -> None:
    class Other(Codec):
        def __init__(self) -> None:
            pass

    other = Other()
    other._latest = {"SuppressionCommand": codec.latest("SuppressionAck")}  # fields it does not know
    with pytest.raises(ValueError, match="the replay encoder knows"):
        CommandEncoder(other, "r", "d", Action.OPT_OUT.value)


@given(subject=st.text(min_size=1, max_size=120))
def test_command_ids_match_the_reference(subject: str) -> None:
    assert CommandIds(request_id_of("r1"), "email_provider")(subject) == replay_command_id(
        "r1", "email_provider", subject
    )


ALL = frozenset(Identifier)
DESTINATIONS = [
    Destination(
        "raw_email",
        frozenset({Scope.EMAIL_MARKETING}),
        frozenset({Identifier.EMAIL}),
        frozenset({Identifier.EMAIL}),
    ),
    Destination(
        "hashes",
        frozenset({Scope.THIRD_PARTY_SHARING}),
        frozenset({Identifier.EMAIL_SHA256, Identifier.PHONE_SHA256}),
        frozenset({Identifier.EMAIL_SHA256, Identifier.PHONE_SHA256}),
    ),
    Destination(
        "everything",
        frozenset(Scope),
        ALL,
        frozenset({Identifier.CUSTOMER_ID, Identifier.EMAIL, Identifier.PHONE, Identifier.POSTAL_ADDRESS}),
    ),
    Destination(
        "customer",
        frozenset({Scope.EMAIL_MARKETING}),
        frozenset({Identifier.CUSTOMER_ID}),
        frozenset({Identifier.CUSTOMER_ID}),
    ),
    Destination(
        "sms",
        frozenset({Scope.SMS_MARKETING}),
        frozenset({Identifier.PHONE, Identifier.CUSTOMER_ID}),
        frozenset({Identifier.PHONE}),
    ),
    Destination(
        "mail_house",
        frozenset({Scope.POSTAL_MARKETING}),
        frozenset({Identifier.POSTAL_ADDRESS, Identifier.CUSTOMER_ID}),
        frozenset({Identifier.POSTAL_ADDRESS}),
    ),
]
SUBJECTS: list[tuple[str, str | PostalAddressRecord | None]] = [
    (f"email_sha256:{H}", "ada@example.com"),
    (f"email_sha256:{H}", None),
    (f"phone_sha256:{H}", "+447700900123"),
    (f"phone_sha256:{H}", None),
    ("cust:C-1:x", None),
    (f"postal:{H}", ADDRESS),
    (f"postal:{H}", None),
    (f"device_sha256:{H}", None),
]


@pytest.mark.parametrize("dest", DESTINATIONS, ids=lambda d: d.id)
@pytest.mark.parametrize(("subject", "raw"), SUBJECTS)
def test_the_builder_gives_what_the_reference_gives(
    codec: Codec, dest: Destination, subject: str, raw: str | PostalAddressRecord | None
) -> None:
    builder = ReplayBuilder(codec, "20261201T120000Z-x", dest)
    builder.at(NOW)
    since = NOW - timedelta(days=3, microseconds=7)
    for scope_list in (("EMAIL_MARKETING",), ("EMAIL_MARKETING", "THIRD_PARTY_SHARING")):
        record = replay_command("20261201T120000Z-x", dest, Suppressed(subject, scope_list, since), raw, NOW)
        built = builder.build(subject, scope_list, to_millis(since), raw)
        if record is None:
            assert built is None
        else:
            assert built == (record["command_id"], codec.encode("SuppressionCommand", record))

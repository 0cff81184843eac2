"""Which identifiers the suppression list keeps, how they are sealed, and the key settings."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from services.common.errors import ConfigurationError
from services.common.sealing import SealError, generate_key, kid_of
from services.common.settings import DEV_SUPPRESSION_KEY, DEV_SUPPRESSION_KEYS, Settings
from services.domain.identity import sha256_hex
from services.domain.validation import postal_key, validate_request
from services.suppression.entries import Entry, Kind, entries_of, open_value, seal, suppression_ring
from tests.support.pipeline import ADDRESS

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _request(**fields):
    record = {"event_id": "e-1", "scopes": ["ALL"], "source": "API", "requested_at": NOW, **fields}
    return validate_request(record, NOW, timedelta(minutes=5))


def test_entries_are_the_normalized_identifiers_keyed_by_the_command_hashes():
    request = _request(
        email=" Jane@Example.COM ", phone="(415) 555-0123", postal_address=ADDRESS, customer_id="c"
    )
    entries = entries_of(request)
    assert [e.kind for e in entries] == [Kind.EMAIL, Kind.PHONE, Kind.POSTAL]
    email, phone, postal = entries
    assert (email.value, email.sha256) == ("jane@example.com", request.email_sha256)
    assert (phone.value, phone.sha256) == ("+14155550123", request.phone_sha256)
    assert postal.sha256 == sha256_hex(postal_key(request.postal_address) or "")
    assert json.loads(postal.value) == request.postal_address


def test_a_customer_id_alone_is_not_listed():
    assert entries_of(_request(customer_id="c-1")) == []


def test_a_sealed_value_opens_only_in_its_own_row():
    ring = suppression_ring(Settings())
    entry = Entry(Kind.EMAIL, sha256_hex("jane@example.com"), "jane@example.com")
    sealed = seal(ring, entry)
    assert kid_of(sealed) == "dev" and "jane" not in sealed
    assert open_value(ring, Kind.EMAIL, entry.sha256, sealed) == "jane@example.com"
    for kind, digest in ((Kind.PHONE, entry.sha256), (Kind.EMAIL, sha256_hex("john@example.com"))):
        with pytest.raises(SealError) as err:
            open_value(ring, kind, digest, sealed)
        assert err.value.reason == "forged"


def test_the_dev_key_is_the_default_and_refused_in_production():
    default = Settings()
    assert default.suppression_keys.get_secret_value() == DEV_SUPPRESSION_KEYS
    ring = suppression_ring(default)
    assert ring.uses_dev_key and ring.current == "dev"
    assert DEV_SUPPRESSION_KEYS not in repr(default)  # a secret: never printed
    production = default.model_copy(update={"env": "production"})
    with pytest.raises(ConfigurationError, match="OPTOUT_SUPPRESSION_KEYS contains the dev-only key"):
        suppression_ring(production)
    real = generate_key()
    rotated = production.model_copy(
        update={
            "suppression_keys": Settings(suppression_keys=json.dumps({"2026a": real})).suppression_keys,
            "suppression_current_kid": "2026a",
        }
    )
    ring = suppression_ring(rotated)
    assert ring.kids == ["2026a"] and not ring.uses_dev_key
    assert len(DEV_SUPPRESSION_KEY) == 32


def test_bad_key_settings_name_the_setting():
    with pytest.raises(ConfigurationError, match="OPTOUT_SUPPRESSION_KEYS is not valid JSON"):
        suppression_ring(Settings(suppression_keys="{nope"))
    with pytest.raises(ConfigurationError, match="OPTOUT_SUPPRESSION_CURRENT_KID 'k9' is not in"):
        suppression_ring(Settings(suppression_current_kid="k9"))


def test_a_chunk_lists_each_identifier_once_in_key_order_merging_its_requests():
    from services.intake.store import ListedEntries

    ring = suppression_ring(Settings())
    first = _request(email="jane@example.com", phone="+14155550123", scopes=["EMAIL_MARKETING"])
    other = _request(event_id="e-2", email="john@example.com", scopes=["ALL"])
    again = _request(event_id="e-3", email="JANE@example.com", scopes=["THIRD_PARTY_SHARING"])
    listed = ListedEntries.of([first, other, again], ring)
    keys = list(zip(listed.kinds, listed.hashes, strict=True))
    assert keys == sorted(keys) and len(keys) == 3  # jane's email once, john's email, jane's phone
    jane = keys.index(("email", sha256_hex("jane@example.com")))
    assert listed.scopes[jane] == "EMAIL_MARKETING|THIRD_PARTY_SHARING"
    assert (listed.first[jane], listed.last[jane]) == ("e-1", "e-3")
    assert open_value(ring, Kind.EMAIL, keys[jane][1], listed.sealed[jane]) == "jane@example.com"
    # Each request points at the rows it names (1-based): written if that request is new.
    pairs = set(zip(listed.events, listed.rows, strict=True))
    assert {("e-1", jane + 1), ("e-3", jane + 1)} <= pairs and len(pairs) == 4


def test_intake_refuses_to_start_with_the_dev_key_in_production():
    from confluent_kafka import Producer

    from services.common.avro import default_codec
    from services.common.clock import ManualClock
    from services.intake.step import IntakeStep

    producer = Producer({"bootstrap.servers": "127.0.0.1:1"})
    with pytest.raises(ConfigurationError, match="OPTOUT_SUPPRESSION_KEYS contains the dev-only key"):
        IntakeStep(
            Settings().model_copy(update={"env": "production"}), producer, default_codec(), ManualClock(NOW)
        )


def test_nonces_drawn_at_once_are_distinct_and_open_their_entries():
    from services.suppression.entries import nonces

    drawn = nonces(1000)
    assert len(drawn) == 1000 and {len(n) for n in drawn} == {12} and len(set(drawn)) == 1000
    assert nonces(0) == []
    ring = suppression_ring(Settings())
    entry = Entry(Kind.EMAIL, "ab" * 32, "jane@example.com")
    sealed = seal(ring, entry, drawn[0])
    assert open_value(ring, Kind.EMAIL, entry.sha256, sealed) == "jane@example.com"

"""The subject key names the person without carrying a raw email or phone number."""

from __future__ import annotations

import pytest

from services.common.errors import PoisonMessage
from services.domain.identity import sha256_hex, subject_key


def test_customer_id_wins_and_stays_as_is() -> None:
    assert subject_key("C-42", "jane@example.com", "+14155550123", "x") == "cust:C-42"


def test_email_and_phone_are_hashed_with_a_kind_prefix() -> None:
    assert subject_key(None, "jane@example.com", "+14155550123", None) == (
        "email_sha256:" + sha256_hex("jane@example.com")
    )
    assert subject_key(None, None, "+14155550123", None) == "phone_sha256:" + sha256_hex("+14155550123")
    key = subject_key(None, "jane@example.com", None, None)
    assert "jane" not in key and "example" not in key


def test_postal_key_is_hashed_as_before() -> None:
    assert subject_key(None, None, None, "a|1 main st") == "postal:" + sha256_hex("a|1 main st")


def test_no_identifier_is_poison() -> None:
    with pytest.raises(PoisonMessage):
        subject_key(None, None, None, None)

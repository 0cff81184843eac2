"""``optout scrub``'s column and kind detection (services/suppression/scrub.py), pure."""

from __future__ import annotations

import hashlib

import pytest

from services.common.errors import ConfigurationError
from services.domain.subjects import IdentifierKind
from services.suppression.scrub import Report, choose_column, choose_kind

HEX = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(20)]


def test_column_by_flag_or_known_name() -> None:
    assert choose_column(["Name", "E-mail", "Email"], None) == 2
    assert choose_column(["name", "PHONE", "customer_id"], None) == 1
    assert choose_column(["name", "work_address"], "Work_Address") == 1
    with pytest.raises(ConfigurationError, match="no column 'mail'"):
        choose_column(["name", "email"], "mail")
    with pytest.raises(ConfigurationError, match="--column"):
        choose_column(["name", "city"], None)


def test_kind_from_name_and_values() -> None:
    assert choose_kind("email", ["a@b.co"], None) is IdentifierKind.EMAIL
    assert choose_kind("email", HEX, None) is IdentifierKind.EMAIL_SHA256
    assert choose_kind("email", [*HEX, "not a hash"], None) is IdentifierKind.EMAIL_SHA256  # 9 in 10
    assert choose_kind("email_sha256", ["garbage"], None) is IdentifierKind.EMAIL_SHA256  # by name
    assert choose_kind("Mobile", ["+1 202 555 0143"], None) is IdentifierKind.PHONE
    assert choose_kind("phone_hash", HEX, None) is IdentifierKind.PHONE_SHA256
    assert choose_kind("customer_id", ["c-1"], None) is IdentifierKind.CUSTOMER_ID
    assert choose_kind("anything", HEX, None) is IdentifierKind.EMAIL_SHA256
    assert choose_kind("anything", ["x"], "phone") is IdentifierKind.PHONE
    with pytest.raises(ConfigurationError, match="--kind"):
        choose_kind("whatever", ["x"], None)
    with pytest.raises(ConfigurationError, match="not one of"):
        choose_kind("email", ["x"], "fax")


def test_report_says_why() -> None:
    report = Report(rows=10, kept=7, removed=3, invalid=1, kind="email", column="Email", scope=None)
    report.by_scope.update(["EMAIL_MARKETING", "EMAIL_MARKETING", "SMS_MARKETING"])
    report.invalid_reasons["invalid_email"] += 1
    text = "\n".join(report.lines())
    assert "removed: 3 suppressed" in text and "suppressed for SMS_MARKETING: 1" in text
    assert "not an identifier (kept): 1 (invalid_email 1)" in text
    assert report.as_json()["removed_by_scope"] == {"EMAIL_MARKETING": 2, "SMS_MARKETING": 1}

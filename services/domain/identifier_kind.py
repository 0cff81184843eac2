"""The kinds of identifier a subject is asked by (services/domain/subjects.py).

Apart from ``subjects`` (which loads the Avro records and phonenumbers) so that the ``optout``
argument parser can list them without importing either (README, "Process start-up").
"""

from __future__ import annotations

from enum import StrEnum


class IdentifierKind(StrEnum):
    EMAIL = "email"
    EMAIL_SHA256 = "email_sha256"
    PHONE = "phone"
    PHONE_SHA256 = "phone_sha256"
    CUSTOMER_ID = "customer_id"


IDENTIFIER_KINDS = tuple(k.value for k in IdentifierKind)

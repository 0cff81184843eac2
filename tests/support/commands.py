"""SuppressionCommands for connector unit tests: every field of the record filled in,
nothing but what a test names set."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from services.common.clock import to_millis
from services.connectors.kit import Command


def make_command(now: datetime, destination: str = "email_provider", **fields: Any) -> Command:
    """A command issued at ``now`` for ``destination``, with ``fields`` (email=..., ...) set."""
    record: dict[str, Any] = {
        "command_id": str(uuid.uuid4()),
        "request_id": f"evt-{uuid.uuid4()}",
        "destination": destination,
        "customer_id": None,
        "email": None,
        "phone": None,
        "postal_address": None,
        "email_sha256": None,
        "phone_sha256": None,
        "scopes": ["ALL"],
        "issued_at": to_millis(now),
        "deadline": to_millis(now + timedelta(days=10)),
        "action": "OPT_OUT",
        "requested_at": 0,
        "device_id": None,
    }
    record.update(fields)
    return Command.from_record(record)

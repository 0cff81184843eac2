"""Requests that need attention past the retention period: the gauge and the overdue flag."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY

from services.cli.overdue import render_attention_past_retention
from services.cli.resolve import check_note
from services.common.errors import ConfigurationError
from services.confirmer.overdue import OverdueRequest
from services.observability import business

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
RETENTION = timedelta(days=90)


def test_attention_past_retention_gauge_is_exported() -> None:
    snapshot = business.BusinessSnapshot({"NEEDS_ATTENTION": 3, "RESOLVED": 2}, 0, None, None, {}, {}, 2)
    values = business.gauge_values(snapshot, NOW, ())
    assert values["attention_past_retention"] == 2
    assert values["requests"]["needs_attention"] == 3 and values["requests"]["resolved"] == 2
    business.export(snapshot, NOW, ())
    assert REGISTRY.get_sample_value("optout_requests_needing_attention_past_retention") == 2
    business.export(business.BusinessSnapshot({}, 0, None, None, {}, {}, 0), NOW, ())
    assert REGISTRY.get_sample_value("optout_requests_needing_attention_past_retention") == 0


def _request(state: str, received_days_ago: int) -> OverdueRequest:
    received = NOW - timedelta(days=received_days_ago)
    return OverdueRequest(
        f"evt-{state}-{received_days_ago}",
        state,
        None,
        "default",
        received,
        received + timedelta(days=15),
        None,
        ("email_provider:REJECTED",),
        received,
    )


def test_only_needs_attention_older_than_the_retention_period_is_flagged() -> None:
    assert _request("NEEDS_ATTENTION", 91).attention_past_retention(NOW, RETENTION)
    assert not _request("NEEDS_ATTENTION", 89).attention_past_retention(NOW, RETENTION)
    assert not _request("PENDING", 200).attention_past_retention(NOW, RETENTION)
    assert _request("NEEDS_ATTENTION", 91).as_json(NOW, RETENTION)["attention_past_retention"] is True
    assert _request("NEEDS_ATTENTION", 91).as_json(NOW)["attention_past_retention"] is False


def test_section_names_the_requests_and_how_to_resolve_them() -> None:
    text = render_attention_past_retention([_request("NEEDS_ATTENTION", 120)], NOW, 90)
    assert "1 request(s) need attention for longer than the retention period (90 days)" in text
    assert "optout resolve EVENT_ID --note TEXT" in text
    assert "evt-NEEDS_ATTENTION-120" in text and "email_provider:REJECTED" in text


@pytest.mark.parametrize(
    "bad", ["wrote to jane@example.com", "called +1 415 555 0123", "called (415) 555-0123", "  ", "x" * 501]
)
def test_a_resolution_note_holds_no_contact_details(bad: str) -> None:
    assert check_note("  ticket ESP-4711:\n bounce kept ") == "ticket ESP-4711: bounce kept"
    with pytest.raises(ConfigurationError):
        check_note(bad)

import json

import pytest
import structlog

from services.common.logging import configure_logging, redact_text


def test_redact_text_masks_emails_and_phones_but_not_ids_or_dates():
    text = "to jane.doe@example.com or +1 415 555 0123 at 2026-11-29 id 550e8400-e29b-41d4"
    out = redact_text(text)
    assert "jane.doe" not in out and "555 0123" not in out
    assert "2026-11-29" in out and "550e8400-e29b-41d4" in out


@pytest.fixture
def restore_logging():
    yield
    # Loggers cached during the test would keep writing to its (closed) captured stdout.
    structlog.reset_defaults()


def test_log_lines_never_carry_pii(capsys, restore_logging):
    configure_logging("debug", "json")
    log = structlog.get_logger("t")
    log.info(
        "hello",
        email="a@b.com",
        note="write to bob@example.org",
        key=b"email:a@b.com",
        nested={"phone": "+14155550123", "ok": 3},
        postal_address={"city": "Springfield"},
    )
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    blob = json.dumps(line)
    for secret in ("a@b.com", "bob@example.org", "4155550123", "Springfield"):
        assert secret not in blob
    assert line["nested"]["ok"] == 3

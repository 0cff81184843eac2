"""The SFTP mail house's upload log (``UploadLog``) against the real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from services.common.settings import Settings
from services.connectors import sftp_mail_house as sm
from tests.support.commands import make_command

pytestmark = pytest.mark.integration


def test_latest_for_names_the_newest_upload_of_each_command_of_this_destination_only(
    base_settings: dict[str, Any],
) -> None:
    """``UploadLog.latest_for`` (rewritten from ``command_ids && wanted`` to a hashed unnest:
    the old query compared every id pair of every stored upload, bench-connectors)."""
    cfg = Settings(**base_settings)
    now = datetime.now(UTC)
    a, b, c, d = (make_command(now, "mail_house") for _ in range(4))
    ours, theirs = sm.UploadLog(cfg.dsn(), "mail_house"), sm.UploadLog(cfg.dsn(), "other_house")
    try:
        ours.add(1, "f1.csv", "/in", sm.Batch(b"x", (a, b)), now)
        ours.add(2, "f2.csv", "/in", sm.Batch(b"y", (b, c)), now)
        theirs.add(1, "g1.csv", "/in", sm.Batch(b"z", (d,)), now)

        latest = ours.latest_for([a.command_id, b.command_id, c.command_id, d.command_id])

        assert {cid: u.name for cid, u in latest.items()} == {
            a.command_id: "f1.csv",
            b.command_id: "f2.csv",
            c.command_id: "f2.csv",
        }
        assert ours.latest_for([]) == {}
        assert theirs.latest_for([a.command_id, d.command_id])[d.command_id].name == "g1.csv"
    finally:
        ours.close()
        theirs.close()

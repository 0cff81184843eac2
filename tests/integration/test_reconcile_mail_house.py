"""``optout reconcile`` of an SFTP mail house against the real OpenSSH sshd of the stack, the
real broker and database (issue #13): the stand-in mail house imports our file and publishes
its export; 1% of the rows are deleted from the export; reconcile reads the newest export over
SFTP (host key pinned), finds exactly those (no false positive: an address whose key does not
survive the file's line folding still matches, an entry newer than the export is not
expected), re-issues them, and the real connector and stand-in restore them."""

from __future__ import annotations

import csv
import io
import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY

from services.common.errors import ConfigurationError
from services.common.settings import Settings
from services.connectors import mail_house_export as mx
from services.connectors import sftp_mail_house as sm
from services.connectors.kit import run_connector
from services.connectors.registry import build_connector
from services.domain.identity import sha256_hex
from services.domain.validation import normalize_postal_address, postal_key
from services.observability import reconcile as reconcile_gauges
from services.reconcile.run import reconcile
from services.standins.mail_house_sftp import MailHouseSftpStandin
from services.suppression.entries import Entry, Kind, seal, suppression_ring
from tests.integration.test_connectors import FAST_RETRIES
from tests.integration.test_sftp_mail_house import Inbox, fresh_inbox
from tests.support.commands import make_command
from tests.support.pipeline import isolated_settings, read_topic, running, wait_until

pytestmark = pytest.mark.integration

NAME = "mail_house_rc"
N = 300
DELETED = N // 100


def destinations_file(tmp_path: Path, box: Inbox) -> Path:
    path = tmp_path / "destinations.toml"
    path.write_text(
        f"""
[[destinations]]
name = "{NAME}"
kind = "sftp_mail_house"
scopes = ["POSTAL_MARKETING"]
identifiers = ["customer_id", "postal_address"]
requires_one_of = ["postal_address"]
[destinations.settings]
host = "{box.sftp.host}"
port = {box.sftp.port}
username = "{box.sftp.username}"
remote_dir = "{box.remote}"
known_hosts = "{box.sftp.known_hosts}"
receipt_poll_seconds = 0.1
[destinations.credentials]
private_key = {{ file = "{box.sftp.private_key}" }}
"""
    )
    return path


def addresses() -> list[dict[str, Any]]:
    found = []
    for i in range(N):
        lines = [f"{i} Main St"] if i % 50 else [f"{i} Main St", "Unit 4", "Block B", "Rear"]  # folded
        normalized = normalize_postal_address(
            {
                "name": f"Person {i}",
                "lines": lines,
                "city": "Springfield",
                "postal_code": f"{i:05d}",
                "country": "US",
            }
        )
        assert normalized is not None
        found.append(dict(normalized))
    return found


def digest(address: dict[str, Any]) -> str:
    return sha256_hex(postal_key(address) or "")


def load_postal_state(cfg: Settings, found: list[dict[str, Any]], newer: dict[str, Any]) -> None:
    ring = suppression_ring(cfg)
    since = datetime(2026, 11, 1, tzinfo=UTC)
    now = datetime.now(UTC)
    rows = [(a, since) for a in found] + [(newer, now + timedelta(hours=1))]  # after the export
    with psycopg.connect(cfg.dsn()) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO suppression_state (subject, scope, suppressed, since, event_id, action, updated_at)"
            " VALUES (%s, 'POSTAL_MARKETING', true, %s, %s, 'OPT_OUT', %s)",
            [(f"postal:{digest(a)}", at, f"ev-{i}", now) for i, (a, at) in enumerate(rows)],
        )
        cur.executemany(
            "INSERT INTO suppression_list (kind, sha256, sealed, scopes, first_request_id,"
            " last_request_id, created_at, updated_at) VALUES ('postal', %s, %s, %s, %s, %s, %s, %s)",
            [
                (
                    digest(a),
                    seal(ring, Entry(Kind.POSTAL, digest(a), json.dumps(a, separators=(",", ":")))),
                    ["POSTAL_MARKETING"],
                    f"ev-{i}",
                    f"ev-{i}",
                    now,
                    now,
                )
                for i, (a, _) in enumerate(rows)
            ],
        )


@pytest.fixture
def inbox(stack: Any) -> Inbox:
    return fresh_inbox(stack)


def export_keys(box: Inbox) -> list[str]:
    return mx.read_folder_export(box.local / mx.EXPORT_DIR, NAME).keys


def test_rows_deleted_from_the_mail_house_export_are_found_and_restored(
    base_settings: dict[str, Any],
    inbox: Inbox,
    tmp_path: Path,
) -> None:
    cfg = isolated_settings(
        base_settings, destinations_file=destinations_file(tmp_path, inbox), **FAST_RETRIES
    )
    found = addresses()
    newer = dict(
        normalize_postal_address(
            {"name": "New", "lines": ["9 Elm St"], "city": "X", "postal_code": "1", "country": "US"}
        )
        or {}
    )
    load_postal_state(cfg, found, newer)
    with pytest.raises(ConfigurationError, match="the mail house has published no export"):
        reconcile(cfg, NAME)  # over SFTP: no export/ folder yet
    # What the mail house holds: our earlier file, imported; then 1% lost from its list.
    first = sm.build_file(
        [make_command(datetime.now(UTC), NAME, postal_address=a) for a in found], datetime.now(UTC).date()
    )
    (inbox.local / "suppressions-00000001.csv").write_bytes(first.content)
    standin = MailHouseSftpStandin(inbox.local)
    assert standin.import_once() == ["suppressions-00000001.csv"]
    export = next((inbox.local / mx.EXPORT_DIR).glob("suppressions-*.csv"))
    lines = export.read_bytes().split(b"\r\n")
    deleted = found[7 :: N // DELETED][:DELETED]
    gone = {mx.key_of_address(a) for a in deleted}
    kept = [lines[0]] + [
        line for line in lines[1:-1] if mx.parse_export(lines[0] + b"\r\n" + line)[0] not in gone
    ]
    export.write_bytes(b"\r\n".join([*kept, b""]))
    assert len(export_keys(inbox)) == N - DELETED

    report = reconcile(cfg, NAME)
    assert report.source == export.name and report.newer_than_export == 1
    assert report.drift.expected == N and report.drift.unknown == []
    assert [m.sha256 for m in report.drift.missing] == sorted(digest(a) for a in deleted)
    assert report.reissued == DELETED and report.unsendable == 0
    commands = [r.decoded() for r in read_topic(cfg, cfg.suppress_topic(NAME), expect=DELETED)]
    assert sorted(c["postal_address"]["name"] for c in commands) == sorted(a["name"] for a in deleted)
    assert all(c["email"] is None and c["phone"] is None for c in commands)

    connector = build_connector(cfg, NAME)

    def connector_main(settings: Settings, stop: threading.Event) -> None:
        run_connector(settings, connector, stop)

    def importer(settings: Settings, stop: threading.Event) -> None:
        standin.run(stop)

    with running(connector_main, cfg, NAME), running(importer, cfg, "mail-house"):
        wait_until(lambda: gone <= set(export_keys(inbox)), timeout=60, message="the lost rows restored")
        acks = [r.decoded() for r in read_topic(cfg, cfg.acks_topic, expect=DELETED)]
    assert {a["status"] for a in acks} == {"APPLIED"}

    after = reconcile(cfg, NAME, repair=False)
    assert after.drift.missing == [] and after.drift.unknown == [] and after.drift.present == N
    with psycopg.connect(cfg.dsn()) as conn:
        assert reconcile_gauges.export(conn) == 1  # the exporter: the export's age is watched
    assert after.as_of is not None
    written = REGISTRY.get_sample_value("optout_reconcile_source_timestamp_seconds", {"destination": NAME})
    assert written == after.as_of.timestamp()


def test_a_local_mail_house_is_read_back_from_its_folders_export(
    base_settings: dict[str, Any], tmp_path: Path
) -> None:
    cfg = isolated_settings(base_settings, mail_house_dir=str(tmp_path))
    found = addresses()[:4]
    newer = dict(
        normalize_postal_address(
            {"name": "New", "lines": ["9 Elm St"], "city": "X", "postal_code": "1", "country": "US"}
        )
        or {}
    )
    load_postal_state(cfg, found, newer)
    batch = sm.build_file(
        [make_command(datetime.now(UTC), "mail_house", postal_address=a) for a in found[1:]],
        datetime.now(UTC).date(),
    )
    rows = list(csv.DictReader(io.StringIO(batch.content.decode())))
    (tmp_path / mx.EXPORT_DIR).mkdir()
    (tmp_path / mx.EXPORT_DIR / mx.export_name(datetime.now(UTC).date())).write_bytes(mx.render_export(rows))

    report = reconcile(cfg, "mail_house")
    assert [m.sha256 for m in report.drift.missing] == [digest(found[0])]
    assert report.drift.unknown == [] and report.newer_than_export == 1 and report.reissued == 1
    (command,) = [r.decoded() for r in read_topic(cfg, cfg.suppress_topic("mail_house"), expect=1)]
    assert command["postal_address"] == found[0]

"""Every real connector kind at once (issue #11, "Done when"): the shipped
``deploy/destinations.all-kinds.toml`` (SendGrid, Amazon SES through botocore, Mailgun, the
SFTP mail house acknowledged on receipts, two signed-webhook partners, the AWS End User
Messaging SMS opt-out list through botocore) on the real broker and
database, the services as processes (intake, confirmer, one connector per destination), the
stand-ins in this process (their state is read directly), the SES emulator (moto) and the
stack's OpenSSH sshd.

Refused credentials pause only the refused destination: a Mailgun key the stand-in does not
accept, and a known_hosts file pinning another SSH host key."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import random
import subprocess
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from services.common.destinations import DEFAULT_DESTINATIONS_FILE
from services.common.settings import Settings
from services.connectors.registry import build_connector
from services.connectors.sms_optout_list import SmsOptOutListConnector
from services.devstack.sshd_server import SftpInfo
from services.domain.planning import applicable_destinations, command_id
from services.publisher.publish import Prepared, RequestPublisher
from services.standins.mail_house_sftp import MailHouseSftpStandin
from services.standins.mailgun_api import MailgunStandin
from services.standins.sendgrid_api import SendGridStandin
from services.standins.ses_emulator import CONTACT_LIST, SesEmulator
from services.standins.sms_optout_api import SmsOptOutStandin
from services.standins.web import StandinServer
from services.standins.webhook_receiver import WebhookPartnersStandin
from tests.faults.environment import pipeline_env
from tests.faults.fleet import Fleet
from tests.support.logcapture import CAPTURE, json_log_errors
from tests.support.pipeline import free_port, isolated_settings, read_topic, wait_until

# Whole pipelines of processes are CPU-heavy: one at a time (pytest-xdist runs this group on
# one worker), while the other workers run the lighter tests.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("pipeline-processes")]

ALL_KINDS = DEFAULT_DESTINATIONS_FILE.with_name("destinations.all-kinds.toml")
NAMES = ("sendgrid", "ses", "mailgun", "mail_house", "partners", "sms")
DEV_ENV = DEFAULT_DESTINATIONS_FILE.with_name("destinations.all-kinds.env")
DEV_SECRETS = dict(
    line.split("=", 1) for line in DEV_ENV.read_text().splitlines() if line and not line.startswith("#")
)
SCOPES = [
    ["ALL"],
    ["EMAIL_MARKETING"],
    ["POSTAL_MARKETING"],
    ["THIRD_PARTY_SHARING"],
    ["EMAIL_MARKETING", "THIRD_PARTY_SHARING"],
    ["EMAIL_MARKETING", "POSTAL_MARKETING"],
    ["SMS_MARKETING"],
    ["SMS_MARKETING", "THIRD_PARTY_SHARING"],
]


def opt_outs(count: int, seed: int) -> list[dict[str, Any]]:
    """A mixed load: email only; email, phone and customer id; postal address and customer id;
    email and postal address; phone and customer id. Scopes are drawn among those the
    request's identifiers can serve (others would be refused, not delivered)."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    out = []
    for i in range(count):
        shape = i % 5
        fields: dict[str, Any] = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "source": rng.choice(["WEB_FORM", "API", "CALL_CENTER"]),
            "requested_at": now - timedelta(seconds=rng.randrange(3600)),
        }
        if shape in (0, 1, 3):
            fields["email"] = f"person{i}.{rng.randrange(10**6)}@example.com"
        if shape in (1, 4):
            fields["phone"] = f"+1415{i:07d}"
        if shape in (1, 2, 4):
            fields["customer_id"] = f"cust-{i}"
        if shape in (2, 3):
            fields["postal_address"] = {
                "name": f"Person {i}",
                "lines": [f"{i} Main St"],
                "city": "Springfield",
                "postal_code": f"{10000 + i}",
                "country": "US",
            }
        can = {
            "ALL": True,
            "EMAIL_MARKETING": "email" in fields,
            "POSTAL_MARKETING": "postal_address" in fields,
            "THIRD_PARTY_SHARING": bool({"email", "phone", "customer_id"} & set(fields)),
            "SMS_MARKETING": "phone" in fields,
        }
        fields["scopes"] = rng.choice([s for s in SCOPES if all(can[x] for x in s)])
        out.append(fields)
    return out


@dataclass
class Standins:
    sendgrid: SendGridStandin
    mailgun: MailgunStandin
    partners: WebhookPartnersStandin
    ses: SesEmulator
    mail_house: MailHouseSftpStandin
    sms: SmsOptOutStandin


@dataclass
class Pipeline:
    cfg: Settings
    env: dict[str, str]
    fleet: Fleet
    standins: Standins
    known_hosts: Path
    metrics_ports: dict[str, int]

    def start(self) -> None:
        self.fleet.start("intake", "intake")
        self.fleet.start("confirmer", "confirmer")
        for name in NAMES:
            port = self.metrics_ports[name]
            Fleet(
                {**self.env, "OPTOUT_METRICS_PORT": str(port)}, self.fleet.log_dir, self.fleet.instances
            ).start(f"connector.{name}", "connector", name)
        # Start-up (imports, the broker's metadata) takes seconds on a quiet machine and a
        # minute or more on a loaded one: the tests' timeouts are for the work, not for that.
        wait_until(self._serving, 240, 0.5, "every connector process serving /healthz")

    def _serving(self) -> bool:
        exited = [i.name for i in self.fleet.instances if i.proc.poll() is not None]
        assert not exited, f"exited during start-up: {exited}"
        for port in self.metrics_ports.values():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
                    if reply.status != 200:
                        return False
            except OSError:
                return False
        return True

    def refused_gauge(self, name: str) -> float | None:
        """optout_connector_credentials_refused{destination=name} of its connector process."""
        try:
            url = f"http://127.0.0.1:{self.metrics_ports[name]}/metrics"
            with urllib.request.urlopen(url, timeout=5) as reply:
                text = reply.read().decode()
        except OSError:
            return None
        want = f'optout_connector_credentials_refused{{destination="{name}"}} '
        for line in text.splitlines():
            if line.startswith(want):
                return float(line[len(want) :])
        return None

    def publish(self, requests: list[dict[str, Any]]) -> dict[str, list[str]]:
        """Publish; each event id with the destinations it must reach."""
        publisher = RequestPublisher(self.cfg)
        prepared: list[Prepared] = [publisher.prepare(f) for f in requests]
        for i in range(0, len(prepared), 1000):
            publisher.publish(prepared[i : i + 1000])
        return {
            p.record["event_id"]: sorted(
                d.id for d in applicable_destinations(p.request, self.cfg.destinations)
            )
            for p in prepared
        }

    def acks(self, destination: str) -> int:
        return _scalar(
            self.cfg,
            "SELECT count(*) FROM destination_status WHERE destination = %s AND status <> 'PENDING'",
            (destination,),
        )

    def confirmed(self) -> int:
        return _scalar(self.cfg, "SELECT count(*) FROM requests WHERE state <> 'PENDING'", ())


def _scalar(cfg: Settings, query: str, params: tuple[Any, ...]) -> int:
    with psycopg.connect(cfg.dsn()) as conn:
        row = conn.execute(query, params).fetchone()
    return int(row[0]) if row else 0


@pytest.fixture
def pipeline(
    stack: Any, base_settings: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Pipeline]:
    """Stand-ins here, the services of the all-kinds destinations file as processes (not
    started yet: ``pipeline.start()``), a database and topics of their own."""
    sftp: SftpInfo | None = stack.sftp
    if sftp is None:
        pytest.skip("OPTOUT_SFTP_HOST names an external server: no local inbox to import from")
    inbox = sftp.local_dir / f"e{uuid.uuid4().hex[:10]}"
    inbox.mkdir()
    owner = sftp.local_dir.stat()
    os.chown(inbox, owner.st_uid, owner.st_gid)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_bytes(sftp.known_hosts.read_bytes())
    sendgrid = SendGridStandin(api_key=DEV_SECRETS["SENDGRID_API_KEY"])
    mailgun = MailgunStandin(api_key=DEV_SECRETS["MAILGUN_API_KEY"])
    partners = WebhookPartnersStandin(
        {
            "adnetwork": [DEV_SECRETS["ADNETWORK_WEBHOOK_SECRET"]],
            "databroker": [DEV_SECRETS["DATABROKER_WEBHOOK_SECRET"]],
        }
    )
    sms = SmsOptOutStandin({DEV_SECRETS["SMS_ACCESS_KEY_ID"]: DEV_SECRETS["SMS_SECRET_ACCESS_KEY"]})
    stop = threading.Event()
    importer_standin = MailHouseSftpStandin(inbox)
    importer = threading.Thread(target=importer_standin.run, args=(stop,), daemon=True)
    logs = tmp_path / "logs"
    logs.mkdir()
    with (
        StandinServer(sendgrid.handle, name="sendgrid") as sg,
        StandinServer(mailgun.handle, name="mailgun") as mg,
        StandinServer(partners.handle, name="webhook_partners") as wh,
        SesEmulator() as ses,
        StandinServer(sms.handle, name="sms") as sm,
    ):
        env = {
            **DEV_SECRETS,
            "SES_ACCESS_KEY_ID": ses.key.access_key_id,
            "SES_SECRET_ACCESS_KEY": ses.key.secret_access_key,
            "OPTOUT_STANDIN_SENDGRID_PORT": str(sg.port),
            "OPTOUT_STANDIN_MAILGUN_PORT": str(mg.port),
            "OPTOUT_STANDIN_WEBHOOK_PARTNERS_PORT": str(wh.port),
            "OPTOUT_STANDIN_SES_PORT": str(ses.port),
            "OPTOUT_STANDIN_SMS_PORT": str(sm.port),
            **sftp.env(),
            "OPTOUT_SFTP_REMOTE_DIR": f"{sftp.remote_dir}/{inbox.name}",
            "OPTOUT_SFTP_KNOWN_HOSTS": str(known_hosts),
        }
        for key, value in env.items():  # this process reads the same destinations file
            monkeypatch.setenv(key, value)
        cfg = isolated_settings(base_settings, destinations_file=ALL_KINDS)
        assert cfg.destinations.names == list(NAMES)
        env = {
            **pipeline_env(
                stack,
                base_settings["database_url"],
                base_settings["admin_database_url"],
                tmp_path,
                batch_size=500,
            ),
            **env,
            "OPTOUT_TOPIC_PREFIX": cfg.topic_prefix,
            "OPTOUT_TOPIC_PARTITIONS": str(cfg.topic_partitions),
            "OPTOUT_DESTINATIONS_FILE": str(ALL_KINDS),
            "OPTOUT_CONNECTOR_CREDENTIALS_CHECK_SECONDS": "1",
        }
        importer.start()
        fleet = Fleet(env, logs)
        CAPTURE.watch(lambda: json_log_errors("pipeline", sorted(logs.glob("*.log"))))
        try:
            yield Pipeline(
                cfg,
                env,
                fleet,
                Standins(sendgrid, mailgun, partners, ses, importer_standin, sms),
                known_hosts,
                {name: free_port() for name in NAMES},
            )
        finally:
            fleet.stop_all()
            stop.set()
            importer.join(5)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def check_delivered(
    pipeline: Pipeline, requests: list[dict[str, Any]], expected: dict[str, list[str]]
) -> None:
    """Every request confirmed exactly once naming exactly its destinations; every command
    once on its topic; every identifier at every stand-in it was routed to."""
    cfg = pipeline.cfg
    confirmations: Counter[str] = Counter()
    wrong = []
    for rec in read_topic(cfg, cfg.confirmations_topic, expect=len(expected), settle=2.0, timeout=120):
        body = rec.decoded()
        confirmations[body["request_id"]] += 1
        named = sorted(d["destination"] for d in body["destinations"])
        if named != expected.get(body["request_id"]):
            wrong.append((body["request_id"], named))
    assert set(confirmations) == set(expected)
    assert [r for r, n in confirmations.items() if n > 1] == []
    assert wrong == []
    assert _scalar(cfg, "SELECT count(*) FROM requests WHERE state <> 'CONFIRMED'", ()) == 0
    want_commands = {command_id(e, d) for e, dests in expected.items() for d in dests}
    delivered: Counter[str] = Counter()
    for name in NAMES:
        for rec in read_topic(cfg, cfg.suppress_topic(name), settle=0.5):
            delivered[rec.decoded()["command_id"]] += 1
    assert set(delivered) == want_commands

    by_id = {r["event_id"]: r for r in requests}
    emails = {by_id[e]["email"] for e, d in expected.items() if "sendgrid" in d}
    assert emails == {by_id[e]["email"] for e, d in expected.items() if "mailgun" in d}
    assert emails == {by_id[e]["email"] for e, d in expected.items() if "ses" in d}
    st = pipeline.standins
    assert set(st.sendgrid.suppressed) == emails
    assert set(st.mailgun.unsubscribed.get("mg.example.com", {})) == emails
    contacts = st.ses.client().list_contacts(ContactListName=CONTACT_LIST)["Contacts"]
    assert {c["EmailAddress"] for c in contacts if c.get("UnsubscribeAll")} == emails

    phones = {by_id[e]["phone"] for e, d in expected.items() if "sms" in d}
    assert st.sms.opted_out("optout") == phones
    assert set(st.sms.stats()["answers"]) == {"200"}  # no call refused
    reader = build_connector(cfg, "sms")
    assert isinstance(reader, SmsOptOutListConnector)
    assert set(reader.opted_out_numbers()) == phones  # read back with DescribeOptedOutNumbers
    reader.close()

    postal = {by_id[e]["postal_address"]["postal_code"] for e, d in expected.items() if "mail_house" in d}
    rows: list[str] = []
    for path in st.mail_house.inbox.glob("*.csv"):
        assert path.with_name(path.name + ".receipt").exists()
        rows.extend(row["postal_code"] for row in csv.DictReader(io.StringIO(path.read_text(), newline="")))
    assert sorted(rows) == sorted(postal)  # each once: acked on receipts, nothing re-sent

    shared = [by_id[e] for e, d in expected.items() if "partners" in d]
    want_hashes = {
        (key, sha256(r[field]))
        for r in shared
        for key, field in (
            ("email_sha256", "email"),
            ("phone_sha256", "phone"),
            ("customer_id_sha256", "customer_id"),
        )
        if field in r
    }
    for partner in st.partners.partners.values():
        held = {(k, v) for o in partner.receiver.held.values() for k, v in o.items() if k != "reference"}
        assert held == want_hashes
        assert len({o["reference"] for o in partner.receiver.held.values()}) == len(shared)


def test_five_thousand_mixed_opt_outs_reach_every_real_kind_confirmed_once(pipeline: Pipeline) -> None:
    started = time.monotonic()
    requests = opt_outs(5_000, seed=1111)
    pipeline.start()
    expected = pipeline.publish(requests)
    assert all(expected.values())
    counts = Counter(d for dests in expected.values() for d in dests)
    assert all(counts[name] > 500 for name in NAMES), counts
    wait_until(lambda: pipeline.confirmed() == len(requests), 150, 1.0, "every request confirmed")
    check_delivered(pipeline, requests, expected)
    print(f"5,000 opt-outs through every kind in {time.monotonic() - started:.1f}s; commands {dict(counts)}")


@pytest.mark.expected_errors(r"destination refuses our credentials")
def test_refused_credentials_pause_only_their_destination_until_fixed(pipeline: Pipeline) -> None:
    st = pipeline.standins
    st.mailgun.set_api_key("rotated-at-mailgun")  # our MAILGUN_API_KEY is now refused
    other = pipeline.known_hosts.with_name("other_key")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    right = pipeline.known_hosts.read_text()
    kind, key = other.with_suffix(".pub").read_text().split()[:2]
    host, port = pipeline.env["OPTOUT_SFTP_HOST"], pipeline.env["OPTOUT_SFTP_PORT"]
    pipeline.known_hosts.write_text(f"[{host}]:{port} {kind} {key}\n")  # pins another key

    requests = opt_outs(500, seed=2222)
    pipeline.start()
    expected = pipeline.publish(requests)
    routed = Counter(d for dests in expected.values() for d in dests)

    def others_done() -> bool:
        return all(pipeline.acks(n) == routed[n] for n in ("sendgrid", "ses", "partners", "sms"))

    wait_until(others_done, 90, 0.5, "the other destinations to acknowledge everything")
    wait_until(lambda: pipeline.refused_gauge("mailgun") == 1.0, 30, 0.5, "mailgun's gauge")
    wait_until(lambda: pipeline.refused_gauge("mail_house") == 1.0, 30, 0.5, "mail house's gauge")
    assert pipeline.refused_gauge("sendgrid") == 0.0
    assert pipeline.acks("mailgun") == 0 and pipeline.acks("mail_house") == 0
    assert st.mailgun.unsubscribed == {} and list(st.mail_house.inbox.glob("*.csv")) == []
    assert _scalar(pipeline.cfg, "SELECT count(*) FROM destination_status WHERE status = 'REJECTED'", ()) == 0
    others_only = sum(1 for d in expected.values() if not {"mailgun", "mail_house"} & set(d))
    wait_until(lambda: pipeline.confirmed() == others_only, 30, 0.5, "requests of the others confirmed")

    st.mailgun.set_api_key(DEV_SECRETS["MAILGUN_API_KEY"])  # fixed: resumes by itself
    wait_until(lambda: pipeline.acks("mailgun") == routed["mailgun"], 60, 0.5, "mailgun to resume")
    assert pipeline.refused_gauge("mailgun") == 0.0
    assert pipeline.acks("mail_house") == 0

    # The right key again: the connector reads known_hosts on every connect, no restart.
    pipeline.known_hosts.write_text(right)
    wait_until(lambda: pipeline.confirmed() == len(requests), 90, 0.5, "every request confirmed")
    assert pipeline.refused_gauge("mail_house") == 0.0
    check_delivered(pipeline, requests, expected)

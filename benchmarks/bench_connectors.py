"""Commands per second of each connector kind against its stand-in, next to the stand-in's
own ceiling measured in the same run (issue #11, "Performance").

For each kind, the connector's ``apply`` runs on N generated commands in batches of the
provider's size (the kind's own MAX_BATCH / max_batch; one file per batch for the mail
house). Every request it makes is recorded (an httpx request hook; botocore's
``provide-client-params`` event; the files it put over SFTP) and then replayed by a bare
client with no connector logic against a FRESH stand-in (same state as the connector
met): the same bodies, batch sizes, auth headers and connection reuse (one httpx client;
one botocore client with the connector's thread count; one paramiko session). Target:
every connector at 50% or more of its ceiling. Stand-ins run with no failure rate and no
rate limit.

    make bench-connectors        # or: python -m benchmarks.bench_connectors [--scale 0.1]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import paramiko
from pydantic import SecretStr

from services.common import standard_webhooks as sw
from services.common.avro import default_codec
from services.common.clock import to_millis
from services.common.contract import AckStatus, Destination, Identifier, Scope
from services.common.kafka import DeliveryTracker, create_topics, make_producer
from services.common.settings import Settings
from services.connectors import (
    kit,
    mailgun,
    sendgrid,
    ses,
    sftp_mail_house,
    sms_optout_list,
    webhook_partners,
)
from services.connectors.kit import Awaiting, Command, Connector, Outcome
from services.devstack.sshd_server import SftpInfo
from services.domain.identity import sha256_hex
from services.standins.mailgun_api import MailgunStandin
from services.standins.sendgrid_api import SendGridStandin
from services.standins.ses_emulator import CONTACT_LIST, SesEmulator
from services.standins.sms_optout_api import SmsOptOutStandin
from services.standins.web import App, Request, Response, StandinServer
from services.standins.webhook_receiver import WebhookPartnersStandin

from .common import EndOffsets, close_env, load_average, note, open_env, setup_logging, start_stack

TARGET = 0.5
SG_KEY = "bench-sendgrid-key"
MG_KEY = "bench-mailgun-key"
PARTNER_SECRETS = {
    "adnetwork": sw.encode_secret(b"adnetwork-secret-0123456789abcdef"),
    "databroker": sw.encode_secret(b"databroker-secret-0123456789abcde"),
}


# --- pure helpers (unit-tested) ---------------------------------------------------------------
def chunks(items: Sequence[Command], size: int) -> Iterator[Sequence[Command]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(frozen=True)
class KindResult:
    kind: str
    commands: int
    batch: int
    requests: int
    connector_seconds: float
    ceiling_seconds: float
    note: str = ""
    step_rate: float | None = None  # through ConnectorStep, broker and database

    @property
    def connector_rate(self) -> float:
        return self.commands / self.connector_seconds if self.connector_seconds > 0 else 0.0

    @property
    def ceiling_rate(self) -> float:
        return self.commands / self.ceiling_seconds if self.ceiling_seconds > 0 else 0.0

    @property
    def share(self) -> float:
        return self.connector_rate / self.ceiling_rate if self.ceiling_rate > 0 else 0.0

    @property
    def passed(self) -> bool:
        return self.share >= TARGET


def format_results(results: Sequence[KindResult]) -> list[str]:
    header = (
        f"{'kind':<18} {'commands':>8} {'batch':>6} {'requests':>8} {'connector/s':>12} "
        f"{'ceiling/s':>11} {'share':>7} {'step/s':>8}  verdict"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        verdict = "PASS" if r.passed else "FAIL"
        step = "-" if r.step_rate is None else f"{r.step_rate:,.0f}"
        line = (
            f"{r.kind:<18} {r.commands:>8,} {r.batch:>6,} {r.requests:>8,} {r.connector_rate:>12,.0f} "
            f"{r.ceiling_rate:>11,.0f} {r.share:>6.0%} {step:>8}  {verdict} (target >= {TARGET:.0%})"
        )
        if r.note:
            line += f"  {r.note}"
        lines.append(line)
    return lines


def make_commands(count: int, destination: str, build: Callable[[int], dict[str, Any]]) -> list[Command]:
    """``count`` commands for ``destination``; ``build(i)`` gives the identifier fields."""
    return [Command.from_record(r) for r in make_records(count, destination, build)]


def make_records(count: int, destination: str, build: Callable[[int], dict[str, Any]]) -> list[Any]:
    """``count`` SuppressionCommand records for ``destination`` (see ``make_commands``)."""
    now = datetime.now(UTC)
    out = []
    for i in range(count):
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
            "requested_at": to_millis(now),
            "device_id": None,
            **build(i),
        }
        out.append(record)
    return out


def check_outcomes(kind: str, results: Sequence[Outcome | Awaiting], expected: int) -> None:
    done = [r for r in results if isinstance(r, Awaiting) or r.status is AckStatus.APPLIED]
    if len(done) != expected:
        raise RuntimeError(f"{kind}: {len(done)}/{expected} commands applied or handed over")


# --- HTTP kinds ---------------------------------------------------------------------------------
@dataclass
class Recorded:
    method: str
    url: str
    headers: list[tuple[str, str]]
    content: bytes


@dataclass
class Switchable:
    """A stand-in server whose app can be swapped for a fresh one (the replay meets the
    same state the connector met)."""

    app: App

    def handle(self, request: Request) -> Response:
        return self.app(request)


def record_requests(client: httpx.Client) -> list[Recorded]:
    recorded: list[Recorded] = []

    def hook(request: httpx.Request) -> None:
        recorded.append(
            Recorded(request.method, str(request.url), list(request.headers.multi_items()), request.read())
        )

    client.event_hooks = {"request": [hook], "response": []}
    return recorded


def replay_http(recorded: Sequence[Recorded]) -> float:
    """Send ``recorded`` with one bare httpx client (keep-alive); seconds taken."""
    with httpx.Client(timeout=60) as client:
        started = time.perf_counter()
        for r in recorded:
            response = client.request(r.method, r.url, headers=r.headers, content=r.content)
            if response.status_code >= 300:
                raise RuntimeError(f"replay {r.method} {httpx.URL(r.url).path}: {response.status_code}")
        return time.perf_counter() - started


def run_connector(connector: Connector, commands: Sequence[Command], batch: int) -> float:
    results: list[Outcome | Awaiting] = []
    started = time.perf_counter()
    for part in chunks(commands, batch):
        results.extend(connector.apply(part))
    seconds = time.perf_counter() - started
    check_outcomes(connector.destination, results, len(commands))
    return seconds


def bench_http(
    settings: Settings,
    kind: str,
    count: int,
    batch: int,
    fresh: Callable[[], App],
    build: Callable[[str], Connector],
    identifiers: Callable[[int], dict[str, Any]],
) -> KindResult:
    switch = Switchable(fresh())
    with StandinServer(switch.handle, name=kind) as server:
        connector = build(server.url)
        assert isinstance(
            connector,
            sendgrid.SendGridConnector | mailgun.MailgunConnector | webhook_partners.WebhookPartnersConnector,
        )
        recorded = record_requests(connector.client)
        commands = make_commands(count, kind, identifiers)
        connector_seconds = run_connector(connector, commands, batch)
        connector.close()
        switch.app = fresh()
        ceiling_seconds = replay_http(recorded)
        switch.app = fresh()
        step_rate = through_step(settings, build(server.url), make_records(count, kind, identifiers))
    return KindResult(
        kind, count, batch, len(recorded), connector_seconds, ceiling_seconds, step_rate=step_rate
    )


def through_step(settings: Settings, connector: Connector, records: Sequence[Any]) -> float | None:
    """Commands/s of ``connector`` run by the real ConnectorStep (``optout run connector``):
    consume from its topic, dedupe in PostgreSQL, apply, record, publish acks. Timed from the
    first ack seen to the last (the consumer group's join and the first batch are left out);
    None for fewer than three batches (``batch_size``): too few to time that way."""
    topic = settings.suppress_topic(connector.destination)
    create_topics(settings, [topic, settings.suppress_dlq_topic(connector.destination)])
    codec = default_codec()
    tracker = DeliveryTracker(make_producer(settings))
    for record in records:
        tracker.produce(topic, codec.encode("SuppressionCommand", record), key=record["request_id"])
    tracker.wait()
    acks = EndOffsets(settings, [settings.acks_topic])
    start = acks.total()
    stop = threading.Event()
    worker = threading.Thread(target=kit.run_connector, args=(settings, connector, stop), daemon=True)
    worker.start()
    try:
        deadline = time.monotonic() + 300
        first: tuple[float, int] | None = None
        while True:
            done = acks.total() - start
            now = time.monotonic()
            if first is None and done > 0:
                first = (now, done)
            if done >= len(records):
                break
            if now > deadline:
                raise RuntimeError(f"{connector.destination}: {done}/{len(records)} acks through the step")
            time.sleep(0.02)  # polling the topic's offsets, not waiting for a condition
    finally:
        stop.set()
        worker.join(30)
        acks.close()
    if first is None or len(records) <= 2 * settings.batch_size or now <= first[0]:
        return None
    return (done - first[1]) / (now - first[0])


def email(i: int) -> dict[str, Any]:
    return {"email": f"bench.user{i}.{uuid.uuid4().hex[:6]}@example.com"}


def hashed(i: int) -> dict[str, Any]:
    address = f"bench.user{i}.{uuid.uuid4().hex[:6]}@example.com"
    return {"customer_id": f"C{i:09d}", "email_sha256": sha256_hex(address)}


def destination(
    name: str, kind: str, options: dict[str, Any], credentials: dict[str, str], ids: set[Identifier]
) -> Destination:
    return Destination(
        id=name,
        scopes=frozenset({Scope.EMAIL_MARKETING}),
        identifiers=frozenset(ids),
        requires_one_of=frozenset(ids),
        kind=kind,
        options=options,
        credentials={k: SecretStr(v) for k, v in credentials.items()},
    )


# --- SES (botocore) -----------------------------------------------------------------------------
def bench_ses(count: int, settings: Settings) -> KindResult:
    with SesEmulator() as first:
        dest = destination(
            "ses",
            ses.KIND,
            {"region": "us-east-1", "contact_list_name": CONTACT_LIST, "endpoint_url": first.url},
            {"access_key_id": first.key.access_key_id, "secret_access_key": first.key.secret_access_key},
            {Identifier.EMAIL},
        )
        connector = ses.build(dest, settings)
        assert isinstance(connector, ses.SesConnector)
        calls: list[tuple[str, dict[str, Any]]] = []

        def hook(params: dict[str, Any], model: Any, **_: Any) -> None:
            calls.append((model.name, dict(params)))

        connector.client.meta.events.register("provide-client-params.sesv2.*", hook)
        commands = make_commands(count, "ses", email)
        connector_seconds = run_connector(connector, commands, len(commands))
        threads = connector.options.concurrency
        connector.close()
    with SesEmulator() as second:
        client = second.client()
        senders: dict[str, Callable[[dict[str, Any]], object]] = {
            "CreateContact": lambda p: client.create_contact(**p),
            "UpdateContact": lambda p: client.update_contact(**p),
            "GetContact": lambda p: client.get_contact(**p),
        }
        unknown = {name for name, _ in calls} - set(senders)
        if unknown:
            raise RuntimeError(f"ses: no replay for {sorted(unknown)}")
        with ThreadPoolExecutor(threads) as pool:
            started = time.perf_counter()
            list(pool.map(lambda call: senders[call[0]](call[1]), calls))
            ceiling_seconds = time.perf_counter() - started
        client.close()
    return KindResult("ses", count, 1, len(calls), connector_seconds, ceiling_seconds, f"{threads} threads")


# --- SMS opt-out list (botocore, pinpoint-sms-voice-v2) ------------------------------------------
SMS_KEY = ("AKIABENCHSMS", "bench-sms-secret")


def phone(i: int) -> dict[str, Any]:
    return {"phone": f"+1415{i:07d}"}


def bench_sms(count: int, settings: Settings) -> KindResult:
    """One PutOptedOutNumber per command on the connector's thread pool; the ceiling replays
    the same calls through one bare botocore client on as many threads, against a fresh
    stand-in."""
    with StandinServer(SmsOptOutStandin(dict([SMS_KEY])).handle, name="sms") as first:
        dest = destination(
            "sms",
            sms_optout_list.KIND,
            {"region": "us-east-1", "opt_out_list_name": "optout", "endpoint_url": first.url},
            {"access_key_id": SMS_KEY[0], "secret_access_key": SMS_KEY[1]},
            {Identifier.PHONE},
        )
        connector = sms_optout_list.build(dest, settings)
        assert isinstance(connector, sms_optout_list.SmsOptOutListConnector)
        calls: list[tuple[str, dict[str, Any]]] = []

        def hook(params: dict[str, Any], model: Any, **_: Any) -> None:
            calls.append((model.name, dict(params)))

        client: Any = connector.client  # botocore ships no types
        client.meta.events.register("provide-client-params.pinpoint-sms-voice-v2.*", hook)
        commands = make_commands(count, "sms", phone)
        connector_seconds = run_connector(connector, commands, len(commands))
        threads = connector.options.concurrency
        connector.close()
    with StandinServer(SmsOptOutStandin(dict([SMS_KEY])).handle, name="sms") as second:
        bare = sms_optout_list.make_client(
            sms_optout_list.SmsOptOutListOptions(
                region="us-east-1", opt_out_list_name="optout", endpoint_url=second.url, concurrency=threads
            ),
            SMS_KEY[0],
            SMS_KEY[1],
            None,
        )
        if {name for name, _ in calls} != {"PutOptedOutNumber"}:
            raise RuntimeError(f"sms: no replay for {sorted({name for name, _ in calls})}")
        with ThreadPoolExecutor(threads) as pool:
            started = time.perf_counter()
            list(pool.map(lambda call: bare.put_opted_out_number(**call[1]), calls))
            ceiling_seconds = time.perf_counter() - started
        bare.close()
    return KindResult("sms", count, 1, len(calls), connector_seconds, ceiling_seconds, f"{threads} threads")


# --- SFTP mail house (paramiko) ----------------------------------------------------------------
def postal(i: int) -> dict[str, Any]:
    return {
        "postal_address": {
            "name": f"Bench Person {i}",
            "lines": [f"{i} Main St"],
            "city": "Springfield",
            "region": "CA",
            "postal_code": f"9{i % 10000:04d}",
            "country": "US",
        }
    }


def fresh_folder(sftp: SftpInfo) -> tuple[Path, str]:
    name = f"bench{uuid.uuid4().hex[:10]}"
    local = sftp.local_dir / name
    local.mkdir()
    owner = sftp.local_dir.stat()
    os.chown(local, owner.st_uid, owner.st_gid)
    return local, f"{sftp.remote_dir}/{name}"


def bench_sftp(count: int, batch: int, info: SftpInfo, settings: Settings) -> KindResult:
    local, remote = fresh_folder(info)
    dest = destination(
        "mail_house",
        sftp_mail_house.KIND,
        {
            "host": info.host,
            "port": info.port,
            "username": info.username,
            "remote_dir": remote,
            "known_hosts": str(info.known_hosts),
        },
        {"private_key": info.private_key.read_text()},
        {Identifier.POSTAL_ADDRESS},
    )
    connector = sftp_mail_house.build(dest, settings)
    commands = make_commands(count, "mail_house", postal)
    connector_seconds = run_connector(connector, commands, batch)
    connector.close()
    files = sorted(p for p in local.iterdir() if p.name.endswith(".csv"))
    contents = [(p.name, p.read_bytes()) for p in files]
    replay_local, replay_remote = fresh_folder(info)
    # The connector opened its session inside the timed run: so does the ceiling.
    started = time.perf_counter()
    client = paramiko.SSHClient()
    client.load_host_keys(str(info.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        info.host,
        port=info.port,
        username=info.username,
        key_filename=str(info.private_key),
        allow_agent=False,
        look_for_keys=False,
    )
    sftp = client.open_sftp()
    for name, content in contents:
        part = f"{replay_remote}/{name}.part"
        with sftp.open(part, "wb") as handle:
            handle.write(content)
        sftp.rename(part, f"{replay_remote}/{name}")
    ceiling_seconds = time.perf_counter() - started
    client.close()
    for folder in (local, replay_local):
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()
    return KindResult(
        "sftp_mail_house", count, batch, len(contents), connector_seconds, ceiling_seconds, "files"
    )


# --- main ------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every command count")
    parser.add_argument("--kinds", default="sendgrid,mailgun,webhook_partners,ses,sms,sftp_mail_house")
    args = parser.parse_args(argv)
    setup_logging()
    kinds = args.kinds.split(",")

    def n(base: int) -> int:
        return max(1, int(base * args.scale))

    stack = start_stack()
    env = open_env(stack, "connectors", 1)  # the mail house's upload log needs a database
    try:
        return report(kinds, n, env.settings, stack.sftp)
    finally:
        close_env(env)


def report(kinds: Sequence[str], n: Callable[[int], int], settings: Settings, sftp: SftpInfo | None) -> int:
    before = load_average()
    note(f"load average before: {before}")
    results: list[KindResult] = []
    if "sendgrid" in kinds:
        note("sendgrid ...")
        results.append(
            bench_http(
                settings,
                "sendgrid",
                n(20_000),
                sendgrid.MAX_BATCH,
                lambda: SendGridStandin(api_key=SG_KEY).handle,
                lambda url: sendgrid.build(
                    destination(
                        "sendgrid", "sendgrid", {"base_url": url}, {"api_key": SG_KEY}, {Identifier.EMAIL}
                    ),
                    settings,
                ),
                email,
            )
        )
    if "mailgun" in kinds:
        note("mailgun ...")
        results.append(
            bench_http(
                settings,
                "mailgun",
                n(20_000),
                mailgun.MAX_BATCH,
                lambda: MailgunStandin(api_key=MG_KEY).handle,
                lambda url: mailgun.build(
                    destination(
                        "mailgun",
                        "mailgun",
                        {"domain": "mg.example.com", "base_url": url},
                        {"api_key": MG_KEY},
                        {Identifier.EMAIL},
                    ),
                    settings,
                ),
                email,
            )
        )
    if "webhook_partners" in kinds:
        note("webhook_partners ...")
        results.append(
            bench_http(
                settings,
                "webhook_partners",
                n(20_000),
                webhook_partners.DEFAULT_BATCH,
                lambda: WebhookPartnersStandin({k: [v] for k, v in PARTNER_SECRETS.items()}).handle,
                lambda url: webhook_partners.build(
                    destination(
                        "webhook_partners",
                        webhook_partners.KIND,
                        {"partners": [{"name": k, "url": f"{url}/webhooks/{k}"} for k in PARTNER_SECRETS]},
                        {f"{k}_signing_secret": v for k, v in PARTNER_SECRETS.items()},
                        {Identifier.CUSTOMER_ID, Identifier.EMAIL_SHA256},
                    ),
                    settings,
                ),
                hashed,
            )
        )
    if "ses" in kinds:
        note("ses ...")
        results.append(bench_ses(n(2_000), settings))
    if "sms" in kinds:
        note("sms ...")
        results.append(bench_sms(n(2_000), settings))
    if "sftp_mail_house" in kinds:
        note("sftp_mail_house ...")
        if sftp is None:
            raise SystemExit("sftp_mail_house: the stack runs no local sshd (OPTOUT_SFTP_HOST is external)")
        results.append(bench_sftp(n(20_000), 1000, sftp, settings))
    after = load_average()
    print(f"bench-connectors  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  python {sys.version.split()[0]}")
    print(f"load average before: {before}   after: {after}   (cores: {os.cpu_count()})")
    for line in format_results(results):
        print(line)
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())

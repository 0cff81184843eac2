"""What one provider call costs the connector's process in CPU, per client library.

    .venv/bin/python -m benchmarks.bench_call_cpu [--calls 1000]

Issue #15 counts the CPU of every service process per opt-out. Part of a connector's cost is
its provider client, and the clients differ a lot: the SMS opt-out list (AWS End User Messaging
SMS) takes one PutOptedOutNumber per number through botocore (the API has no batch call:
https://docs.aws.amazon.com/pinpoint/latest/apireference_smsvoicev2/API_PutOptedOutNumber.html),
while SendGrid takes up to 1,000 addresses in one POST through httpx
(https://www.twilio.com/docs/sendgrid/api-reference/suppressions-global-suppressions/add-recipient-addresses-to-the-global-suppression-group).

The stand-ins run in a child process, so this process's CPU time (``time.process_time``: every
thread, librdkafka none here) is the client's alone. Printed per call, each beside the other
measured in the same run:
- ``sms_optout_list`` connector, one number per ``apply`` (botocore, its pool thread);
- ``sendgrid`` connector, one address per ``apply`` (httpx), the peer at the same granularity;
- ``sendgrid`` connector, 1,000 addresses per ``apply``: the cost per address when batched.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

from pydantic import SecretStr

from services.common.clock import to_millis
from services.common.contract import Destination, Identifier, Scope
from services.common.settings import Settings
from services.connectors import sendgrid, sms_optout_list
from services.connectors.kit import Command, Connector
from services.standins.sendgrid_api import SendGridStandin
from services.standins.sms_optout_api import SmsOptOutStandin
from services.standins.web import StandinServer

from .common import load_average, note, setup_logging

SMS_KEY = ("AKIABENCHCALLCPU", "bench-call-cpu-secret")
SG_KEY = "bench-call-cpu-sendgrid"


def serve(urls: Connection, stop: Event) -> None:
    """The child: both stand-ins until ``stop`` is set."""
    setup_logging("WARNING")
    with (
        StandinServer(SmsOptOutStandin(dict([SMS_KEY])).handle, name="sms") as sms,
        StandinServer(SendGridStandin(api_key=SG_KEY).handle, name="sendgrid") as sg,
    ):
        urls.send((sms.url, sg.url))
        stop.wait()


def command(destination: str, **identifiers: str) -> Command:
    now = datetime.now(UTC)
    return Command.from_record(
        {
            "command_id": str(uuid.uuid4()),
            "request_id": f"evt-{uuid.uuid4()}",
            "destination": destination,
            "customer_id": None,
            "email": identifiers.get("email"),
            "phone": identifiers.get("phone"),
            "postal_address": None,
            "email_sha256": None,
            "phone_sha256": None,
            "scopes": ["SMS_MARKETING" if "phone" in identifiers else "EMAIL_MARKETING"],
            "issued_at": to_millis(now),
            "deadline": to_millis(now + timedelta(days=10)),
            "action": "OPT_OUT",
            "requested_at": to_millis(now),
            "device_id": None,
        }
    )


def destination(name: str, kind: str, options: dict[str, Any], credentials: dict[str, str]) -> Destination:
    ids = {Identifier.PHONE} if kind == sms_optout_list.KIND else {Identifier.EMAIL}
    return Destination(
        id=name,
        scopes=frozenset({Scope.SMS_MARKETING if kind == sms_optout_list.KIND else Scope.EMAIL_MARKETING}),
        identifiers=frozenset(ids),
        requires_one_of=frozenset(ids),
        kind=kind,
        options=options,
        credentials={k: SecretStr(v) for k, v in credentials.items()},
    )


def cpu_per_command(connector: Connector, batches: Sequence[Sequence[Command]]) -> float:
    """Process CPU seconds per command over ``batches`` (after a warm-up of the first)."""
    connector.apply(batches[0])
    started = time.process_time()
    done = 0
    for batch in batches[1:]:
        outcomes = connector.apply(batch)
        if len(outcomes) != len(batch):
            raise RuntimeError(f"{connector.destination}: {len(outcomes)} outcomes for {len(batch)} commands")
        done += len(batch)
    return (time.process_time() - started) / done


def batches_of(size: int, count: int, make: Callable[[int], Command]) -> list[list[Command]]:
    return [[make(b * size + i) for i in range(size)] for b in range(count)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--calls", type=int, default=1000, help="calls measured per client (after one warm-up)"
    )
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    settings = Settings()
    before = load_average()
    context = multiprocessing.get_context("spawn")
    mine, theirs = context.Pipe()
    stop = context.Event()
    child = context.Process(target=serve, args=(theirs, stop), daemon=True)
    child.start()
    try:
        sms_url, sg_url = mine.recv()
        sms = sms_optout_list.build(
            destination(
                "sms",
                sms_optout_list.KIND,
                {"region": "us-east-1", "opt_out_list_name": "optout", "endpoint_url": sms_url},
                {"access_key_id": SMS_KEY[0], "secret_access_key": SMS_KEY[1]},
            ),
            settings,
        )
        sg = sendgrid.build(
            destination("sendgrid", "sendgrid", {"base_url": sg_url}, {"api_key": SG_KEY}), settings
        )
        note(f"{args.calls:,} calls each")
        sms_cpu = cpu_per_command(
            sms, batches_of(1, args.calls + 1, lambda i: command("sms", phone=f"+1415{i:07d}"))
        )
        sg_one = cpu_per_command(
            sg, batches_of(1, args.calls + 1, lambda i: command("sendgrid", email=f"one{i}@example.com"))
        )
        per_call = sendgrid.MAX_BATCH
        sg_batched = cpu_per_command(
            sg,
            batches_of(
                per_call,
                max(2, args.calls // 100 + 1),
                lambda i: command("sendgrid", email=f"b{i}@example.com"),
            ),
        )
        sms.close()
        sg.close()
    finally:
        stop.set()
        child.join(10)
    print(
        "\n".join(
            [
                f"bench-call-cpu on {time.strftime('%Y-%m-%d %H:%M:%S %Z')}: client process CPU per command, "
                "stand-ins in a child process",
                f"load average (1/5/15 min) before {before}, after {load_average()}",
                f"  sms_optout_list (botocore, 1 number per PutOptedOutNumber): {1e6 * sms_cpu:,.0f} µs",
                f"  sendgrid (httpx, 1 address per POST, the peer):          {1e6 * sg_one:,.0f} µs "
                f"(botocore / httpx = {sms_cpu / sg_one:.1f}x)",
                f"  sendgrid (httpx, {per_call:,} addresses per POST):            {1e6 * sg_batched:,.1f} µs",
                f"bench-call-cpu: sms_botocore_us={1e6 * sms_cpu:.0f} sendgrid_one_us={1e6 * sg_one:.0f} "
                f"sendgrid_batched_us={1e6 * sg_batched:.1f}",
            ]
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

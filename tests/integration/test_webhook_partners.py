"""The ``webhook_partners`` connector through the real connector step, broker and database,
against two signed-webhook partners served by the stand-in (issue #11): APPLIED only when
both accepted, REJECTED with the refusing partner's reason, retries through 503s; and the
same over https with a private CA (a self-signed certificate generated here)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import random
import ssl
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr

from services.common import standard_webhooks as sw
from services.common.contract import Destination, Identifier, Scope
from services.common.errors import RetriableError
from services.common.settings import Settings
from services.connectors import webhook_partners as wp
from services.connectors.kit import run_connector
from services.domain.identity import sha256_hex
from services.standins.web import StandinServer
from services.standins.webhook_receiver import WebhookPartnersStandin
from tests.integration.test_connectors import FAST_RETRIES, commands, publish
from tests.support.commands import make_command
from tests.support.pipeline import isolated_settings, read_topic, running

pytestmark = pytest.mark.integration

SECRETS = {
    "adnetwork": sw.encode_secret(b"adnetwork-secret-0123456789abcdef"),
    "databroker": sw.encode_secret(b"databroker-secret-0123456789abcde"),
}
# The topic the planner already routes THIRD_PARTY_SHARING to; served here by this kind.
NAME = "third_party_sharing"


def destination(url: str, **options: Any) -> Destination:
    return Destination(
        id=NAME,
        scopes=frozenset({Scope.THIRD_PARTY_SHARING}),
        identifiers=frozenset({Identifier.CUSTOMER_ID, Identifier.EMAIL_SHA256, Identifier.PHONE_SHA256}),
        requires_one_of=frozenset({Identifier.CUSTOMER_ID, Identifier.EMAIL_SHA256, Identifier.PHONE_SHA256}),
        kind=wp.KIND,
        options={
            "partners": [{"name": n, "url": f"{url}/webhooks/{n}"} for n in SECRETS],
            **options,
        },
        credentials={f"{n}_signing_secret": SecretStr(s) for n, s in SECRETS.items()},
    )


def serve(built: wp.WebhookPartnersConnector) -> Callable[[Settings, threading.Event], None]:
    def main(cfg: Settings, stop: threading.Event) -> None:
        run_connector(cfg, built, stop)

    return main


def acks_of(cfg: Settings, expect: int) -> dict[str, Mapping[str, Any]]:
    return {a["command_id"]: a for a in (r.decoded() for r in read_topic(cfg, cfg.acks_topic, expect=expect))}


def test_two_partners_applied_only_when_both_accept_and_a_refusal_is_rejected_with_its_reason(
    base_settings: dict[str, Any],
) -> None:
    batch = commands(NAME, 10)
    refused = batch[3]
    standin = WebhookPartnersStandin(
        {n: [s] for n, s in SECRETS.items()},
        failure_rate=0.15,
        rng=random.Random(1),  # the first draw (0.134) is a 503 (Retry-After: 1): the batch is retried
        refused={refused["email_sha256"]: "opted back in with us"},
    )
    with StandinServer(standin.handle, name="webhook_partners") as server:
        cfg = isolated_settings(base_settings, batch_size=5, **FAST_RETRIES)
        publish(cfg, NAME, batch)
        with running(serve(wp.build(destination(server.url), cfg)), cfg, NAME):
            acks = acks_of(cfg, expect=10)
        state = {n: httpx.get(f"{server.url}/webhooks/{n}").json() for n in SECRETS}

    assert set(acks) == {c["command_id"] for c in batch}
    for command in batch:
        ack = acks[command["command_id"]]
        if command is refused:
            assert ack["status"] == "REJECTED"
            assert "adnetwork: opted back in with us" in ack["detail"]
            assert "databroker: opted back in with us" in ack["detail"]  # both partners refused it
        else:
            assert (ack["status"], ack["detail"]) == ("APPLIED", None)
    assert sum(p.answers[503] for p in standin.partners.values()) > 0  # retried through 503s
    for name, held in state.items():
        by_ref = {o["reference"]: o for o in held["opt_outs"]}
        assert set(by_ref) == {c["command_id"] for c in batch if c is not refused}, name
        for c in batch:
            if c is not refused:
                assert by_ref[c["command_id"]]["customer_id_sha256"] == sha256_hex(c["customer_id"])
        everything = " ".join(held["raw_bodies"])
        assert "@" not in everything and "+1415555" not in everything
        assert not any(c["customer_id"] in everything for c in batch)


def test_one_partner_refusing_rejects_even_though_the_other_accepted(base_settings: dict[str, Any]) -> None:
    batch = commands(NAME, 3)
    refused = batch[1]
    standin = WebhookPartnersStandin({n: [s] for n, s in SECRETS.items()})
    standin.partners["adnetwork"].receiver.decide = lambda o: (
        "unknown customer" if o["email_sha256"] == refused["email_sha256"] else None
    )
    with StandinServer(standin.handle, name="webhook_partners") as server:
        cfg = isolated_settings(base_settings, **FAST_RETRIES)
        publish(cfg, NAME, batch)
        with running(serve(wp.build(destination(server.url), cfg)), cfg, NAME):
            acks = acks_of(cfg, expect=3)
    assert acks[refused["command_id"]]["status"] == "REJECTED"
    assert acks[refused["command_id"]]["detail"] == "adnetwork: unknown customer"
    assert refused["command_id"] in standin.partners["databroker"].receiver.held  # it accepted
    assert {acks[c["command_id"]]["status"] for c in batch if c is not refused} == {"APPLIED"}


# --- https with a private CA -------------------------------------------------------------------
def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by itself (it is its own CA), and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "optout test partner")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "partner.pem", folder / "partner.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_https_with_a_private_ca_bundle_and_refused_without_it(
    base_settings: dict[str, Any], tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    standin = WebhookPartnersStandin({n: [s] for n, s in SECRETS.items()})
    with StandinServer(standin.handle, name="webhook_partners_tls", tls=tls) as server:
        assert server.url.startswith("https://127.0.0.1:")
        cfg = isolated_settings(base_settings, **FAST_RETRIES)
        # Without the CA bundle the certificate is not trusted: retried, never sent.
        untrusting = wp.build(destination(server.url), cfg)
        with pytest.raises(RetriableError, match="unreachable"):
            untrusting.apply([make_command(dt.datetime.now(dt.UTC), NAME, customer_id="C-1")])
        untrusting.close()
        assert all(not p.raw_bodies for p in standin.partners.values())

        batch = commands(NAME, 3)
        publish(cfg, NAME, batch)
        trusting = wp.build(destination(server.url, ca_bundle=str(cert)), cfg)
        with running(serve(trusting), cfg, NAME):
            acks = acks_of(cfg, expect=3)
    assert {a["status"] for a in acks.values()} == {"APPLIED"}
    assert all(set(p.receiver.held) == set(acks) for p in standin.partners.values())

"""Tiny signers that do what each provider does to the webhooks it sends, with test keys,
and the recorded payloads of tests/data/inbound (built from each provider's docs).

- SendGrid: ECDSA P-256 / SHA-256 over timestamp + body, base64 DER signature
  (https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/getting-started-event-webhook-security-features).
- Mailgun: hex HMAC-SHA256 of timestamp + token with the signing key
  (https://documentation.mailgun.com/docs/mailgun/user-manual/webhooks/securing-webhooks).
- SNS: SHA1withRSA (version 1) or SHA256withRSA (version 2) over the canonical string, with
  a self-signed test certificate (https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html).
- Twilio: base64 HMAC-SHA1 of URL + sorted params (https://www.twilio.com/docs/usage/webhooks/webhooks-security).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from services.inbound.ses import canonical_string

DATA = Path(__file__).resolve().parents[1] / "data" / "inbound"


def recorded(name: str) -> dict[str, Any]:
    """A recorded payload (``doc``, ``body``/``params``, maybe ``headers``), a fresh copy."""
    loaded: dict[str, Any] = json.loads((DATA / name).read_text())
    return copy.deepcopy(loaded)


# --- SendGrid ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SendGridSigner:
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls) -> SendGridSigner:
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @property
    def public_key(self) -> str:
        """As SendGrid shows it: base64 of the DER SubjectPublicKeyInfo."""
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()

    def headers(self, body: bytes, at: datetime | None = None) -> dict[str, str]:
        timestamp = str(int((at or datetime.now(UTC)).timestamp()))
        signature = self.key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {
            "Content-Type": "application/json",
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
        }


# --- Mailgun -------------------------------------------------------------------------------
def mailgun_sign(payload: dict[str, Any], signing_key: str, at: datetime | None = None) -> bytes:
    """The payload with a fresh token, the timestamp ``at`` and its signature, as JSON."""
    timestamp = str(int((at or datetime.now(UTC)).timestamp()))
    token = secrets.token_hex(25)  # "randomly generated string with length of 50"
    signature = hmac.new(signing_key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    signed = {**payload, "signature": {"timestamp": timestamp, "token": token, "signature": signature}}
    return json.dumps(signed).encode()


# --- SNS -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SnsSigner:
    key: rsa.RSAPrivateKey
    certificate_pem: bytes

    @classmethod
    def generate(cls) -> SnsSigner:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.us-west-2.amazonaws.com")])
        now = datetime.now(UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .sign(key, hashes.SHA256())
        )
        return cls(key, certificate.public_bytes(serialization.Encoding.PEM))

    def write_certificate(self, directory: Path) -> Path:
        path = directory / "sns-signing-cert.pem"
        path.write_bytes(self.certificate_pem)
        return path

    def sign(self, message: dict[str, Any], at: datetime | None = None) -> dict[str, Any]:
        """``message`` with Timestamp ``at`` and a Signature of its SignatureVersion."""
        moment = at or datetime.now(UTC)
        signed = {
            **message,
            "Timestamp": moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z",
        }
        algorithm: hashes.HashAlgorithm = (
            hashes.SHA1() if signed["SignatureVersion"] == "1" else hashes.SHA256()
        )
        raw = self.key.sign(canonical_string(signed), padding.PKCS1v15(), algorithm)
        signed["Signature"] = base64.b64encode(raw).decode()
        return signed


# --- Twilio --------------------------------------------------------------------------------
def twilio_signature(auth_token: str, url: str, params: dict[str, str]) -> str:
    data = url + "".join(name + params[name] for name in sorted(params))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def twilio_request(auth_token: str, url: str, params: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    """The form body and headers Twilio posts to ``url``."""
    return urlencode(params).encode(), {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Twilio-Signature": twilio_signature(auth_token, url, params),
    }

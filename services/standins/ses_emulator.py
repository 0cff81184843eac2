"""The Amazon SES (v2) stand-in: moto's server mode (``moto`` with ``flask`` and
``flask-cors`` from PyPI, dev dependencies), run as a child process on its own port,
with the contact list created.

moto implements the SES v2 calls the ``ses`` connector makes (CreateContactList,
CreateContact, UpdateContact, GetContact, ListContacts with ``UnsubscribeAll`` and
``TopicPreferences``), checked against moto 5.2. Where it differs from SES, as of that
version: CreateContact of an address already on the list succeeds (SES answers 400
``AlreadyExistsException``), ListContacts ignores ``PageSize`` and ``Filter``, and
addresses are not validated. The connector's handling of those SES answers is unit-tested
with botocore's Stubber instead.

With ``authenticate=True`` moto checks every request's SigV4 signature and the IAM policy
of its access key (``INITIAL_NO_AUTH_ACTION_COUNT``): the emulator creates an IAM user
allowed ``ses:*`` and hands out its key; a wrong secret is answered 403
``SignatureDoesNotMatch``, an unknown key 403 ``InvalidClientTokenId``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import botocore.session
import httpx

from services.common.errors import ConfigurationError
from services.common.logging import get_logger
from services.connectors.ses import SesV2Client

log = get_logger(__name__)

REGION = "us-east-1"
CONTACT_LIST = "optout"
TOPIC = "marketing"
# The IAM calls moto answers without authentication before it starts checking.
_SETUP_CALLS = 3
_PR_SET_PDEATHSIG = 1
_SES_POLICY = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ses:*","Resource":"*"}]}'


@dataclass(frozen=True)
class AccessKey:
    access_key_id: str
    secret_access_key: str


def _die_with_parent() -> None:
    """Linux: the emulator gets SIGTERM when the thread that started it dies (even by
    SIGKILL), so a killed stand-in process leaves no emulator holding its port."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class SesEmulator:
    """``with SesEmulator() as ses: ses.url, ses.key``: moto serving SES v2 with the contact
    list ``CONTACT_LIST`` (topic ``TOPIC``) created."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, authenticate: bool = False) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.authenticate = authenticate
        self.url = f"http://{host}:{self.port}"
        self.key = AccessKey("AKIASTANDINEXAMPLE", "standin-secret")
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SesEmulator:
        env = dict(os.environ)
        if self.authenticate:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(_SETUP_CALLS)
        else:
            env.pop("INITIAL_NO_AUTH_ACTION_COUNT", None)
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
            self._wait_ready()
            if self.authenticate:
                self.key = self._iam_key()
            self._raw_client("sesv2", self.key).create_contact_list(
                ContactListName=CONTACT_LIST,
                Topics=[
                    {"TopicName": TOPIC, "DisplayName": "Marketing", "DefaultSubscriptionStatus": "OPT_IN"}
                ],
            )
        except BaseException:
            self.__exit__(None, None, None)
            raise
        log.info("SES emulator (moto) serving", url=self.url, authenticate=self.authenticate)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        assert self._process is not None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ConfigurationError(
                    "the SES emulator did not start: are moto, flask and flask-cors installed (make install)?"
                )
            try:
                httpx.get(f"{self.url}/moto-api/", timeout=1.0)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        raise ConfigurationError(f"the SES emulator did not answer on {self.url} within {timeout:.0f}s")

    def _raw_client(self, service: str, key: AccessKey) -> Any:  # botocore ships no types
        return botocore.session.Session().create_client(
            service,
            region_name=REGION,
            endpoint_url=self.url,
            aws_access_key_id=key.access_key_id,
            aws_secret_access_key=key.secret_access_key,
        )

    def _iam_key(self) -> AccessKey:
        iam = self._raw_client("iam", self.key)
        iam.create_user(UserName="optout")
        iam.put_user_policy(UserName="optout", PolicyName="ses", PolicyDocument=_SES_POLICY)
        made = iam.create_access_key(UserName="optout")["AccessKey"]
        return AccessKey(str(made["AccessKeyId"]), str(made["SecretAccessKey"]))

    def client(self, key: AccessKey | None = None) -> SesV2Client:
        """A botocore ``sesv2`` client for the emulator (this emulator's key by default)."""
        client: SesV2Client = self._raw_client("sesv2", key or self.key)
        return client

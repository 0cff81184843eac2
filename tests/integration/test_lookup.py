"""The lookup API (``optout run lookup``) and the compacted topic ``optout.suppressions`` with
its client, against the real broker and database: the state is made by intake (in a
thread) from published opt-outs and opt-ins, the API answers over ASGI from PostgreSQL.

* suppressed, never-suppressed and opted-back-in people, by every identifier kind (raw email
  and phone normalized as intake does, their SHA-256, the customer id), one by one and in a
  batch; wrong or missing API keys get 401, a second (rotated) key works;
* a few hundred mixed opt-outs and opt-ins: the topic, read by ``SuppressionClient``, and the
  API agree for every person and scope; the client follows a change made afterwards.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr
from starlette.testclient import TestClient

from services.common.contract import CONCRETE_SCOPES
from services.common.settings import Settings
from services.domain.identity import normalize_phone, sha256_hex
from services.intake.service import run as run_intake
from services.lookup.app import create_app
from services.publisher.publish import RequestPublisher
from services.suppression.client import SuppressionClient
from tests.support.pipeline import isolated_settings, running, wait_until

pytestmark = pytest.mark.integration

KEY = "lookup-test-key-0123456789"
ROTATED = "lookup-test-key-rotated-abcdef"
AUTH = {"authorization": f"Bearer {KEY}"}


@pytest.fixture
def cfg(base_settings: dict[str, Any]) -> Iterator[Settings]:
    settings = isolated_settings(base_settings, lookup_api_keys=[SecretStr(KEY), SecretStr(ROTATED)])
    with running(run_intake, settings, "intake"):
        yield settings


def _publish(cfg: Settings, requests: list[dict[str, Any]]) -> list[str]:
    publisher = RequestPublisher(cfg)
    ids = []
    prepared = []
    for fields in requests:
        event_id = f"evt-{uuid.uuid4()}"
        ids.append(event_id)
        prepared.append(publisher.prepare({"event_id": event_id, **fields}))
    publisher.publish(prepared)
    return ids


def _recorded(cfg: Settings, count: int) -> None:
    def done() -> bool:
        with psycopg.connect(cfg.dsn()) as conn:
            row = conn.execute("SELECT count(*) FROM requests").fetchone()
        return row is not None and row[0] >= count

    wait_until(done, timeout=90, message=f"{count} requests recorded")


def test_answers_by_every_identifier_and_refuses_wrong_keys(cfg: Settings) -> None:
    tag = uuid.uuid4().hex[:8]
    now = datetime.now(UTC)
    ada = {"email": f"Ada.{tag}@Example.com", "phone": "+1 202-555-0143", "customer_id": f"c-ada-{tag}"}
    bob = {"email": f"bob.{tag}@example.com", "phone": "+1 202-555-0178", "customer_id": f"c-bob-{tag}"}
    out_ada, out_bob, in_bob = _publish(
        cfg,
        [
            {
                **ada,
                "scopes": ["EMAIL_MARKETING", "THIRD_PARTY_SHARING"],
                "requested_at": now - timedelta(minutes=3),
            },
            {**bob, "scopes": ["ALL"], "requested_at": now - timedelta(minutes=3)},
            {**bob, "scopes": ["ALL"], "action": "OPT_IN", "requested_at": now - timedelta(minutes=2)},
        ],
    )
    _recorded(cfg, 3)
    never = {"email": f"carol.{tag}@example.com", "phone": "+1 202-555-0199", "customer_id": f"c-carol-{tag}"}

    def identifiers(person: dict[str, str]) -> list[dict[str, str]]:
        e164 = normalize_phone(person["phone"])
        return [
            {"email": f"  {person['email'].upper()} "},  # normalized as intake does
            {"email_sha256": sha256_hex(person["email"].lower()).upper()},
            {"phone": person["phone"].replace("+1 ", "(").replace("-", ") ", 1)},  # (202) 555-0143
            {"phone_sha256": sha256_hex(e164)},
            {"customer_id": person["customer_id"]},
        ]

    with TestClient(create_app(cfg)) as client:
        for params in identifiers(ada):
            body = client.get("/v1/suppressions", params=params, headers=AUTH).json()
            assert body["suppressed"] is True, params
            assert set(body["scopes"]) == {"EMAIL_MARKETING", "THIRD_PARTY_SHARING"}
            assert {s["request_id"] for s in body["scopes"].values()} == {out_ada}
            assert body["scopes"]["EMAIL_MARKETING"]["action"] == "OPT_OUT"
            assert datetime.fromisoformat(body["scopes"]["THIRD_PARTY_SHARING"]["since"]) == (
                now - timedelta(minutes=3)
            ).replace(microsecond=(now.microsecond // 1000) * 1000)
            postal = client.get(
                "/v1/suppressions", params={**params, "scope": "POSTAL_MARKETING"}, headers=AUTH
            )
            assert postal.json() == {**body, "suppressed": False, "scopes": {}}
        for params in identifiers(bob):  # opted back in: not suppressed, with the opt-in
            body = client.get("/v1/suppressions", params=params, headers=AUTH).json()
            assert body["suppressed"] is False, params
            assert set(body["scopes"]) == {s.value for s in CONCRETE_SCOPES}
            assert all(s == {**s, "suppressed": False, "request_id": in_bob} for s in body["scopes"].values())
            assert all(s["action"] == "OPT_IN" for s in body["scopes"].values())
        for params in identifiers(never):
            body = client.get("/v1/suppressions", params=params, headers=AUTH).json()
            assert (body["suppressed"], body["scopes"]) == (False, {}), params

        batch = [*identifiers(ada), *identifiers(bob), *identifiers(never), {"email": "not-an-email"}]
        answered = client.post(
            "/v1/suppressions:check",
            json={"identifiers": batch, "scope": "EMAIL_MARKETING"},
            headers={"x-api-key": ROTATED},  # the second key: keys rotate
        )
        assert answered.status_code == 200
        results = answered.json()["results"]
        assert [r.get("suppressed") for r in results] == [True] * 5 + [False] * 10 + [None]
        assert results[-1] == {"error": "invalid_email"}
        assert answered.json()["suppressed"] == 5
        assert all(r["scopes"]["EMAIL_MARKETING"]["request_id"] == in_bob for r in results[5:10])
        assert out_bob not in answered.text

        one = {"email": ada["email"]}
        for headers in (
            {},
            {"authorization": "Bearer wrong-key-0123456789"},
            {"x-api-key": KEY[:-1]},
            {"authorization": KEY},
        ):
            assert client.get("/v1/suppressions", params=one, headers=headers).status_code == 401
            assert (
                client.post(
                    "/v1/suppressions:check", json={"identifiers": [one]}, headers=headers
                ).status_code
                == 401
            )
        assert (
            client.get("/v1/suppressions", params={**one, "customer_id": "x"}, headers=AUTH).status_code
            == 400
        )
        assert (
            client.get("/v1/suppressions", params={**one, "scope": "NOPE"}, headers=AUTH).status_code == 400
        )
        too_many = {"identifiers": [one] * 1001}
        assert client.post("/v1/suppressions:check", json=too_many, headers=AUTH).status_code == 400


def test_topic_and_client_agree_with_the_api(cfg: Settings) -> None:
    rng = random.Random(13)
    tag = uuid.uuid4().hex[:8]
    # Issue #13's "done when": 10,000 mixed opt-outs and opt-ins.
    people = [(f"p{i}.{tag}@example.com", f"c{i}-{tag}") for i in range(1000)]
    now = datetime.now(UTC)
    # Scopes the default destinations file serves with an email and a customer id.
    scopes = [["EMAIL_MARKETING"], ["THIRD_PARTY_SHARING"], ["EMAIL_MARKETING", "THIRD_PARTY_SHARING"]]
    requests = []
    for _ in range(10_000):
        email, customer = rng.choice(people)
        chosen = rng.choice(scopes)
        both = {"email": email, "customer_id": customer}  # the partners need the customer id
        who = both if "THIRD_PARTY_SHARING" in chosen else rng.choice([{"email": email}, both])
        action = rng.choice(["OPT_OUT", "OPT_OUT", "OPT_IN"])
        at = now - timedelta(seconds=rng.randrange(1, 3600))
        requests.append({**who, "scopes": chosen, "action": action, "requested_at": at})
    _publish(cfg, requests)
    _recorded(cfg, len(requests))

    client = SuppressionClient.from_settings(cfg)
    try:

        def loaded_all() -> bool:  # intake publishes the states just after its commit
            client.load(timeout=30)
            with psycopg.connect(cfg.dsn()) as conn:
                rows = conn.execute("SELECT DISTINCT subject FROM suppression_state WHERE suppressed")
                suppressed = {r[0] for r in rows.fetchall()}
            return client.subjects() == suppressed

        wait_until(loaded_all, timeout=60, message="the topic holds the suppressed subjects")
        asked = [{"email": e} for e, _ in people] + [{"customer_id": c} for _, c in people]
        agreed = 0
        with TestClient(create_app(cfg)) as api:
            for scope in (*(s.value for s in CONCRETE_SCOPES), None):
                results = []
                for start in range(0, len(asked), 1000):  # the API's batch limit
                    check = {"identifiers": asked[start : start + 1000], "scope": scope}
                    answer = api.post("/v1/suppressions:check", json=check, headers=AUTH)
                    results += answer.json()["results"]
                for identifier, body in zip(asked, results, strict=True):
                    local = client.is_suppressed(**identifier, scope=scope)
                    assert local == body["suppressed"], (identifier, scope)
                    held = client.states(body["subject"])  # none: a tombstone (nothing suppressed)
                    if held:
                        ids = {x.scope: x.request_id for x in held if scope is None or x.scope == scope}
                        assert ids == {k: v["request_id"] for k, v in body["scopes"].items()}
                    agreed += local
        assert agreed > 500  # the mix leaves people suppressed, and others opted back in
        assert len(client) < len(people) * 2

        client.follow()
        late = {"email": f"late.{tag}@example.com", "customer_id": f"late-{tag}"}
        assert not client.is_suppressed(**late)
        _publish(cfg, [{**late, "scopes": ["THIRD_PARTY_SHARING"], "requested_at": now}])
        wait_until(
            lambda: client.is_suppressed(email=late["email"], scope="THIRD_PARTY_SHARING"),
            timeout=60,
            message="the client follows a new opt-out",
        )
        assert not client.is_suppressed(email=late["email"], scope="EMAIL_MARKETING")
        opt_in = {**late, "scopes": ["ALL"], "action": "OPT_IN", "requested_at": now + timedelta(seconds=1)}
        _publish(cfg, [opt_in])
        wait_until(lambda: not client.is_suppressed(**late), timeout=60, message="the tombstone")
    finally:
        client.close()

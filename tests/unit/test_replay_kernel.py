"""The replay's compiled kernel (services/replay/_kernel.c) against the Python path it replaces:
for any batch of rows (every subject kind, sealed entries or none, several keys, any
destination shape), ``BatchSender.prepare`` with the kernel gives exactly what
``prepare_python`` gives (the same command ids, bytes, skipped subjects), and a batch with an
entry that cannot be opened raises the same error either way. The Python path itself is
proven equal to the codec's bytes in test_replay_encode.py."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import cast

import pytest
from confluent_kafka import Producer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.avro import default_codec
from services.common.clock import ManualClock
from services.common.contract import Destination, Identifier, Scope
from services.common.sealing import KeyRing, SealError
from services.common.settings import Settings
from services.replay import kernel, run
from services.replay.run import BatchSender, Row
from services.suppression.entries import context
from tests.unit.test_replay_encode import ADDRESS

# `make install` builds the kernel: CI (a fresh clone) must have it, so there a missing kernel
# fails this module instead of skipping it.
pytestmark = pytest.mark.skipif(
    not kernel.AVAILABLE and not os.environ.get("CI"), reason="the kernel is not compiled (make install)"
)


def test_the_kernel_is_compiled() -> None:
    assert kernel.AVAILABLE, "services/replay/_kernel.c is not built: run `make install`"


NOW = datetime(2026, 12, 1, 12, 0, 0, 123456, tzinfo=UTC)
KEYS = {"k1": bytes(range(32)), "old-2": bytes(range(32, 64))}
RING = KeyRing(KEYS, "k1")
RINGS = {kid: KeyRing(KEYS, kid) for kid in KEYS}
SETTINGS = Settings()
OTHER_RING = KeyRing({"k1": bytes(range(1, 33))}, "k1")  # same kid, another key: forged
SEALED_KIND = {"email_sha256": "email", "phone_sha256": "phone", "postal": "postal"}
PREFIXES = ["cust", "email_sha256", "phone_sha256", "postal", "device_sha256", "other"]

destinations = st.builds(
    lambda ident, needs: Destination(
        "dest_x", frozenset({Scope.EMAIL_MARKETING}), frozenset(ident), frozenset(needs)
    ),
    st.sets(st.sampled_from(list(Identifier))),
    st.sets(st.sampled_from(list(Identifier)), min_size=1),
)
scope_tuples = st.lists(st.sampled_from([s.value for s in Scope]), max_size=3, unique=True).map(tuple)
# From year 1 to 9999 (the Python path turns a postal subject's since into a datetime).
millis = st.integers(min_value=-62135596800000, max_value=253402300799999) | st.integers(0, 2**42)


@st.composite
def rows(draw: st.DrawFn, sealed_kinds: frozenset[str]) -> Row:
    prefix = draw(st.sampled_from(PREFIXES))
    value = draw(st.sampled_from(["ab" * 32, "C-1:x", ""]) | st.text(max_size=70))
    subject = f"{prefix}:{value}" if prefix != "other" else value.replace(":", "")
    sealed = None
    if prefix in sealed_kinds and draw(st.booleans()):
        kind = SEALED_KIND[prefix]
        if prefix == "postal":
            plain = json.dumps(ADDRESS).encode()
        else:
            plain = draw(
                st.sampled_from(["ada@example.com", "+447700900123"]) | st.text(max_size=80)
            ).encode()
        ring = RINGS[draw(st.sampled_from(sorted(KEYS)))]
        sealed = ring.seal(plain, context(kind, value))
    return (subject, draw(scope_tuples), draw(millis), sealed, ("evt-1",))


def _sender(dest: Destination) -> BatchSender:
    return BatchSender(
        SETTINGS,
        dest,
        "20261201T120000000000Z-dest_x-0a1b2c3d",
        None,
        None,
        cast(Producer, None),  # never produces here
        RING,
        default_codec(),
        ManualClock(NOW),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), dest=destinations)
def test_the_kernel_gives_what_the_python_path_gives(data: st.DataObject, dest: Destination) -> None:
    sender = _sender(dest)
    assert sender.kernel is not None
    batch = data.draw(st.lists(rows(frozenset(sender.reader.sealed_kinds)), max_size=12))
    fast = sender.prepare(batch)
    slow = sender.prepare_python(batch, NOW)
    assert fast == slow


BAD = [
    "k1",  # no dot
    "k1.",  # empty body
    "k1.a.b",  # two dots
    "zz.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",  # unknown key id
    "k1.A",  # one character: not base64
    "k1.AAAA+AAA",  # not base64url
    "k1.AAAA",  # too short for a nonce and a tag
]


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("where", [0, 2])
def test_an_entry_that_cannot_be_opened_fails_the_same_way(bad: str, where: int) -> None:
    dest = Destination(
        "dest_x",
        frozenset({Scope.EMAIL_MARKETING}),
        frozenset({Identifier.EMAIL, Identifier.EMAIL_SHA256}),
        frozenset({Identifier.EMAIL}),
    )
    sender = _sender(dest)
    h = "ab" * 32
    good = RING.seal(b"ada@example.com", context("email", h))
    batch: list[Row] = [(f"email_sha256:{h}", ("EMAIL_MARKETING",), 1, good, ()) for _ in range(3)]
    batch[where] = (f"email_sha256:{h}", ("EMAIL_MARKETING",), 1, bad, ())
    with pytest.raises(SealError) as fast:
        sender.prepare(batch)
    with pytest.raises(SealError) as slow:
        sender.prepare_python(batch, NOW)
    assert fast.value.reason == slow.value.reason


@pytest.mark.parametrize(
    "sealed",
    [
        OTHER_RING.seal(b"ada@example.com", context("email", "ab" * 32)),  # forged
        RING.seal(b"ada@example.com", context("email", "cd" * 32)),  # another row's entry
        RING.seal(b"ada@example.com", context("phone", "ab" * 32)),  # another kind's entry
    ],
    ids=["forged", "another-row", "another-kind"],
)
def test_a_forged_or_moved_entry_is_refused(sealed: str) -> None:
    dest = Destination(
        "dest_x",
        frozenset({Scope.EMAIL_MARKETING}),
        frozenset({Identifier.EMAIL}),
        frozenset({Identifier.EMAIL}),
    )
    with pytest.raises(SealError, match="forged"):
        _sender(dest).prepare([(f"email_sha256:{'ab' * 32}", ("EMAIL_MARKETING",), 1, sealed, ())])


def test_a_plaintext_that_is_not_utf8_fails_the_same_way() -> None:
    dest = Destination(
        "dest_x",
        frozenset({Scope.EMAIL_MARKETING}),
        frozenset({Identifier.EMAIL}),
        frozenset({Identifier.EMAIL}),
    )
    sealed = RING.seal(b"\xff\xfe", context("email", "ab" * 32))
    batch: list[Row] = [(f"email_sha256:{'ab' * 32}", ("EMAIL_MARKETING",), 1, sealed, ())]
    with pytest.raises(UnicodeDecodeError):
        _sender(dest).prepare(batch)
    with pytest.raises(UnicodeDecodeError):
        _sender(dest).prepare_python(batch, NOW)


def test_the_kernel_builds_the_usual_rows_itself() -> None:
    """Raw emails, hashes and customer ids are built by the kernel (not left to Python)."""
    dest = Destination(
        "dest_x",
        frozenset({Scope.EMAIL_MARKETING}),
        frozenset({Identifier.EMAIL, Identifier.PHONE_SHA256, Identifier.CUSTOMER_ID}),
        frozenset({Identifier.EMAIL, Identifier.PHONE_SHA256, Identifier.CUSTOMER_ID}),
    )
    sender = _sender(dest)
    assert sender.kernel is not None
    h = "ab" * 32
    batch: list[Row] = [
        (
            f"email_sha256:{h}",
            ("EMAIL_MARKETING",),
            1,
            RING.seal(b"ada@example.com", context("email", h)),
            ("e1",),
        ),
        (f"phone_sha256:{h}", ("EMAIL_MARKETING",), 2, None, ("e2",)),
        ("cust:C-1", ("EMAIL_MARKETING",), 3, None, ("e3",)),
        (f"device_sha256:{h}", ("EMAIL_MARKETING",), 4, None, ("e4",)),
    ]
    sender.builder.at(NOW)
    built = sender.kernel.build(batch)
    assert built is not None
    assert [type(one) for one in built] == [tuple, tuple, tuple, bool]
    assert built[:3] == [
        sender.builder.build(s, sc, t, "ada@example.com" if n == 0 else None)
        for n, (s, sc, t, _, _) in enumerate(batch[:3])
    ]


@settings(max_examples=200, deadline=None)
@given(
    entries=st.dictionaries(
        st.text(st.characters(blacklist_characters=" \n", blacklist_categories=["Cs"]), max_size=8),
        st.text(st.characters(blacklist_characters="\n", blacklist_categories=["Cs"]), max_size=10),
        max_size=8,
    ),
    values=st.lists(st.text(st.characters(blacklist_categories=["Cs"]), max_size=8), max_size=8),
)
def test_the_compiled_sealed_entries_are_the_python_ones(entries: dict[str, str], values: list[str]) -> None:
    keys = list(entries)
    chosen = [*values, *keys[:3]]
    rows: list[Row] = [(f"email_sha256:{v}", ("S",), n, None, ("e",)) for n, v in enumerate(chosen)]
    rows.append(("no-colon", ("S",), 0, None, ("e",)))
    text = "\n".join(f"{k} {v}" for k, v in entries.items()) or None
    where = list(range(0, len(rows), 2))
    fast, slow = list(rows), list(rows)
    assert kernel.attach_sealed(fast, where, text)
    run.attach_sealed_python(slow, where, text)
    assert fast == slow


def test_a_ring_of_more_keys_than_the_kernel_takes_uses_the_python_path() -> None:
    keys = {f"k{n}": bytes([n]) * 32 for n in range(kernel.MAX_KEYS + 1)}
    dest = Destination(
        "dest_x",
        frozenset({Scope.EMAIL_MARKETING}),
        frozenset({Identifier.EMAIL}),
        frozenset({Identifier.EMAIL}),
    )
    sender = BatchSender(
        SETTINGS,
        dest,
        "r",
        None,
        None,
        cast(Producer, None),
        KeyRing(keys, "k0"),
        default_codec(),
        ManualClock(NOW),
    )
    assert sender.kernel is None

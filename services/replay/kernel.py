"""The compiled per-batch path of the replay (services/replay/_kernel.c, built by ``make
install``), and its Python face. Pure (no I/O).

``build_batch`` does, for a batch's rows, what ``BatchSender.raw_values_python`` and
``ReplayBuilder.build`` do row by row in Python: open each sealed entry (AES-256-GCM through
OpenSSL's EVP API), compute the command id (UUIDv5) and write the Avro bytes, for the subject
kinds of the fixed shape (``cust``, ``email_sha256``, ``phone_sha256``). Per row it gives
``(command id, bytes)``, None (the destination cannot act on the subject) or False (left to
the Python path: a postal address, a device, anything unusual); None for the whole batch
when a sealed entry cannot be opened there (the Python path then raises the precise
``SealError``). ``attach_sealed`` gives the batch reader's rows their sealed entries
(``attach_sealed_python``; 0.3 against 1.0 µs a row).
tests/unit/test_replay_kernel.py proves each identical to its Python path; without the
compiled module (``AVAILABLE`` false) the replay runs the Python paths.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from services.common.contract import Identifier
from services.common.sealing import KeyRing
from services.replay.encode import ReplayBuilder
from services.suppression.entries import context

# (subject, scopes, since, sealed entry, ...): services/replay/run.py's rows
Row = tuple[str, tuple[str, ...], int, str | None, tuple[str, ...]]
Built = tuple[str, bytes] | Literal[False] | None
BuildBatch = Callable[
    [
        list[Row],
        dict[str, bytes],
        bytes,
        bytes,
        dict[tuple[str, ...], bytes],
        Callable[[Sequence[str]], bytes],
        bytes,
        bytes,
        bytes,
        bytes,
        int,
        int,
        int,
    ],
    list[Built] | None,
]

# The kernel's flags per subject kind (_kernel.c).
HAS_HASH = 1  # the destination takes the hash (for cust: the customer id)
HAS_RAW = 2  # the destination takes the raw value (its sealed entry is read)
NEEDS_HASH = 4  # the hash (customer id) satisfies requires_one_of
NEEDS_RAW = 8  # the raw value satisfies requires_one_of


AttachSealed = Callable[[list[Row], list[int], str | None], None]


def _load() -> tuple[BuildBatch, AttachSealed] | None:
    try:
        from services.replay._kernel import attach_sealed, build_batch
    except ImportError:  # not compiled: `make install` builds it
        return None
    return build_batch, attach_sealed


_KERNEL = _load()
_BUILD = _KERNEL[0] if _KERNEL is not None else None
AVAILABLE = _KERNEL is not None


def attach_sealed(rows: list[Row], where: list[int], text: str | None) -> bool:
    """``BatchReader.attach_sealed_python`` compiled, in place (False: not compiled)."""
    if _KERNEL is None:
        return False
    _KERNEL[1](rows, where, text)
    return True


def _flags(
    has: frozenset[Identifier], needs: frozenset[Identifier], hashed: Identifier, raw: Identifier | None
) -> int:
    flags = 0
    if hashed in has:
        flags |= HAS_HASH
    if hashed in needs:
        flags |= NEEDS_HASH
    if raw is not None and raw in has:
        flags |= HAS_RAW
    if raw is not None and raw in needs:
        flags |= NEEDS_RAW
    return flags


class Kernel:
    """``build_batch`` for one run: the ring's keys and the builder's per-run parts."""

    def __init__(self, ring: KeyRing, builder: ReplayBuilder, build: BuildBatch) -> None:
        has = frozenset(builder.dest.identifiers)
        needs = frozenset(builder.dest.requires_one_of)
        self._build = build
        self._keys = ring.key_material()
        self._builder = builder
        # The associated data of an entry is context(kind, sha256) + kid: its part before the hash.
        self._email_context = context("email", "")[:-1]
        self._phone_context = context("phone", "")[:-1]
        self._flags = (
            _flags(has, needs, Identifier.CUSTOMER_ID, None),
            _flags(has, needs, Identifier.EMAIL_SHA256, Identifier.EMAIL),
            _flags(has, needs, Identifier.PHONE_SHA256, Identifier.PHONE),
        )

    def build(self, rows: list[Row]) -> list[Built] | None:
        """Each row's command (see the module's docstring), at the builder's ``at``."""
        encoder = self._builder.encoder
        return self._build(
            rows,
            self._keys,
            self._email_context,
            self._phone_context,
            encoder.scope_cache,
            encoder.scopes,
            encoder.head,
            encoder.fixed,
            encoder.times,
            self._builder.ids.prefix,
            *self._flags,
        )


MAX_KEYS = 16  # _kernel.c's MAX_KIDS


def kernel(ring: KeyRing, builder: ReplayBuilder) -> Kernel | None:
    """The compiled path for this run, or None when the module is not built (or the ring
    holds more keys than it takes)."""
    if _BUILD is None or len(ring.kids) > MAX_KEYS:
        return None
    return Kernel(ring, builder, _BUILD)

"""Opting out and back in: the newest-wins rule per person and scope. Pure (no I/O).

A *subject* is one pseudonymous identifier of a person, as intake's subject keys write it:
``cust:<customer id>``, ``email_sha256:<hex>``, ``phone_sha256:<hex>``, ``postal:<hex>``,
``device_sha256:<hex>``. A request names every subject it has an identifier for. State is
kept per (subject, concrete scope); ``ALL`` stands for every scope of ``CONCRETE_SCOPES``.

The rule (docs/contract.md, "Opting back in"): per (subject, scope) the request with the
newest ``requested_at`` wins; on a tie the opt-out wins. So that the final state does not
depend on the order requests arrive in, even for two requests of the same action and the
same instant, requests are totally ordered by ``(requested_at, is opt-out, event_id)`` and the
greatest one wins (``rank``); intake's SQL guard compares the same triple.

What a request *does* (which destinations get a command) follows from the state once it
has been applied:

* an opt-out takes effect for a scope when at least one of its subjects is then suppressed for
  it (suppress more, never less): whether it won, or a newer opt-out holds (sending it again
  is harmless, and the person gets their confirmation);
* an opt-in takes effect for a scope only when every one of its subjects is then opted in:
  one identifier with a newer opt-out keeps the person suppressed for that scope.

A request that takes effect for no scope is *superseded* (a newer request of the other action
holds): intake records it, sends no command, and closes it (see docs/contract.md). Whatever
reaches a destination, its connector applies a command only if it is newer than the last one
applied there for the person (services/connectors/kit.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from services.common.contract import CONCRETE_SCOPES, Action, Scope
from services.domain.validation import OptOutRequest

Key = tuple[str, Scope]  # (subject, concrete scope)


@dataclass(frozen=True)
class StateEntry:
    """The current preference of one subject for one concrete scope."""

    suppressed: bool
    since: datetime  # the winning request's requested_at
    event_id: str  # the winning request
    action: Action

    @property
    def rank(self) -> tuple[datetime, bool, str]:
        """Newest first; on the same instant the opt-out (``suppressed``), then the event id."""
        return (self.since, self.suppressed, self.event_id)


@dataclass(frozen=True)
class Change:
    subject: str
    scope: Scope
    entry: StateEntry


@dataclass(frozen=True)
class Decision:
    """What one request changes: the state rows it wins, and the scopes it takes effect for."""

    changes: tuple[Change, ...]
    effective: frozenset[Scope]

    @property
    def superseded(self) -> bool:
        return not self.effective


def subjects_of(request: OptOutRequest) -> tuple[str, ...]:
    """Every subject (pseudonymous identifier) the request names, with those the customer
    directory added to it, sorted (computed once per request: ``OptOutRequest.subjects``)."""
    return request.subjects


def concrete_scopes(scopes: Iterable[Scope]) -> tuple[Scope, ...]:
    """The concrete scopes ``scopes`` stand for (``ALL``: all of them), in contract order."""
    if isinstance(scopes, tuple):
        return _concrete_of(scopes)
    return _concrete(scopes)


def _concrete(scopes: Iterable[Scope]) -> tuple[Scope, ...]:
    wanted = set(scopes)
    if Scope.ALL in wanted:
        return CONCRETE_SCOPES
    return tuple(s for s in CONCRETE_SCOPES if s in wanted)


@lru_cache(maxsize=256)
def _concrete_of(scopes: tuple[Scope, ...]) -> tuple[Scope, ...]:
    """A request's scopes are a sorted tuple: few combinations exist."""
    return _concrete(scopes)


def entry_of(request: OptOutRequest) -> StateEntry:
    return StateEntry(
        suppressed=request.action is Action.OPT_OUT,
        since=request.requested_at,
        event_id=request.event_id,
        action=request.action,
    )


def proposed(request: OptOutRequest) -> list[Change]:
    """The state the request asks for, one change per (subject, concrete scope)."""
    entry = entry_of(request)
    return [
        Change(subject, scope, entry)
        for subject in subjects_of(request)
        for scope in concrete_scopes(request.scopes)
    ]


def wins(candidate: StateEntry, current: StateEntry | None) -> bool:
    """Does ``candidate`` replace ``current``? (Newest wins; on a tie the opt-out.)"""
    return current is None or candidate.rank > current.rank


def effective_scopes(request: OptOutRequest, suppressed: Mapping[Key, bool]) -> frozenset[Scope]:
    """The scopes the request takes effect for, given whether each of its (subject, scope)
    rows is suppressed once it has been applied (a missing row: not suppressed)."""
    subjects = subjects_of(request)
    scopes = concrete_scopes(request.scopes)
    if request.action is Action.OPT_OUT:
        return frozenset(s for s in scopes if any(suppressed.get((subj, s), False) for subj in subjects))
    return frozenset(s for s in scopes if not any(suppressed.get((subj, s), False) for subj in subjects))


def decide(current: Mapping[Key, StateEntry], request: OptOutRequest) -> Decision:
    """What ``request`` changes given the current state of its subjects (missing: no state)."""
    changes = tuple(c for c in proposed(request) if wins(c.entry, current.get((c.subject, c.scope))))
    after = {k: e.suppressed for k, e in current.items()}
    after.update({(c.subject, c.scope): c.entry.suppressed for c in changes})
    return Decision(changes, effective_scopes(request, after))


def apply(state: dict[Key, StateEntry], decision: Decision) -> None:
    """Write a decision's changes into ``state`` (in place)."""
    for change in decision.changes:
        state[(change.subject, change.scope)] = change.entry


def newest_per_key(requests: Iterable[OptOutRequest]) -> dict[Key, StateEntry]:
    """The winner of each (subject, scope) among ``requests`` alone: the state they lead to
    from nothing, whatever their order (what intake writes for one chunk, guarded by
    ``wins`` against the stored state). The same as applying ``proposed`` changes with
    ``wins``, without building them (intake calls this for every chunk)."""
    state: dict[Key, StateEntry] = {}
    for request in requests:
        entry = entry_of(request)
        rank = entry.rank
        scopes = concrete_scopes(request.scopes)
        for subject in subjects_of(request):
            for scope in scopes:
                key = (subject, scope)
                current = state.get(key)
                if current is None or rank > current.rank:
                    state[key] = entry
    return state


def serves(destination_scopes: Iterable[Scope], effective: Iterable[Scope]) -> bool:
    """Does a destination serving ``destination_scopes`` get a command for ``effective``?"""
    return not frozenset(destination_scopes).isdisjoint(effective)

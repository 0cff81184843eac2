"""When an opt-out is legally due, from its jurisdiction and scopes.

The strictest rule that applies wins. Business days are Monday to Friday (public
holidays are not subtracted, which makes every deadline here earlier, never later).

| rule | applies to | due after |
|---|---|---|
| mailbox providers (Gmail/Yahoo bulk-sender rules) | email marketing, anywhere | 48 hours |
| CAN-SPAM | email marketing, US | 10 business days |
| TCPA (FCC 2024 revocation rule) | SMS marketing, US | 10 business days |
| CASL | email and SMS marketing, Canada (CA, CA-xx) | 10 business days |
| CCPA/CPRA | every scope, US-CA | 15 business days |
| GDPR art. 12(3) | every scope, EU/EEA/UK | 1 month |
| default | only when no rule above applies | 15 business days |
"""

from __future__ import annotations

import calendar
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

from services.common.contract import Scope

EEA_AND_UK = frozenset(
    [
        "AT",
        "BE",
        "BG",
        "HR",
        "CY",
        "CZ",
        "DK",
        "EE",
        "FI",
        "FR",
        "DE",
        "GR",
        "HU",
        "IE",
        "IT",
        "LV",
        "LT",
        "LU",
        "MT",
        "NL",
        "PL",
        "PT",
        "RO",
        "SK",
        "SI",
        "ES",
        "SE",
        "IS",
        "LI",
        "NO",
        "GB",
        "UK",
    ]
)


def add_business_days(start: datetime, days: int) -> datetime:
    """``start`` plus ``days`` business days (Mon-Fri), keeping the time of day."""
    if days <= 0:
        return start
    moment = start
    if moment.weekday() >= 5:  # counting from a weekend is counting from its Friday
        moment -= timedelta(days=moment.weekday() - 4)
    weeks, remaining = divmod(days, 5)
    moment += timedelta(weeks=weeks)  # from a weekday, a week is five business days
    while remaining > 0:
        moment += timedelta(days=1)
        if moment.weekday() < 5:
            remaining -= 1
    return moment


def add_months(start: datetime, months: int) -> datetime:
    month_index = start.month - 1 + months
    year = start.year + month_index // 12
    month = month_index % 12 + 1
    day = min(start.day, calendar.monthrange(year, month)[1])
    return start.replace(year=year, month=month, day=day)


def _is_us(j: str) -> bool:
    return j == "US" or j.startswith("US-")


def _is_gdpr(j: str) -> bool:
    return j in ("EU", "EEA") or j.split("-")[0] in EEA_AND_UK


@dataclass(frozen=True)
class DeadlineRule:
    name: str
    scopes: frozenset[Scope] | None  # None: every scope
    jurisdiction: Callable[[str], bool] | None  # None: anywhere
    due: Callable[[datetime], datetime]

    def applies(self, scopes: frozenset[Scope], jurisdiction: str) -> bool:
        if self.scopes is not None and not (self.scopes & scopes):
            return False
        return self.jurisdiction is None or self.jurisdiction(jurisdiction)


_EMAIL = frozenset({Scope.EMAIL_MARKETING, Scope.ALL})
_SMS = frozenset({Scope.SMS_MARKETING, Scope.ALL})
# CASL covers commercial electronic messages: email and text messages.
_ELECTRONIC = frozenset({Scope.EMAIL_MARKETING, Scope.SMS_MARKETING, Scope.ALL})


def _is_canada(j: str) -> bool:
    return j == "CA" or j.startswith("CA-")


RULES: tuple[DeadlineRule, ...] = (
    DeadlineRule("mailbox-providers-48h", _EMAIL, None, lambda t: t + timedelta(hours=48)),
    DeadlineRule("CAN-SPAM", _EMAIL, _is_us, lambda t: add_business_days(t, 10)),
    # FCC 2024 TCPA revocation rule (47 CFR 64.1200(a)(10)): honour a revocation of consent
    # "by any reasonable means", e.g. a STOP reply, within 10 business days.
    DeadlineRule("TCPA", _SMS, _is_us, lambda t: add_business_days(t, 10)),
    # CASL s.11(3): give effect to an unsubscribe within 10 business days.
    DeadlineRule("CASL", _ELECTRONIC, _is_canada, lambda t: add_business_days(t, 10)),
    DeadlineRule("CCPA", None, lambda j: j == "US-CA", lambda t: add_business_days(t, 15)),
    DeadlineRule("GDPR", None, _is_gdpr, lambda t: add_months(t, 1)),
    DeadlineRule("default", None, None, lambda t: add_business_days(t, 15)),
)


def governing_rule_of(
    requested_at: datetime, scopes: Iterable[Scope], jurisdiction: str | None
) -> DeadlineRule:
    """The rule that sets the due time: the earliest of those that apply (the default
    rule only when no other applies)."""
    applicable = _applicable(frozenset(scopes), (jurisdiction or "").strip().upper())
    if len(applicable) == 1:
        return applicable[0]
    return min(applicable, key=lambda r: r.due(requested_at))


@lru_cache(maxsize=1024)
def _applicable(scopes: frozenset[Scope], jurisdiction: str) -> tuple[DeadlineRule, ...]:
    """The rules that apply to a combination of scopes and jurisdiction (few combinations
    exist, so this is computed once per combination)."""
    found = tuple(r for r in RULES[:-1] if r.applies(scopes, jurisdiction))
    return found or (RULES[-1],)


def deadline_of(
    requested_at: datetime, scopes: tuple[Scope, ...], jurisdiction: str | None
) -> tuple[DeadlineRule, datetime]:
    """``governing_rule_of`` and its due time, computed once per combination of scopes,
    jurisdiction and day: every rule keeps the time of day (hours, business days and months
    are added to the date), so the rule that wins at midnight wins all day, and the due time
    is the midnight one plus the time of day."""
    midnight = requested_at.replace(hour=0, minute=0, second=0, microsecond=0)
    rule, due_at_midnight = _deadline_of_day(scopes, jurisdiction, midnight)
    return rule, due_at_midnight + (requested_at - midnight)


@lru_cache(maxsize=4096)
def _deadline_of_day(
    scopes: tuple[Scope, ...], jurisdiction: str | None, midnight: datetime
) -> tuple[DeadlineRule, datetime]:
    rule = governing_rule_of(midnight, scopes, jurisdiction)
    return rule, rule.due(midnight)


def due_at(requested_at: datetime, scopes: Iterable[Scope], jurisdiction: str | None) -> datetime:
    return governing_rule_of(requested_at, scopes, jurisdiction).due(requested_at)


def governing_rule(requested_at: datetime, scopes: Iterable[Scope], jurisdiction: str | None) -> str:
    return governing_rule_of(requested_at, scopes, jurisdiction).name

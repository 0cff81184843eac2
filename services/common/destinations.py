"""The destinations file: which systems must obey an opt-out, read once at start-up.

``OPTOUT_DESTINATIONS_FILE`` (TOML, read with the standard library's ``tomllib``) lists
each destination as an ``[[destinations]]`` table; without it, ``deploy/destinations.toml``
(today's three destinations) is used. See docs/destinations.md, "The destinations file".

Every problem is one line naming the file, the destination and the field; all of a file's
problems are reported together (one line each) in one ``ConfigurationError``. Credentials
are never in the file itself: each is ``{ env = "VAR" }`` or ``{ file = "/path" }`` and is
resolved here, at start-up, into ``Destination.credentials``. Whether a destination's
``kind`` exists and whether its ``[settings]`` suit that kind is checked by the connectors'
registry (``services.connectors.registry.check_destinations``), which knows the kinds.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import SecretStr

from services.common.contract import Destination, Destinations, Identifier, Scope
from services.common.errors import ConfigurationError

# The shipped default: today's three destinations (email_provider, mail_house,
# third_party_sharing), served by the connectors that have always served them.
DEFAULT_DESTINATIONS_FILE = Path(__file__).resolve().parents[2] / "deploy" / "destinations.toml"

# A name becomes a topic (optout.suppress.<name>), a consumer group and a metrics label.
NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
_KEYS = frozenset({"name", "kind", "scopes", "identifiers", "requires_one_of", "settings", "credentials"})
E = TypeVar("E", Scope, Identifier)
_REQUIRED = ("name", "kind", "scopes", "identifiers", "requires_one_of")
# ``${VAR}`` or ``${VAR:-default}`` in a setting's string or a credential's file path: the
# environment variable's value (the default when it is unset or empty).
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def load_destinations(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Destinations:
    """The destinations of ``path`` (default: the shipped file), credentials resolved from
    ``environ`` (default: ``os.environ``) or files; ``ConfigurationError`` otherwise."""
    file = path or DEFAULT_DESTINATIONS_FILE
    env = os.environ if environ is None else environ
    where = f"destinations file {file}"
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        # TOMLDecodeError's message ends with "(at line N, column M)".
        raise ConfigurationError(f"{where}: not valid TOML: {exc}") from None
    problems: list[str] = []
    unknown_top = sorted(set(document) - {"destinations"})
    if unknown_top:
        problems.append(
            f"{where}: unknown top-level key(s) {', '.join(unknown_top)} (expected [[destinations]])"
        )
    entries = document.get("destinations", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigurationError(f"{where}: 'destinations' must be an array of tables ([[destinations]])")
    found: list[Destination] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries, start=1):
        label = f"{where}: destination #{index}"
        name = entry.get("name")
        if isinstance(name, str):
            label = f"{where}: destination {name!r}"
        errors: list[str] = []
        destination = _destination(entry, base=file.parent, environ=env, errors=errors)
        problems.extend(f"{label}: {e}" for e in errors)
        if destination is None:
            continue
        if destination.id in seen:
            problems.append(f"{label}: duplicate name (each name is one topic and one consumer group)")
            continue
        seen.add(destination.id)
        found.append(destination)
    if problems:
        raise ConfigurationError("\n".join(problems))
    return Destinations(found)


def _destination(
    entry: dict[str, Any], base: Path, environ: Mapping[str, str], errors: list[str]
) -> Destination | None:
    for key in sorted(set(entry) - _KEYS):
        errors.append(f"unknown key {key!r} (known: {', '.join(sorted(_KEYS))})")
    for key in _REQUIRED:
        if key not in entry:
            errors.append(f"missing {key!r}")
    name = entry.get("name")
    if "name" in entry and not (isinstance(name, str) and NAME.match(name)):
        errors.append(
            f"name {name!r} must be lower-case letters, digits and '_' (a letter first, at most 48)"
        )
    kind = entry.get("kind")
    if "kind" in entry and not (isinstance(kind, str) and kind):
        errors.append("kind must be a connector kind's name (see docs/destinations.md)")
    scopes = _members(entry, "scopes", Scope, errors)
    identifiers = _members(entry, "identifiers", Identifier, errors)
    requires = _members(entry, "requires_one_of", Identifier, errors)
    if scopes is not None and not scopes:
        errors.append("scopes is empty: the destination would never get a command")
    if Scope.ALL in (scopes or set()):
        errors.append(
            "scopes: ALL is what a request asks for, not what a destination serves; list the scopes"
        )
    if requires is not None and not requires:
        errors.append("requires_one_of is empty: name the identifiers the destination can act on")
    if requires is not None and identifiers is not None and not requires <= identifiers:
        extra = ", ".join(sorted(i.value for i in requires - identifiers))
        errors.append(f"requires_one_of names {extra}, which is not in identifiers")
    options = entry.get("settings", {})
    if not isinstance(options, dict):
        errors.append("settings must be a table ([destinations.settings])")
        options = {}
    options = {key: _expand(value, f"settings.{key}", environ, errors) for key, value in options.items()}
    credentials = _credentials(entry.get("credentials", {}), base, environ, errors)
    if errors:
        return None
    assert isinstance(name, str) and isinstance(kind, str)
    assert scopes is not None and identifiers is not None and requires is not None
    return Destination(
        id=name,
        kind=kind,
        scopes=frozenset(scopes),
        identifiers=frozenset(identifiers),
        requires_one_of=frozenset(requires),
        options=dict(options),
        credentials=credentials,
    )


def _expand(value: object, where: str, environ: Mapping[str, str], errors: list[str]) -> object:
    """``value`` with every ``${VAR}`` / ``${VAR:-default}`` of its strings (in lists and
    tables too) replaced from ``environ``; an unset variable without a default is an error.
    The result stays a string: the kind's options model converts ``"12222"`` for a number."""
    if isinstance(value, list):
        return [_expand(v, where, environ, errors) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v, f"{where}.{k}", environ, errors) for k, v in value.items()}
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        var, default = match.group(1), match.group(2)
        found = environ.get(var, "")
        if found:
            return found
        if default is not None:
            return default
        errors.append(f"{where}: environment variable {var} is not set or empty (or write ${{{var}:-x}})")
        return ""

    return _REFERENCE.sub(substitute, value)


def _members(entry: dict[str, Any], key: str, enum: type[E], errors: list[str]) -> set[E] | None:
    values = entry.get(key)
    if values is None:
        return None
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        errors.append(f"{key} must be a list of strings")
        return None
    known = {m.value: m for m in enum}
    bad = [v for v in values if v not in known]
    if bad:
        errors.append(f"{key}: unknown {', '.join(map(repr, bad))} (known: {', '.join(known)})")
        return None
    return {known[v] for v in values}


def _credentials(
    table: object, base: Path, environ: Mapping[str, str], errors: list[str]
) -> dict[str, SecretStr]:
    if not isinstance(table, dict):
        errors.append('credentials must be a table of { env = "VAR" } or { file = "/path" }')
        return {}
    resolved: dict[str, SecretStr] = {}
    for key, source in table.items():
        if not isinstance(source, dict) or len(source) != 1 or not set(source) <= {"env", "file"}:
            errors.append(
                f'credentials.{key} must be {{ env = "VAR" }} or {{ file = "/path" }} '
                "(never the secret itself)"
            )
            continue
        if "env" in source:
            var = str(source["env"])
            value = environ.get(var, "")
            if not value:
                errors.append(f"credentials.{key}: environment variable {var} is not set or empty")
                continue
        else:
            path = Path(str(_expand(str(source["file"]), f"credentials.{key}.file", environ, errors)))
            path = path if path.is_absolute() else base / path
            try:
                value = path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                errors.append(f"credentials.{key}: cannot read {path} ({reason})")
                continue
            if not value:
                errors.append(f"credentials.{key}: {path} is empty")
                continue
        resolved[key] = SecretStr(value)
    return resolved

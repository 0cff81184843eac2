"""PostgreSQL array literals built in one pass (pure; issue #15; used by intake, the
connectors and the confirmer).

psycopg adapts a Python list element by element in Python (about 0.16 µs per element in
binary, 0.8 µs in text); intake passes about 80 values per event. One ``'{…}'`` literal per
column, cast in the statement (``%s::text[]``), costs one ``str.join``: the values intake
passes are mostly hex hashes, UUIDs and codes, which need no quoting. Any other value
(quotes, backslashes, commas, braces, whitespace, an empty string, anything spelling
``null``) makes the whole column quoted element by element, as PostgreSQL's array input
reads it (``array_in``: inside double quotes a backslash escapes the next character).
``None`` is the unquoted ``NULL``. Equivalence with psycopg's own adaptation, hostile
values included: ``tests/unit/test_intake_speedups.py`` (the literal read back) and
``tests/integration/test_intake_arrays.py`` (PostgreSQL reading both).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

# Anything that could make an unquoted element read differently: the syntax characters,
# the whitespace array_in trims around unquoted elements, and the NULL keyword (any case,
# looked for anywhere: conservative). One ``in`` per character is a C scan of the joined
# values; a regular expression was 50 times slower.
_SPECIAL = ("{", "}", '"', ",", "\\", " ", "\t", "\n", "\r", "\v", "\f")


def _plain(joined: str) -> bool:
    """True when no value joined here needs quoting (the empty string is checked apart)."""
    for special in _SPECIAL:
        if special in joined:
            return False
    return not (("n" in joined or "N" in joined) and "null" in joined.lower())


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def text_array(values: Sequence[str | None]) -> str:
    """The ``text[]`` literal of ``values`` (``None``: NULL)."""
    present = [v for v in values if v is not None]
    # Checked with no separator: "nu" + "ll" across two values only costs the quoting.
    if "" in present or not _plain("".join(present)):
        return "{" + ",".join("NULL" if v is None else _quoted(v) for v in values) + "}"
    if len(present) == len(values):
        return "{" + ",".join(present) + "}"
    return "{" + ",".join("NULL" if v is None else v for v in values) + "}"


def int_array(values: Iterable[int]) -> str:
    """The ``int8[]`` literal of ``values``."""
    return "{" + ",".join(map(str, values)) + "}"


def bool_array(values: Iterable[bool]) -> str:
    """The ``bool[]`` literal of ``values``."""
    return "{" + ",".join("t" if v else "f" for v in values) + "}"


# Text columns as one separated string (issue #15). PostgreSQL's ``array_in`` reads a literal
# twice, character by character: about 12 ns a character, 0.76 µs for a 64-character hash, the
# largest single cost of intake's statements' input (a chunk's ~80 values per event are mostly
# hashes, UUIDs and subjects). ``string_to_array`` splits the same text at 1.3 ns a character
# (a memchr). The separator and the NULL field are ASCII control characters that intake's values
# do not hold; when some value does hold one (or the list is one empty string, which
# ``string_to_array`` reads as no element), the column goes as the array literal instead. The
# statement reads either with ``SPLIT_TEXT`` (two placeholders: one of them is NULL).
SEPARATOR = "\x1f"  # ASCII unit separator
NULL_FIELD = "\x1e"  # ASCII record separator: a field of exactly this reads as NULL
SPLIT_TEXT = "coalesce(%s::text[], string_to_array(%s, E'\\x1f', E'\\x1e'))"


def split_text(values: Sequence[str | None]) -> tuple[str | None, str | None]:
    """The two parameters of ``SPLIT_TEXT`` for ``values`` (``None``: NULL): ``(None, the
    values joined by SEPARATOR)``, or ``(text_array(values), None)`` when that would read
    differently."""
    nulls = values.count(None)
    joined = SEPARATOR.join([NULL_FIELD if v is None else v for v in values])
    if (
        joined.count(SEPARATOR) != max(len(values) - 1, 0)
        or joined.count(NULL_FIELD) != nulls
        or (len(values) == 1 and values[0] == "")
    ):
        return text_array(values), None
    return None, joined

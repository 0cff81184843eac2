"""Avro binary bodies written and read by Python functions generated once per schema.

fastavro interprets the parsed schema on every record (a dictionary walk per field); for
the few small records of this contract that interpretation is most of the cost of a
message. ``compile_writer`` and ``compile_reader`` turn a parsed schema into straight-line
Python source (one function per record, fields in order, no lookups of the schema at run
time), compiled once by ``Codec``. They support what the contract's schemas use: records,
``null``, ``boolean``, ``int``/``long`` (and ``timestamp-millis``), ``string``, enums,
arrays and ``["null", T]`` unions. Anything else raises ``Unsupported`` and the codec keeps
using fastavro for that schema.

Writers produce exactly fastavro's bytes (tests/unit/test_avro_compiled.py compares them on
generated records of every schema): one array block, a union's branch by ``None`` or not, a
missing field's default, ``timestamp-millis`` from epoch milliseconds or a datetime with
fastavro's own conversion. Readers decode writer-schema bodies (the codec still lets
fastavro resolve an older writer's body to the newest reader schema) and raise on anything
malformed (the codec turns every exception into ``PoisonMessage('undecodable')``).
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable, Mapping
from typing import Any

ParsedSchema = str | list[Any] | dict[str, Any]  # as fastavro.parse_schema returns it
Writer = Callable[[bytearray, Mapping[str, Any]], None]
Reader = Callable[[bytes, int], tuple[dict[str, Any], int]]

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
_NO_DEFAULT = object()


class Unsupported(Exception):
    """The schema uses something the generated code does not handle (fastavro does it)."""


# --- run-time helpers the generated code calls ----------------------------------------------------
# Varint bytes of the zig-zag encoding of 0..1023: string lengths and small counts.
_SMALL = [bytes([n << 1]) if n < 64 else b"" for n in range(1024)]


def _varint(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    if 1 << 35 <= z < 1 << 42:  # six bytes: epoch milliseconds from 1971 to 2109, unrolled
        return bytes(
            (
                (z & 0x7F) | 0x80,
                (z >> 7 & 0x7F) | 0x80,
                (z >> 14 & 0x7F) | 0x80,
                (z >> 21 & 0x7F) | 0x80,
                (z >> 28 & 0x7F) | 0x80,
                z >> 35,
            )
        )
    out = bytearray()
    while z & ~0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


for _n in range(64, 1024):
    _SMALL[_n] = _varint(_n)


def varint(n: int) -> bytes:
    """The zig-zag varint of ``n`` (an Avro int or long), as ``write_long`` writes it."""
    return _SMALL[n] if 0 <= n < 1024 else _varint(n)


# Varints of larger values written lately: timestamps repeat (a batch's issue time, a
# request's deadline in each of its commands). Bounded: emptied when full.
_RECENT: dict[int, bytes] = {}
_RECENT_MAX = 4096


def write_long(out: bytearray, n: int) -> None:
    if 0 <= n < 1024:
        out += _SMALL[n]
        return
    known = _RECENT.get(n)
    if known is None:
        if not -(1 << 63) <= n < (1 << 63):
            raise ValueError(f"{n} does not fit in an Avro long")
        known = _varint(n)
        if len(_RECENT) >= _RECENT_MAX:
            _RECENT.clear()
        _RECENT[n] = known
    out += known


def write_string(out: bytearray, value: str) -> None:
    data = value.encode()
    size = len(data)
    out += _SMALL[size] if size < 1024 else _varint(size)
    out += data


def write_millis(out: bytearray, value: Any) -> None:
    """Epoch milliseconds as they are, or a datetime converted as fastavro converts it
    (``fastavro._logical_writers.prepare_timestamp_millis``: truncated to the millisecond;
    a naive datetime is local time)."""
    if isinstance(value, _dt.datetime):
        if value.tzinfo is not None:
            delta = value - _EPOCH
            value = (delta.days * 86400 + delta.seconds) * 1000 + int(delta.microseconds / 1000)
        else:
            value = int(time.mktime(value.timetuple())) * 1000 + int(value.microsecond / 1000)
    write_long(out, value)


def read_long(data: bytes, pos: int) -> tuple[int, int]:
    b = data[pos]
    pos += 1
    if b < 0x80:
        return (b >> 1) ^ -(b & 1), pos
    n = b & 0x7F
    shift = 7
    while True:
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return (n >> 1) ^ -(n & 1), pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def read_string(data: bytes, pos: int) -> tuple[str, int]:
    size, pos = read_long(data, pos)
    end = pos + size
    if size < 0 or end > len(data):
        raise ValueError("string length out of range")
    return data[pos:end].decode(), end


def read_millis(data: bytes, pos: int) -> tuple[_dt.datetime, int]:
    n, pos = read_long(data, pos)
    return _EPOCH + _dt.timedelta(microseconds=n * 1000), pos


def read_count(data: bytes, pos: int) -> tuple[int, int]:
    """An array block's item count (a negative count is followed by the block's size)."""
    count, pos = read_long(data, pos)
    if count < 0:
        count = -count
        _, pos = read_long(data, pos)
    if count > len(data) - pos:  # every item takes at least one byte
        raise ValueError("array count out of range")
    return count, pos


def read_boolean(data: bytes, pos: int) -> tuple[bool, int]:
    b = data[pos]
    if b > 1:
        raise ValueError("boolean byte is neither 0 nor 1")
    return b == 1, pos + 1


_HELPERS: dict[str, Any] = {
    "_SMALL": _SMALL,
    "_varint": _varint,
    "_RECENT": _RECENT,
    "write_long": write_long,
    "write_string": write_string,
    "write_millis": write_millis,
    "read_long": read_long,
    "read_string": read_string,
    "read_millis": read_millis,
    "read_count": read_count,
    "read_boolean": read_boolean,
}


# --- code generation ----------------------------------------------------------------------------
class _Source:
    """Generated functions (one per record schema) and the constants they use."""

    def __init__(self) -> None:
        self.functions: dict[str, list[str]] = {}
        self.constants: dict[str, Any] = {}
        self._names: dict[int, str] = {}
        self._counter = 0

    def fresh(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}{self._counter}"

    def constant(self, value: Any, prefix: str = "_c") -> str:
        name = self.fresh(prefix)
        self.constants[name] = value
        return name

    def compile(self) -> dict[str, Any]:
        namespace: dict[str, Any] = {**_HELPERS, **self.constants}
        code = "\n\n".join("\n".join(lines) for lines in self.functions.values())
        exec(compile(code, "<avro-compiled>", "exec"), namespace)  # our own generated source
        return namespace


def _type_of(schema: Any) -> str:
    if isinstance(schema, str):
        return schema
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, dict):
        logical = schema.get("logicalType")
        if logical is not None:
            if logical == "timestamp-millis" and schema.get("type") == "long":
                return "timestamp-millis"
            raise Unsupported(f"logical type {logical}")
        return str(schema["type"])
    raise Unsupported(f"schema {schema!r}")


def _nullable(schema: Any) -> Any:
    """``T`` of a ``["null", T]`` union; ``Unsupported`` for any other union."""
    if len(schema) == 2 and schema[0] == "null" and schema[1] != "null":
        return schema[1]
    raise Unsupported(f"union {schema!r} (only [null, T])")


def _fields(schema: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    fields = schema.get("fields")
    if not isinstance(fields, list):
        raise Unsupported("record without fields")
    return fields


def _record_function(src: _Source, schema: Mapping[str, Any], prefix: str) -> str:
    """The name of the generated function for ``schema`` (one per record schema object)."""
    key = id(schema)
    existing = src._names.get(key)
    if existing is not None:
        return existing
    name = src.fresh(prefix)
    src._names[key] = name
    return name


# Writers: statements appending the encoding of the expression ``value`` to ``out``.
def _write(src: _Source, schema: Any, value: str, lines: list[str], indent: str) -> None:
    kind = _type_of(schema)
    if kind == "null":
        lines.append(f"{indent}if {value} is not None: raise ValueError('not null')")
    elif kind == "boolean":
        lines.append(f"{indent}out.append(1 if {value} else 0)")
    elif kind in ("int", "long"):
        lines.append(f"{indent}write_long(out, {value})")
    elif kind == "timestamp-millis":
        # Epoch milliseconds written lately (``write_long``'s ``_RECENT``) are appended here;
        # anything else (a new value, a datetime, a bool) goes through write_millis.
        v, known = src.fresh("v"), src.fresh("k")
        lines.append(f"{indent}{v} = {value}")
        lines.append(f"{indent}{known} = _RECENT.get({v}) if {v}.__class__ is int else None")
        lines.append(f"{indent}if {known} is None:")
        lines.append(f"{indent}    write_millis(out, {v})")
        lines.append(f"{indent}else:")
        lines.append(f"{indent}    out += {known}")
    elif kind == "string":  # write_string, inlined (a call per string cost as much as the rest)
        data, size = src.fresh("d"), src.fresh("z")
        lines.append(f"{indent}{data} = {value}.encode()")
        lines.append(f"{indent}{size} = len({data})")
        lines.append(f"{indent}out += _SMALL[{size}] if {size} < 1024 else _varint({size})")
        lines.append(f"{indent}out += {data}")
    elif kind == "enum":
        index = src.constant({s: bytes([i << 1]) for i, s in enumerate(schema["symbols"])}, "_enum")
        if len(schema["symbols"]) > 63:
            raise Unsupported("enum of more than 63 symbols")
        lines.append(f"{indent}out += {index}[{value}]")
    elif kind == "array":
        item = src.fresh("i")
        seq = src.fresh("s")
        lines.append(f"{indent}{seq} = {value}")
        lines.append(f"{indent}if {seq}:")
        lines.append(f"{indent}    write_long(out, len({seq}))")
        lines.append(f"{indent}    for {item} in {seq}:")
        _write(src, schema["items"], item, lines, indent + "        ")
        lines.append(f"{indent}out.append(0)")
    elif kind == "union":
        inner = _nullable(schema)
        v = src.fresh("u")
        lines.append(f"{indent}{v} = {value}")
        lines.append(f"{indent}if {v} is None:")
        lines.append(f"{indent}    out.append(0)")
        lines.append(f"{indent}else:")
        lines.append(f"{indent}    out.append(2)")
        _write(src, inner, v, lines, indent + "    ")
    elif kind == "record":
        function = _writer_function(src, schema)
        lines.append(f"{indent}{function}(out, {value})")
    else:
        raise Unsupported(f"type {kind}")


def _writer_function(src: _Source, schema: Mapping[str, Any]) -> str:
    name = _record_function(src, schema, "_write_record")
    if name in src.functions:
        return name
    lines = [f"def {name}(out, r):"]
    src.functions[name] = lines  # reserved before the body (a record may contain itself)
    for field in _fields(schema):
        fname = field["name"]
        default = field.get("default", _NO_DEFAULT)
        ftype = field["type"]
        nullable = isinstance(ftype, list) and "null" in ftype
        if default is not _NO_DEFAULT:
            value = f"r.get({fname!r}, {src.constant(default, '_default')})"
        elif nullable:
            value = f"r.get({fname!r})"
        else:
            value = f"r[{fname!r}]"
        _write(src, ftype, value, lines, "    ")
    if len(lines) == 1:
        lines.append("    pass")
    return name


# Readers: statements setting ``target`` to the value read at ``pos`` of ``data``.
def _read(src: _Source, schema: Any, target: str, lines: list[str], indent: str) -> None:
    kind = _type_of(schema)
    if kind == "null":
        lines.append(f"{indent}{target} = None")
    elif kind == "boolean":
        lines.append(f"{indent}{target}, pos = read_boolean(data, pos)")
    elif kind in ("int", "long"):
        _read_long_inline(src, target, lines, indent)
    elif kind == "timestamp-millis":
        lines.append(f"{indent}{target}, pos = read_millis(data, pos)")
    elif kind == "string":
        # read_string, inlined for lengths of one varint byte (0..63): most strings here.
        b, end = src.fresh("b"), src.fresh("e")
        lines.append(f"{indent}{b} = data[pos]")
        lines.append(f"{indent}if {b} < 0x80 and not {b} & 1:")
        lines.append(f"{indent}    {end} = pos + 1 + ({b} >> 1)")
        lines.append(f"{indent}    if {end} > len(data): raise ValueError('string length out of range')")
        lines.append(f"{indent}    {target} = data[pos + 1 : {end}].decode()")
        lines.append(f"{indent}    pos = {end}")
        lines.append(f"{indent}else:")
        lines.append(f"{indent}    {target}, pos = read_string(data, pos)")
    elif kind == "enum":
        symbols = src.constant(tuple(schema["symbols"]), "_symbols")
        n = src.fresh("n")
        _read_long_inline(src, n, lines, indent)
        lines.append(f"{indent}if {n} < 0: raise ValueError('negative enum index')")
        lines.append(f"{indent}{target} = {symbols}[{n}]")
    elif kind == "array":
        items, count, item, k = src.fresh("a"), src.fresh("n"), src.fresh("x"), src.fresh("k")
        lines.append(f"{indent}{items} = []")
        lines.append(f"{indent}{count}, pos = read_count(data, pos)")
        lines.append(f"{indent}while {count}:")
        lines.append(f"{indent}    for {k} in range({count}):")
        _read(src, schema["items"], item, lines, indent + "        ")
        lines.append(f"{indent}        {items}.append({item})")
        lines.append(f"{indent}    {count}, pos = read_count(data, pos)")
        lines.append(f"{indent}{target} = {items}")
        if _type_of(schema["items"]) == "null":
            raise Unsupported("array of null")
    elif kind == "union":
        inner = _nullable(schema)
        branch = src.fresh("b")
        _read_long_inline(src, branch, lines, indent)
        lines.append(f"{indent}if {branch} == 0:")
        lines.append(f"{indent}    {target} = None")
        lines.append(f"{indent}elif {branch} == 1:")
        _read(src, inner, target, lines, indent + "    ")
        lines.append(f"{indent}else:")
        lines.append(f"{indent}    raise ValueError('union branch out of range')")
    elif kind == "record":
        function = _reader_function(src, schema)
        lines.append(f"{indent}{target}, pos = {function}(data, pos)")
    else:
        raise Unsupported(f"type {kind}")


def _read_long_inline(src: _Source, target: str, lines: list[str], indent: str) -> None:
    """``read_long``, inlined for a value of one varint byte (-64..63); the call otherwise."""
    b = src.fresh("b")
    lines.append(f"{indent}{b} = data[pos]")
    lines.append(f"{indent}if {b} < 0x80:")
    lines.append(f"{indent}    {target} = ({b} >> 1) ^ -({b} & 1)")
    lines.append(f"{indent}    pos += 1")
    lines.append(f"{indent}else:")
    lines.append(f"{indent}    {target}, pos = read_long(data, pos)")


def _reader_function(src: _Source, schema: Mapping[str, Any]) -> str:
    name = _record_function(src, schema, "_read_record")
    if name in src.functions:
        return name
    lines = [f"def {name}(data, pos):"]
    src.functions[name] = lines
    fields = _fields(schema)
    if not fields:
        raise Unsupported("record without fields")
    names = []
    for field in fields:
        var = src.fresh("f")
        names.append((field["name"], var))
        _read(src, field["type"], var, lines, "    ")
    body = ", ".join(f"{fname!r}: {var}" for fname, var in names)
    lines.append(f"    return {{{body}}}, pos")
    return name


def _resolve_named(schema: Any, named: Mapping[str, Any]) -> Any:
    """fastavro's parsed schemas refer to an already defined record by name: inline it."""
    if isinstance(schema, str) and schema in named:
        return named[schema]
    return schema


def _inline(schema: Any, named: dict[str, Any]) -> Any:
    """A copy of a parsed schema with named references replaced by their definitions."""
    if isinstance(schema, str):
        return _resolve_named(schema, named)
    if isinstance(schema, list):
        return [_inline(s, named) for s in schema]
    if isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("record", "error"):
            copy = dict(schema)
            named[str(schema["name"])] = copy
            copy["fields"] = [{**f, "type": _inline(f["type"], named)} for f in schema["fields"]]
            return copy
        if kind == "array":
            return {**schema, "items": _inline(schema["items"], named)}
        if kind == "map":
            return {**schema, "values": _inline(schema["values"], named)}
        if kind in ("enum", "fixed"):
            named[str(schema["name"])] = schema
        return schema
    raise Unsupported(f"schema {schema!r}")


def _record_schema(parsed: ParsedSchema) -> dict[str, Any]:
    inlined = _inline(parsed, {})
    if not isinstance(inlined, dict) or inlined.get("type") != "record":
        raise Unsupported("only records are compiled")
    return inlined


def compile_writer(parsed: ParsedSchema) -> Writer:
    """A function appending the Avro binary body of a record of ``parsed`` to a bytearray."""
    src = _Source()
    name = _writer_function(src, _record_schema(parsed))
    function: Writer = src.compile()[name]
    return function


def compile_reader(parsed: ParsedSchema) -> Reader:
    """A function reading a record of ``parsed`` from ``data`` at ``pos``: (record, end)."""
    src = _Source()
    name = _reader_function(src, _record_schema(parsed))
    function: Reader = src.compile()[name]
    return function

"""The contract's rules: every field documented, every schema self-contained, and a
newer version of a schema reads what older writers wrote (by fingerprint)."""

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import fastavro
import pytest

from services.common.avro import Codec, schemas_dir
from services.common.records import as_datetime

SCHEMA_FILES = sorted(schemas_dir().glob("*.avsc"))


def _fields(schema):
    if isinstance(schema, dict):
        if schema.get("type") == "record":
            for field in schema["fields"]:
                yield schema["name"], field
                yield from _fields(field["type"])
        elif "items" in schema:
            yield from _fields(schema["items"])
    elif isinstance(schema, list):
        for branch in schema:
            yield from _fields(branch)


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.name)
def test_every_field_is_documented_and_the_file_stands_alone(path: Path):
    raw = json.loads(path.read_text())
    assert raw.get("doc"), f"{path.name}: record has no doc"
    for record, field in _fields(raw):
        assert field.get("doc"), f"{path.name}: {record}.{field['name']} has no doc"
    fastavro.parse_schema(raw)  # no references to types defined in other files


def test_a_newer_version_reads_older_messages(tmp_path: Path):
    for path in SCHEMA_FILES:
        shutil.copy(path, tmp_path / path.name)
    newest = json.loads((tmp_path / "OptOutRequested.v2.avsc").read_text())
    v3 = json.loads(json.dumps(newest))
    v3["fields"].append(
        {
            "name": "locale",
            "type": ["null", "string"],
            "default": None,
            "doc": "Customer's preferred language (added in v3).",
        }
    )
    (tmp_path / "OptOutRequested.v3.avsc").write_text(json.dumps(v3))

    old_writer = Codec(schemas_dir())  # knows v1 and v2
    new_reader = Codec(tmp_path)  # knows v1, v2 and v3
    payload = old_writer.encode(
        "OptOutRequested",
        {
            "event_id": "e",
            "email": "a@example.com",
            "scopes": ["ALL"],
            "source": "API",
            "requested_at": datetime(2026, 1, 1, tzinfo=UTC),
        },
    )
    name, record = new_reader.decode(payload)
    assert name == "OptOutRequested"
    assert record["locale"] is None and record["email"] == "a@example.com"
    # And new writers' messages carry the v3 fingerprint, unknown to an old reader.
    newer = new_reader.encode("OptOutRequested", {**record, "locale": "fr"})
    assert newer[2:10] != payload[2:10]
    assert new_reader.decode(newer)[1]["locale"] == "fr"


def _v1_codec(tmp_path: Path) -> Codec:
    for path in SCHEMA_FILES:
        if ".v1." in path.name:
            shutil.copy(path, tmp_path / path.name)
    return Codec(tmp_path)


def test_version_2_reads_version_1_as_opt_outs_and_adds_sms_and_opt_in(tmp_path: Path):
    old_writer, current = _v1_codec(tmp_path), Codec(schemas_dir())
    payload = old_writer.encode(
        "OptOutRequested",
        {
            "event_id": "e",
            "email": "a@example.com",
            "scopes": ["ALL"],
            "source": "API",
            "requested_at": datetime(2026, 1, 1, tzinfo=UTC),
        },
    )
    record = current.decode(payload)[1]
    assert (record["action"], record["device_id"]) == ("OPT_OUT", None)
    command = old_writer.encode(
        "SuppressionCommand",
        {
            "command_id": "c",
            "request_id": "e",
            "destination": "d",
            "scopes": ["ALL"],
            "issued_at": 1,
            "deadline": 2,
        },
    )
    decoded = current.decode(command)[1]
    assert decoded["action"] == "OPT_OUT" and as_datetime(decoded["requested_at"]).timestamp() == 0
    newer = current.encode(
        "OptOutRequested",
        {**record, "scopes": ["SMS_MARKETING"], "action": "OPT_IN", "source": "SMS_REPLY"},
    )
    back = current.decode(newer)[1]
    assert (back["scopes"], back["action"], back["source"]) == (["SMS_MARKETING"], "OPT_IN", "SMS_REPLY")

"""``optout config``: the effective settings (secrets masked), or their documentation."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr

from services.common.settings import Settings, settings

MASK = "********"
# librdkafka settings whose value is (or may embed) a secret: sasl.password,
# ssl.key.password, ssl.keystore.password, sasl.oauthbearer.client.secret, ssl.key.pem,
# sasl.oauthbearer.config (clientSecret=...), sasl.jaas.config, anything "credentials".
_SECRET_KEY = re.compile(r"password|secret|credential|key|token|jaas|oauthbearer\.config", re.IGNORECASE)


def mask_kafka_extra(extra: Mapping[str, str]) -> dict[str, str]:
    """``OPTOUT_KAFKA_EXTRA`` with the values of secret-looking keys masked."""
    return {k: (MASK if _SECRET_KEY.search(k) and v else v) for k, v in extra.items()}


def _show(value: Any) -> str:
    if isinstance(value, SecretStr):
        return MASK if value.get_secret_value() else ""
    if isinstance(value, dict | list):
        return json.dumps(value, default=_show)
    return "" if value is None else str(value)


def _default(name: str) -> str:
    return _show(Settings.model_fields[name].get_default(call_default_factory=True))


def cmd_config(args: argparse.Namespace) -> int:
    out = sys.stdout
    if args.markdown:
        out.write("| variable | default | meaning |\n|---|---|---|\n")
        for name, field in Settings.model_fields.items():
            default = _default(name).replace("|", "\\|")
            out.write(f"| `OPTOUT_{name.upper()}` | `{default}` | {field.description or ''} |\n")
        return 0
    if args.env_example:
        out.write(
            "# optout settings: copy to .env and edit. Every variable is optional;\n"
            "# the defaults reach the local stack started by `make up`.\n"
        )
        for name, field in Settings.model_fields.items():
            out.write(f"\n# {field.description or name}\n# OPTOUT_{name.upper()}={_default(name)}\n")
        return 0
    for name, value in settings().model_dump().items():
        if name == "kafka_extra":
            value = mask_kafka_extra(value)
        out.write(f"OPTOUT_{name.upper()}={_show(value)}\n")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("config", help="show the effective settings (secrets masked)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--markdown", action="store_true", help="print the settings table")
    group.add_argument("--env-example", action="store_true", help="print a .env.example")
    p.set_defaults(handler=cmd_config)

"""An ``optout`` process imports only what its command needs (README, "Process start-up").

Each check runs a fresh interpreter (``sys.modules`` of this one already holds everything)
and reads the modules it loaded: building the argument parser and parsing a command imports
no service and no heavy library; ``run intake`` imports no connector library; a connector
imports the modules of its own kind only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from services.connectors import (
    email_provider,
    mail_house,
    mailgun,
    sendgrid,
    ses,
    sftp_mail_house,
    sms_optout_list,
    third_party_sharing,
    webhook_partners,
)
from services.connectors.kinds import Build
from services.connectors.registry import KINDS

# Libraries only some commands use. (confluent_kafka is missing: services/cli/lag.py, which
# the parser imports for its arguments, imports it at the top.)
HEAVY_LIBRARIES = (
    "botocore",
    "boto3",
    "paramiko",
    "httpx",
    "psycopg",
    "psycopg_pool",
    "prometheus_client",
    "fastavro",
    "phonenumbers",
    "cryptography",
)
# Implementations a command's handler imports when it runs.
IMPLEMENTATIONS = (
    "services.common.db",
    "services.common.avro",
    "services.intake",
    "services.confirmer",
    "services.connectors.kit",
    "services.connectors.email_provider",
    "services.connectors.ses",
    "services.connectors.sftp_mail_house",
    "services.reconcile",
    "services.replay",
    "services.suppression",
    "services.web",
    "services.publisher",
    "services.retention",
    "services.directory.csv_format",
    "services.domain.subjects",
)
# One argument list per command (each parsed, none run but ``config --markdown``).
COMMANDS = (
    ["run", "intake"],
    ["run", "connector", "email_provider"],
    ["run", "all"],
    ["migrate"],
    ["topics", "create"],
    ["publish", "--email", "a@example.com"],
    ["status"],
    ["lag"],
    ["config"],
    ["purge", "--dry-run"],
    ["overdue"],
    ["resolve", "e1", "--note", "ticket 1"],
    ["link", "--customer-id", "c1"],
    ["suppression-list", "status"],
    ["erase", "--customer-id", "c1"],
    ["gpc-log"],
    ["customers", "status"],
    ["scrub", "--in", "a.csv", "--out", "b.csv"],
    ["suppression-state", "publish"],
    ["reconcile", "--destination", "x"],
    ["replay", "--destination", "x"],
    ["replay-status"],
    ["audit", "export"],
)


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running ``code``."""
    script = textwrap.dedent(code) + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout.splitlines()[-1])
    return set(loaded)


def _loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if n in modules or any(m.startswith(n + ".") for m in modules))


def test_parsing_any_command_imports_no_implementation() -> None:
    modules = _modules_after(
        f"""
        import contextlib, io
        from services.cli.main import build_parser, main
        parser = build_parser()
        parser.format_help()
        for argv in {COMMANDS!r}:
            parser.parse_args(argv)
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["config", "--markdown"]) == 0
        """
    )
    assert _loaded(modules, HEAVY_LIBRARIES + IMPLEMENTATIONS) == []


def test_a_service_imports_no_connector_library() -> None:
    modules = _modules_after(
        """
        import services.cli.main, services.common.db, services.common.kafka
        import services.observability.health, services.intake.service, services.confirmer.service
        """
    )
    assert _loaded(modules, ("botocore", "paramiko", "httpx", "services.connectors.kit")) == []


def test_a_connector_imports_its_own_kind_only() -> None:
    modules = _modules_after(
        """
        from services.connectors.registry import KINDS
        KINDS["email_provider"]()
        """
    )
    assert "services.connectors.email_provider" in modules
    assert _loaded(modules, ("botocore", "paramiko", "services.connectors.ses")) == []


# Each kind's module: its KIND and its build, which KINDS must load.
KIND_MODULES: list[tuple[str, Build]] = [
    (email_provider.KIND, email_provider.build),
    (mail_house.KIND, mail_house.build),
    (mailgun.KIND, mailgun.build),
    (sendgrid.KIND, sendgrid.build),
    (ses.KIND, ses.build),
    (sftp_mail_house.KIND, sftp_mail_house.build),
    (sms_optout_list.KIND, sms_optout_list.build),
    (third_party_sharing.KIND, third_party_sharing.build),
    (webhook_partners.KIND, webhook_partners.build),
]


@pytest.mark.parametrize(("kind", "build"), KIND_MODULES, ids=[k for k, _ in KIND_MODULES])
def test_each_kind_loads_its_modules_build(kind: str, build: Build) -> None:
    assert KINDS[kind]() is build


def test_every_kind_has_a_module() -> None:
    assert sorted(KINDS) == sorted(k for k, _ in KIND_MODULES)

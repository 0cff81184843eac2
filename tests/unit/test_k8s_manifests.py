"""deploy/k8s renders, validates offline, and matches the code.

Every overlay is rendered with ``kubectl kustomize`` (or a standalone ``kustomize``;
``deploy/install-kustomize.sh`` makes sure one is there). Built-in kinds are validated
against the Kubernetes OpenAPI schemas shipped by the ``kubernetes-validate`` package, in
strict mode (unknown fields fail). KEDA's ScaledObject and TriggerAuthentication are
custom resources those schemas do not have: they are validated against the hand-written
schemas in ``deploy/k8s/schemas/keda.json`` (written from KEDA's docs, NOT KEDA's CRDs) and
by the structural checks below (consumer groups and topics from the code, replicas never
beyond the partitions). Then: every ``optout run`` service and every setting of
``services/common/settings.py`` is in the manifests, and the settings the manifests give
a pod are accepted by the code itself (``load_settings``, with OPTOUT_ENV=production for
the prod overlay).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from services.cli.runner import SERVICES
from services.common.destinations import load_destinations
from services.common.settings import DEV_SECRETS, Settings, load_settings
from services.connectors.registry import check_destinations
from services.reconcile.run import SUPPORTED_KINDS

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
# Kubernetes versions the built-in kinds are validated against: an older supported one
# and the newest the kubernetes-validate package ships.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication"}
WORKLOADS = {"Deployment", "Job", "CronJob"}

# Services other issues are adding: their Deployments exist before the code does.
UPCOMING_SERVICES = {"inbound"}
# Development-only settings: the local stand-ins (`optout run standins`), set in the dev
# overlay only (components/standins).
DEV_ONLY_SETTINGS = {f"OPTOUT_{n.upper()}" for n in Settings.model_fields if n.startswith("standin_")}
# Secrets the prod overlay expects the operator to make (overlays/prod/kustomization.yaml).
PROD_EXTERNAL_SECRETS = {
    "optout-secrets",
    "optout-admin",
    "optout-destination-credentials",
    "optout-sftp",
    "optout-tls",
}
HTTP_APIS = {"web", "inbound", "lookup"}
# What talks to PostgreSQL: `optout run X` with needs_db in services/cli/runner.py, the
# connectors' dedupe store, the web's request-status page (services/web/status.py), the
# Jobs; inbound is ASSUMED to (base/inbound.yaml).
DATABASE_USERS = {
    "intake",
    "confirmer",
    "exporter",
    "connector",
    "web",
    "migrate",
    "purge",
    "lookup",
    "inbound",
    "reconcile",
}


# --- rendering ------------------------------------------------------------------------------
def _renderer() -> list[str]:
    kubectl = shutil.which("kubectl")
    if kubectl:
        version = subprocess.run([kubectl, "version", "--client"], capture_output=True, text=True)
        if re.search(r"^Kustomize Version: v[5-9]", version.stdout, re.MULTILINE):
            return [kubectl, "kustomize"]
    for candidate in (ROOT / ".cache" / "bin" / "kustomize", shutil.which("kustomize")):
        if candidate and Path(candidate).is_file():
            return [str(candidate), "build"]
    pytest.fail("no kustomize v5 to render deploy/k8s: run `bash deploy/install-kustomize.sh`")


@cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        [*_renderer(), str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"rendering {overlay} failed: {result.stderr.strip()}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def of_kind(overlay: str, kind: str) -> list[dict[str, Any]]:
    return [d for d in rendered(overlay) if d["kind"] == kind]


def named(overlay: str, kind: str, name: str) -> dict[str, Any]:
    found = [d for d in of_kind(overlay, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"{overlay}: expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    if doc["kind"] == "CronJob":
        spec: dict[str, Any] = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    else:
        spec = doc["spec"]["template"]["spec"]
    return spec


def workloads(overlay: str) -> Iterator[dict[str, Any]]:
    return (d for d in rendered(overlay) if d["kind"] in WORKLOADS)


def settings_configmap(overlay: str) -> dict[str, str]:
    maps = [d for d in of_kind(overlay, "ConfigMap") if d["metadata"]["name"].startswith("optout-settings")]
    assert len(maps) == 1
    data: dict[str, str] = maps[0]["data"]
    return data


def destinations_toml(overlay: str) -> str:
    maps = [
        d for d in of_kind(overlay, "ConfigMap") if d["metadata"]["name"].startswith("optout-destinations")
    ]
    assert len(maps) == 1
    text: str = maps[0]["data"]["destinations.toml"]
    return text


def service_of(deployment: dict[str, Any]) -> str:
    """``intake`` for ``optout run intake``; ``connector.NAME`` for ``optout run connector NAME``."""
    args = pod_spec(deployment)["containers"][0]["args"]
    assert args[0] == "run", args
    return ".".join(args[1:])


# --- 1. renders and validates -------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_against_the_kubernetes_schemas(overlay: str) -> None:
    docs = rendered(overlay)
    assert docs, f"{overlay} rendered nothing"
    keda = json.loads((K8S / "schemas" / "keda.json").read_text())
    for doc in docs:
        where = f"{overlay}: {doc['kind']} {doc['metadata']['name']}"
        if doc["kind"] in CUSTOM_KINDS:
            schema = {"$defs": keda["$defs"], **keda[doc["kind"]]}
            errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc), key=str)
            assert not errors, f"{where}: {errors[0].message} at {list(errors[0].absolute_path)}"
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{where} (Kubernetes {version}): {exc.message} at {list(exc.path)}")
            except kubernetes_validate.SchemaNotFoundError:
                pytest.fail(f"{where}: no Kubernetes {version} schema for {doc['apiVersion']}")


def test_keda_schema_refuses_what_keda_does_not_know() -> None:
    """The hand-written schema is not a rubber stamp: a misspelt field or a non-string
    lagThreshold fails it."""
    keda = json.loads((K8S / "schemas" / "keda.json").read_text())
    schema = {"$defs": keda["$defs"], **keda["ScaledObject"]}
    good = named("dev", "ScaledObject", "optout-intake")
    jsonschema.validate(good, schema)
    misspelt = json.loads(json.dumps(good))
    misspelt["spec"]["maxReplicas"] = 3
    number = json.loads(json.dumps(good))
    number["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 5000
    for bad in (misspelt, number):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


# --- 2. KEDA: groups, topics and replicas from the code -------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_consumers_autoscale_on_their_own_group_lag(overlay: str) -> None:
    data = settings_configmap(overlay)
    cfg = Settings(topic_prefix=data["OPTOUT_TOPIC_PREFIX"])
    partitions = int(data["OPTOUT_TOPIC_PARTITIONS"])
    deployments = {d["metadata"]["name"]: d for d in of_kind(overlay, "Deployment")}
    scaled = {so["spec"]["scaleTargetRef"]["name"]: so for so in of_kind(overlay, "ScaledObject")}
    auths = {a["metadata"]["name"] for a in of_kind(overlay, "TriggerAuthentication")}
    consumers = [
        d
        for d in deployments.values()
        if service_of(d) in ("intake", "confirmer") or service_of(d).startswith("connector.")
    ]
    assert consumers
    for deployment in consumers:
        name, service = deployment["metadata"]["name"], service_of(deployment)
        if name not in scaled:
            # One writer by design (the mail houses): a fixed single replica, never two.
            assert deployment["spec"].get("replicas") == 1, f"{name}: neither autoscaled nor single"
            assert deployment["spec"]["strategy"]["type"] == "Recreate", name
            continue
        assert "replicas" not in deployment["spec"], f"{name}: KEDA's HPA owns replicas"
        so = scaled.pop(name)
        spec = so["spec"]
        trigger = spec["triggers"][0]
        meta = trigger["metadata"]
        topic = {
            "intake": cfg.requests_topic,
            "confirmer": cfg.acks_topic,
        }.get(service) or cfg.suppress_topic(service.removeprefix("connector."))
        assert meta["consumerGroup"] == cfg.group(service), name
        assert meta["topic"] == topic, name
        assert meta["bootstrapServers"] == data["OPTOUT_KAFKA_BOOTSTRAP"], name
        assert meta["offsetResetPolicy"] == "earliest", name  # services/common/kafka.py
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions, (
            f"{name}: {spec['minReplicaCount']}..{spec['maxReplicaCount']} replicas, {partitions} partitions"
        )
        assert spec["fallback"]["replicas"] <= spec["maxReplicaCount"], name
        assert int(meta["lagThreshold"]) > 0, name
        if data["OPTOUT_KAFKA_SECURITY_PROTOCOL"].startswith("SASL"):
            assert trigger["authenticationRef"]["name"] in auths, name
            # KEDA's scram_sha512 is librdkafka's SCRAM-SHA-512.
            mechanism = data["OPTOUT_KAFKA_SASL_MECHANISM"].lower().replace("-", "")
            assert meta["sasl"].replace("_", "") == mechanism, name
        if data["OPTOUT_KAFKA_SECURITY_PROTOCOL"].endswith("SSL"):
            assert meta["tls"] == "enable", name
    assert not scaled, f"ScaledObjects without a consumer Deployment: {sorted(scaled)}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_http_apis_have_a_service_and_an_hpa(overlay: str) -> None:
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in of_kind(overlay, "HorizontalPodAutoscaler")}
    services = {s["metadata"]["name"] for s in of_kind(overlay, "Service")}
    for api in HTTP_APIS:
        hpa = hpas.pop(f"optout-{api}")
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        assert f"optout-{api}" in services
    assert not hpas, f"unexpected HPAs: {sorted(hpas)}"


# --- 3. every pod hardened, probed, sized, budgeted -----------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_hardened_and_sized(overlay: str) -> None:
    for doc in workloads(overlay):
        where = f"{overlay}: {doc['kind']} {doc['metadata']['name']}"
        spec = pod_spec(doc)
        assert spec["automountServiceAccountToken"] is False, where
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] >= 1000, where
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
        mounts_tmp = False
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["runAsNonRoot"] is True, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            resources = container["resources"]
            for what in ("cpu", "memory"):
                request = _quantity(resources["requests"][what])
                limit = _quantity(resources["limits"][what])
                assert 0 < request <= limit, f"{where}: {what} request {request} > limit {limit}"
            refs = [e.get("configMapRef", {}).get("name", "") for e in container["envFrom"]]
            assert any(r.startswith("optout-settings") for r in refs), where
            mounts_tmp = mounts_tmp or any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])
        assert mounts_tmp, f"{where}: no writable /tmp on a read-only root filesystem"


def _quantity(value: str | int) -> float:
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_has_probes_and_a_disruption_budget(overlay: str) -> None:
    pdbs = of_kind(overlay, "PodDisruptionBudget")
    for deployment in of_kind(overlay, "Deployment"):
        name = deployment["metadata"]["name"]
        container = pod_spec(deployment)["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports.get("metrics") == int(settings_configmap(overlay)["OPTOUT_METRICS_PORT"]), name
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        assert container["readinessProbe"]["httpGet"]["port"] == "metrics", name
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["port"] in ports, f"{name}: {probe} on an unnamed port"
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        matching = [
            p
            for p in pdbs
            if all(labels.get(k) == v for k, v in p["spec"]["selector"]["matchLabels"].items())
        ]
        assert len(matching) == 1, f"{name}: {len(matching)} PodDisruptionBudgets"
        assert matching[0]["spec"].get("maxUnavailable") == 1, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_deny_by_default_and_open_what_pods_need(overlay: str) -> None:
    for name, (needs_db, _main) in SERVICES.items():
        assert name in DATABASE_USERS or not needs_db, f"{name}: runner.SERVICES says it needs the database"
    policies = {p["metadata"]["name"]: p for p in of_kind(overlay, "NetworkPolicy")}
    deny = policies["optout-default-deny"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    selectors = [p["spec"]["podSelector"].get("matchLabels", {}) for p in policies.values()]
    for doc in workloads(overlay):
        labels = (
            doc["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
            if doc["kind"] == "CronJob"
            else doc["spec"]["template"]["metadata"]["labels"]
        )
        args = pod_spec(doc)["containers"][0]["args"]
        service = args[1] if args[0] == "run" else args[0]
        needs_db = service in DATABASE_USERS
        needs_kafka = args[0] == "run" or args[:2] == ["topics", "create"]
        assert (labels.get("optout/database") == "true") == needs_db, f"{doc['metadata']['name']}: database"
        if needs_kafka:
            assert labels.get("optout/kafka") == "true", f"{doc['metadata']['name']}: kafka"
        assert any(all(labels.get(k) == v for k, v in sel.items()) for sel in selectors if sel)
    assert "optout-prometheus-scrape" in policies and "optout-dns" in policies


# --- 4. the connectors are the destinations file's ------------------------------------------
def _destination_fields(text: str) -> list[tuple[Any, ...]]:
    return [
        (d["name"], d["kind"], sorted(d["scopes"]), sorted(d["identifiers"]), sorted(d["requires_one_of"]))
        for d in tomllib.loads(text)["destinations"]
    ]


def test_dev_destinations_file_is_the_shipped_one() -> None:
    shipped = (ROOT / "deploy" / "destinations.toml").read_text()
    assert (K8S / "components" / "connectors-default" / "destinations.toml").read_text() == shipped
    assert destinations_toml("dev") == shipped


def test_prod_destinations_are_every_real_kind() -> None:
    all_kinds = (ROOT / "deploy" / "destinations.all-kinds.toml").read_text()
    assert _destination_fields(destinations_toml("prod")) == _destination_fields(all_kinds)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_connector_deployment_per_destination(overlay: str) -> None:
    names = [d["name"] for d in tomllib.loads(destinations_toml(overlay))["destinations"]]
    connectors = sorted(
        service_of(d).removeprefix("connector.")
        for d in of_kind(overlay, "Deployment")
        if service_of(d).startswith("connector.")
    )
    assert connectors == sorted(names)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_destination_that_can_be_read_back_is_reconciled_daily(overlay: str) -> None:
    destinations = tomllib.loads(destinations_toml(overlay))["destinations"]
    readable = sorted(d["name"] for d in destinations if d["kind"] in SUPPORTED_KINDS)
    assert readable and len(readable) < len(destinations)  # the partners have no list
    runs = [
        (job["spec"]["schedule"], pod_spec(job)["containers"][0]["args"])
        for job in of_kind(overlay, "CronJob")
        if pod_spec(job)["containers"][0]["args"][0] == "reconcile"
    ]
    assert sorted(args[2] for _, args in runs) == readable
    assert all(args == ["reconcile", "--destination", args[2]] for _, args in runs)
    assert len({schedule for schedule, _ in runs}) == len(runs)  # staggered


# --- 5. every service and every setting of the code is deployed -----------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_has_a_deployment(overlay: str) -> None:
    deployed = {service_of(d) for d in of_kind(overlay, "Deployment")}
    expected = set(SERVICES) | UPCOMING_SERVICES
    if overlay != "dev":
        expected.discard("standins")  # the local stand-ins: development only
        assert "standins" not in deployed
    missing = expected - deployed
    assert not missing, f"{overlay}: no Deployment runs {sorted(missing)}"


def _env_names(overlay: str) -> tuple[set[str], set[str]]:
    """(names set in the settings ConfigMap, names set from a Secret in some pod)."""
    from_secrets: set[str] = set()
    for doc in workloads(overlay):
        for container in pod_spec(doc)["containers"]:
            for env in container.get("env", []):
                if "secretKeyRef" in env.get("valueFrom", {}):
                    from_secrets.add(env["name"])
    return set(settings_configmap(overlay)), from_secrets


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_setting_is_in_the_manifests(overlay: str) -> None:
    every = {f"OPTOUT_{name.upper()}" for name in Settings.model_fields}
    in_configmap, from_secrets = _env_names(overlay)
    expected = every if overlay == "dev" else every - DEV_ONLY_SETTINGS
    missing = expected - in_configmap - from_secrets
    assert not missing, (
        f"{overlay}: settings neither in ConfigMap optout-settings nor from a Secret: {sorted(missing)} "
        "(add them to deploy/k8s/base/settings.env, an overlay's settings.env or pod-defaults.yaml)"
    )
    unknown = {n for n in in_configmap | from_secrets if n.startswith("OPTOUT_")} - every
    assert not unknown, f"{overlay}: not settings of the code: {sorted(unknown)}"
    assert not (in_configmap & from_secrets), "a setting both in the ConfigMap and from a Secret"
    if overlay != "dev":
        assert not (in_configmap & DEV_ONLY_SETTINGS)
    secret_fields = {
        f"OPTOUT_{n.upper()}"
        for n, f in Settings.model_fields.items()
        if "SecretStr" in str(f.annotation) and n != "admin_database_url"
    }
    assert secret_fields <= from_secrets, "a SecretStr setting must come from a Secret"
    assert not (secret_fields & in_configmap)


# --- 6. secrets by reference; dev values only in dev ----------------------------------------
def _secret_references(overlay: str) -> set[str]:
    names: set[str] = set()
    for doc in workloads(overlay):
        spec = pod_spec(doc)
        for container in spec["containers"]:
            names |= {
                e["valueFrom"]["secretKeyRef"]["name"]
                for e in container.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})
            }
            names |= {e["secretRef"]["name"] for e in container["envFrom"] if "secretRef" in e}
        names |= {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
    for auth in of_kind(overlay, "TriggerAuthentication"):
        names |= {ref["name"] for ref in auth["spec"].get("secretTargetRef", [])}
    for ingress in of_kind(overlay, "Ingress"):
        names |= {tls["secretName"] for tls in ingress["spec"].get("tls", [])}
    return names


def test_prod_holds_no_secret_values_and_names_the_secrets_it_needs() -> None:
    assert not of_kind("prod", "Secret"), "the prod overlay must not carry secret values"
    referenced = _secret_references("prod")
    assert referenced == PROD_EXTERNAL_SECRETS
    documented = (K8S / "overlays" / "prod" / "kustomization.yaml").read_text()
    for name in referenced:
        assert name in documented, f"{name} is not listed in overlays/prod/kustomization.yaml"


def test_dev_secrets_are_the_well_known_development_values() -> None:
    words = re.compile(r"[A-Za-z0-9_-]+")
    secrets = of_kind("dev", "Secret")
    assert secrets
    for secret in secrets:
        for key, value in secret["data"].items():
            text = base64.b64decode(value).decode()
            assert DEV_SECRETS & set(words.findall(text)), (
                f"dev Secret {secret['metadata']['name']} {key} is not a well-known development value"
            )
    generated = {s["metadata"]["name"] for s in secrets}
    for name in _secret_references("dev"):
        assert name in generated or name == "optout-destination-credentials", name


# --- 7. the code accepts what the manifests give a pod ---------------------------------------
def _pod_environment(overlay: str, workdir: Path) -> dict[str, str]:
    """What a connector pod of ``overlay`` sees: the ConfigMap, its Secrets (dev: the
    rendered values; prod: fake non-development values, as an operator would make), the
    destinations file with its mounted paths moved under ``workdir``."""
    env = dict(settings_configmap(overlay))
    dev_secrets = {
        (s["metadata"]["name"].rsplit("-", 1)[0], key): base64.b64decode(v).decode()
        for s in of_kind(overlay, "Secret")
        for key, v in s["data"].items()
    }
    fake = {
        "database-url": "postgresql://optout_app:s3cret-from-vault@db.internal:5432/optout",
        "web-token-keys": '{"2026-12": "' + base64.urlsafe_b64encode(b"k" * 32).decode().rstrip("=") + '"}',
        "suppression-keys": '{"2026-12": "' + base64.urlsafe_b64encode(b"s" * 32).decode().rstrip("=") + '"}',
        "kafka-sasl-password": "from-the-vault",
        "email-provider-token": "unused-in-prod",
        "partners": "[]",
        "inbound-mailgun-signing-key": "from-the-vault-mailgun",
        "inbound-twilio-auth-token": "from-the-vault-twilio",
        "lookup-api-keys": '["lookup-key-from-the-vault"]',
    }
    connector = next(d for d in of_kind(overlay, "Deployment") if service_of(d).startswith("connector."))
    for item in pod_spec(connector)["containers"][0]["env"]:
        ref = item["valueFrom"]["secretKeyRef"]
        value = dev_secrets.get((ref["name"], ref["key"])) if overlay == "dev" else fake.get(ref["key"])
        if value is not None:
            env[item["name"]] = value
    toml = destinations_toml(overlay)
    for mounted in ("/etc/optout/sftp/",):
        if mounted in toml:
            folder = workdir / "sftp"
            folder.mkdir(exist_ok=True)
            (folder / "private_key").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nfake\n")
            (folder / "known_hosts").write_text("sftp.mailhouse.example.com ssh-ed25519 AAAAfake\n")
            toml = toml.replace(mounted, f"{folder}/")
    destinations = workdir / "destinations.toml"
    destinations.write_text(toml)
    env["OPTOUT_DESTINATIONS_FILE"] = str(destinations)
    for table in tomllib.loads(toml)["destinations"]:
        for source in table.get("credentials", {}).values():
            if "env" in source:
                env[source["env"]] = f"fake-{source['env'].lower()}"
    return env


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_code_accepts_the_settings_of_a_pod(
    overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("OPTOUT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no .env file
    environment = _pod_environment(overlay, tmp_path)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    cfg = load_settings()  # ConfigurationError here: a setting the code refuses
    check_destinations(cfg)
    assert cfg.env == ("production" if overlay == "prod" else "development")
    assert cfg.metrics_port > 0 and cfg.web_host == "0.0.0.0"
    assert cfg.destinations.names == load_destinations(Path(environment["OPTOUT_DESTINATIONS_FILE"])).names

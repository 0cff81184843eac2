"""The local stack really works: a real broker (PLAINTEXT + SASL/PLAIN) and a real PostgreSQL.

down() is deliberately not exercised here: other test modules share the running stack.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import paramiko
import psycopg
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from services.devstack import (
    KAFKA_SASL_MECHANISM,
    KAFKA_SASL_PASSWORD,
    KAFKA_SASL_USERNAME,
    StackInfo,
    ensure_up,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack() -> StackInfo:
    return ensure_up()


@pytest.fixture
def topic(stack: StackInfo) -> Iterator[str]:
    name = f"devstack-test-{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    for future in admin.create_topics(
        [NewTopic(name, num_partitions=1, replication_factor=1)], operation_timeout=30
    ).values():
        future.result(timeout=30)
    yield name
    for future in admin.delete_topics([name], operation_timeout=30).values():
        future.result(timeout=30)


def _sasl_conf(bootstrap: str, password: str) -> dict[str, object]:
    return {
        "bootstrap.servers": bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": KAFKA_SASL_MECHANISM,
        "sasl.username": KAFKA_SASL_USERNAME,
        "sasl.password": password,
    }


def test_ensure_up_is_idempotent_and_reuses(stack: StackInfo) -> None:
    started = time.monotonic()
    again = ensure_up()
    assert again == stack
    assert time.monotonic() - started < 10, "a running stack must be reused, not restarted"
    env = stack.env()
    sftp = set(stack.sftp.env()) if stack.sftp is not None else set()
    assert set(env) == {"OPTOUT_KAFKA_BOOTSTRAP", "OPTOUT_DATABASE_URL", "OPTOUT_ADMIN_DATABASE_URL", *sftp}
    assert not sftp or "OPTOUT_SFTP_KNOWN_HOSTS" in sftp
    assert env["OPTOUT_KAFKA_BOOTSTRAP"] == stack.kafka_bootstrap
    assert env["OPTOUT_DATABASE_URL"] == stack.database_url


def test_produce_and_consume_round_trip(stack: StackInfo, topic: str) -> None:
    payload = f"hello-{uuid.uuid4()}".encode()
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap, "enable.idempotence": True})
    delivered: list[object] = []
    producer.produce(
        topic, key=b"k", value=payload, on_delivery=lambda err, msg: delivered.append(err or msg)
    )
    assert producer.flush(30) == 0
    assert len(delivered) == 1 and not isinstance(delivered[0], Exception)

    consumer = Consumer(
        {
            "bootstrap.servers": stack.kafka_bootstrap,
            "group.id": f"devstack-test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 60
        received = None
        while received is None and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            received = msg
        assert received is not None, "message not consumed back within 60 s"
        assert received.value() == payload
        assert received.key() == b"k"
        consumer.commit(message=received, asynchronous=False)  # exercises __consumer_offsets
    finally:
        consumer.close()


def test_auto_topic_creation_is_disabled(stack: StackInfo) -> None:
    name = f"devstack-absent-{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    admin.list_topics(topic=name, timeout=10)
    assert name not in admin.list_topics(timeout=10).topics


def test_postgres_roles(stack: StackInfo) -> None:
    with psycopg.connect(stack.database_url, connect_timeout=10) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        assert conn.execute("select current_user").fetchone() == ("optout_app",)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("create table devstack_app_must_not_create (id int)")
    with psycopg.connect(stack.admin_database_url, connect_timeout=10) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        assert conn.execute("select current_user").fetchone() == ("optout_admin",)
        owner = conn.execute(
            "select pg_get_userbyid(datdba) from pg_database where datname = current_database()"
        ).fetchone()
        assert owner == ("optout_admin",)
        is_super = conn.execute("select rolsuper from pg_roles where rolname = current_user").fetchone()
        assert is_super == (False,)
        conn.execute("create temp table devstack_admin_can_create (id int)")
        conn.rollback()
    if stack.superuser_database_url is not None:
        with psycopg.connect(stack.superuser_database_url, connect_timeout=10) as conn:
            assert conn.execute("show fsync").fetchone() == ("on",)
            assert conn.execute("show max_connections").fetchone() == ("200",)


def test_admin_can_create_tables_in_public(stack: StackInfo) -> None:
    table = f"devstack_probe_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(stack.admin_database_url, connect_timeout=10) as conn:
        conn.execute(f"create table public.{table} (id int)")
        conn.rollback()  # leave nothing behind


def test_sasl_plain_listener(stack: StackInfo) -> None:
    if stack.kafka_sasl_bootstrap is None:
        pytest.skip("the broker is external (OPTOUT_KAFKA_BOOTSTRAP); no SASL listener of ours")
    good = AdminClient(_sasl_conf(stack.kafka_sasl_bootstrap, KAFKA_SASL_PASSWORD))
    metadata = good.list_topics(timeout=15)
    assert metadata.brokers

    errors: list[KafkaError] = []
    bad = AdminClient(
        {
            **_sasl_conf(stack.kafka_sasl_bootstrap, "wrong-password"),
            "error_cb": errors.append,
            "log_level": 0,
        }
    )
    deadline = time.monotonic() + 15
    while not errors and time.monotonic() < deadline:
        bad.poll(0.2)
    assert [e.code() for e in errors][:1] == [KafkaError._AUTHENTICATION], errors
    with pytest.raises(KafkaException):
        bad.list_topics(timeout=2)


def test_sshd_takes_our_key_only_and_serves_sftp_only(stack: StackInfo) -> None:
    sftp = stack.sftp
    if sftp is None:
        pytest.skip("OPTOUT_SFTP_HOST names an external SFTP server")
    client = paramiko.SSHClient()
    client.load_host_keys(str(sftp.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.AuthenticationException):
        client.connect(
            sftp.host, sftp.port, sftp.username, password="guess", look_for_keys=False, allow_agent=False
        )
    client.close()
    client = paramiko.SSHClient()
    client.load_host_keys(str(sftp.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    key = paramiko.Ed25519Key.from_private_key_file(str(sftp.private_key))
    client.connect(sftp.host, sftp.port, sftp.username, pkey=key, look_for_keys=False, allow_agent=False)
    try:
        assert client.open_sftp().normalize(".") == sftp.remote_dir
        _, out, _ = client.exec_command("id")
        assert b"sftp connections only" in out.read()  # ForceCommand internal-sftp: no shell
    finally:
        client.close()

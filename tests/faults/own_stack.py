"""A broker and a PostgreSQL server of the short fault run's own, beside the shared stack.

The short fault run stops and restarts the broker and the database under load. On the shared
stack that would break every test running beside it, so `make test` ran it alone, after the
parallel pass, and the suite paid its whole minute of wall time. With a stack of its own
(``<state>/fault-stack``, Kafka on 19392-19394, PostgreSQL on 15532: clear of the shared
stack's 19092-19094 / 15432 and of the clusters' 19192-19314) it runs in the parallel pass.

Against a broker or database the user gave (OPTOUT_KAFKA_BOOTSTRAP / OPTOUT_DATABASE_URL), we
start nothing: the run uses the shared stack without stopping either server (the test says
so), since other tests run beside it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from services.devstack import StackInfo, kafka_broker, postgres_server
from services.devstack import config as c
from services.devstack.config import Paths

FAULT_STACK_DIR = "fault-stack"
FAULT_KAFKA_PORT_BASE = 19392
FAULT_PG_PORT = 15532
# The shared stack's addresses, which the run's own must not inherit.
_SHARED = (c.ENV_KAFKA_BOOTSTRAP, c.ENV_DATABASE_URL, c.ENV_ADMIN_DATABASE_URL, c.ENV_BROKERS)


@contextmanager
def own_stack(shared: StackInfo) -> Iterator[StackInfo]:
    """Start a single broker and a PostgreSQL server in their own folder and ports, with the
    devstack's environment pointing at them while the block runs (the fault run's broker
    restart and database outage act on ``Paths.from_env()``); stop and remove them after."""
    if shared.superuser_database_url is None or shared.kafka_brokers == 0:
        yield shared  # an external broker or database: we start nothing
        return
    paths = Paths.from_env()
    state = paths.state_dir / FAULT_STACK_DIR
    with pytest.MonkeyPatch.context() as env:
        for name in _SHARED:
            env.delenv(name, raising=False)
        env.setenv(c.ENV_STACK_DIR, str(state))
        env.setenv(c.ENV_KAFKA_PORT_BASE, str(FAULT_KAFKA_PORT_BASE))
        env.setenv(c.ENV_PG_PORT, str(FAULT_PG_PORT))
        own = Paths.from_env()
        _stop(own)  # one left over by an interrupted run
        shutil.rmtree(state, ignore_errors=True)
        own.prepare_state_dir()
        try:
            postgres_server.ensure_running(own, install=False)
            kafka_broker.ensure_running(own, install=False)
            node = kafka_broker.single_node(own)
            yield StackInfo(
                kafka_bootstrap=node.bootstrap,
                kafka_sasl_bootstrap=node.sasl_bootstrap,
                database_url=c.local_database_url(),
                admin_database_url=c.local_admin_database_url(),
                superuser_database_url=c.local_superuser_database_url(),
                started_here=True,
                kafka_brokers=1,
            )
        finally:
            _stop(own)
            shutil.rmtree(state, ignore_errors=True)
        assert kafka_broker.running_pid(own) is None and postgres_server.running_pid(own) is None


def _stop(paths: Paths) -> None:
    kafka_broker.stop(paths)
    postgres_server.stop(paths)

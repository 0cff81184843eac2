"""The local real Kafka broker and real PostgreSQL server used for development and tests.

    python -m services.devstack up | down | status | env

See ``stack.py`` for the Python interface (``ensure_up``, ``down``, ``status``, ``StackInfo``).
"""

from services.devstack.config import (
    KAFKA_SASL_MECHANISM,
    KAFKA_SASL_PASSWORD,
    KAFKA_SASL_USERNAME,
)
from services.devstack.errors import StackError
from services.devstack.stack import StackInfo, down, ensure_up, status

__all__ = [
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SASL_USERNAME",
    "StackError",
    "StackInfo",
    "down",
    "ensure_up",
    "status",
]

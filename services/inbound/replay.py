"""Tokens already used, in PostgreSQL (``inbound_replay_tokens``), shared by every instance.

A token is looked up before publishing and remembered only after the broker acknowledged:
a delivery answered 503 may come again with the same token and is then accepted.
Two copies racing each other may both publish; they carry the same event id, so intake
records one request.
"""

from __future__ import annotations

import hashlib
import time
from datetime import datetime

import psycopg
from psycopg_pool import PoolTimeout

from services.common.db import AsyncPool
from services.common.logging import get_logger

log = get_logger(__name__)

CLEANUP_EVERY_SECONDS = 60.0


class ReplayUnavailable(Exception):
    """The database did not answer: the webhook is answered 503 (the provider retries)."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class ReplayStore(AsyncPool):
    def __init__(
        self, dsn: str, max_size: int = 4, timeout: float = 5.0, prepared_statements: bool = True
    ) -> None:
        super().__init__(
            dsn, "optout-inbound", max_size=max_size, timeout=timeout, prepared_statements=prepared_statements
        )
        self._last_cleanup = 0.0

    async def seen(self, provider: str, token: str) -> bool:
        try:
            async with self.pool.connection(self.timeout) as conn:
                cursor = await conn.execute(
                    "SELECT 1 FROM inbound_replay_tokens"
                    " WHERE provider = %s AND token_sha256 = %s AND expires_at > now()",
                    (provider, _digest(token)),
                )
                return await cursor.fetchone() is not None
        except (psycopg.Error, PoolTimeout) as exc:
            raise ReplayUnavailable(type(exc).__name__) from None

    async def remember(self, provider: str, token: str, expires_at: datetime) -> None:
        try:
            async with self.pool.connection(self.timeout) as conn:
                await conn.execute(
                    "INSERT INTO inbound_replay_tokens (provider, token_sha256, expires_at)"
                    " VALUES (%s, %s, %s) ON CONFLICT (provider, token_sha256)"
                    " DO UPDATE SET expires_at ="
                    " GREATEST(inbound_replay_tokens.expires_at, EXCLUDED.expires_at)",
                    (provider, _digest(token), expires_at),
                )
                if time.monotonic() - self._last_cleanup > CLEANUP_EVERY_SECONDS:
                    self._last_cleanup = time.monotonic()
                    await conn.execute("DELETE FROM inbound_replay_tokens WHERE expires_at < now()")
        except (psycopg.Error, PoolTimeout) as exc:
            raise ReplayUnavailable(type(exc).__name__) from None

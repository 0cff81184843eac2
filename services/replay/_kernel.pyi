from collections.abc import Callable, Sequence
from typing import Literal

def build_batch(
    rows: list[tuple[str, tuple[str, ...], int, str | None, tuple[str, ...]]],
    keys: dict[str, bytes],
    email_context: bytes,
    phone_context: bytes,
    scopes_cache: dict[tuple[str, ...], bytes],
    scopes: Callable[[Sequence[str]], bytes],
    head: bytes,
    fixed: bytes,
    times: bytes,
    id_prefix: bytes,
    customer_flags: int,
    email_flags: int,
    phone_flags: int,
    /,
) -> list[tuple[str, bytes] | Literal[False] | None] | None: ...
def attach_sealed(
    rows: list[tuple[str, tuple[str, ...], int, str | None, tuple[str, ...]]],
    where: list[int],
    text: str | None,
    /,
) -> None: ...

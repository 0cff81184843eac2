"""The cyclic garbage collector of a long-running service process (issue #15).

A consume loop's batch allocates thousands of small containers (decoded records, commands,
rows, acks, HTTP and database client objects), nearly all short-lived and free of cycles:
reference counting frees them. With CPython's default first threshold (700 allocations) the
collector ran several times per batch, and each full collection rescanned everything the
process loaded at start-up (httpx, botocore, psycopg, pydantic models: hundreds of thousands of
objects). ``tune_gc`` collects once, moves what start-up left alive out of the collector's
view (``gc.freeze``) and raises the thresholds; cycles are still collected, every 50,000
allocations. Every service's ``run`` calls it (intake first: the collector took 20-30% of its
Python time; intake also pauses it while a batch is in hand, ``services.intake.step.paused_gc``).
"""

from __future__ import annotations

import gc

GC_THRESHOLD = (50_000, 20, 100)


def tune_gc() -> None:
    """Collect cycles less often, and never rescan what start-up loaded."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def collect_young() -> None:
    """Collect the young generations' cycles now: at a batch's end, what the batch left in
    reference cycles goes with it. The connectors call it after every batch: each provider
    call leaves cycles (httpx's Response and the stream it was read from refer to each other,
    and the Response holds its Request with the whole body, up to 1,000 opt-outs, ~150 KB).
    At GC_THRESHOLD, counted in net allocations, which such garbage barely moves, they piled up
    between collections: third_party_sharing grew 118 -> 219 MiB through 1,000,000 opt-outs
    (1.85x, bench-memory, 2026-12-02; +1 MiB a batch of 2,000 in bench_batch_cpu's harness).
    A collection of the two young generations right after a batch scans little (what the
    batch left), not what start-up loaded (frozen)."""
    gc.collect(1)

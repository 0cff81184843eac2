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

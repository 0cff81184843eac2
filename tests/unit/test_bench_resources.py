"""The figures bench-resources prints, computed from /proc samples (pure arithmetic)."""

from __future__ import annotations

import os

from benchmarks.bench_resources import Phase, Service, cpu_mean, cpu_peak, cpu_used, rss_bytes, rss_max


def _service(samples: list[tuple[float, float, int]]) -> Service:
    return Service("x", ["x"], 0, samples=samples)


def test_cpu_mean_peak_and_used_over_a_phase() -> None:
    # One sample a second: 0.1 CPU-s a second for 5 s, then 0.5 a second for 5 s.
    samples = [(float(t), 0.1 * min(t, 5) + 0.5 * max(0, t - 5), 100 * 2**20 + t) for t in range(11)]
    service = _service(samples)
    whole = Phase(0.0, 10.0)
    assert abs(cpu_mean(service, whole) - 30.0) < 1e-9  # 3 CPU-s in 10 s
    assert abs(cpu_peak(service, whole) - 50.0) < 1e-9  # the busiest 5 s
    assert abs(cpu_used(service, whole) - 3.0) < 1e-9
    assert abs(rss_max(service, Phase(0.0, 4.0)) - (100 + 4 / 2**20)) < 1e-9


def test_an_empty_phase_counts_nothing() -> None:
    service = _service([(0.0, 1.0, 10)])
    assert cpu_mean(service, Phase(5.0, 6.0)) == 0.0
    assert cpu_peak(service, Phase(5.0, 6.0)) == 0.0
    assert cpu_used(service, Phase(5.0, 6.0)) == 0.0
    assert rss_max(service, Phase(5.0, 6.0)) == 0.0


def test_rss_of_this_process_is_read_from_proc() -> None:
    assert rss_bytes(os.getpid()) > 10 * 2**20


def test_memory_is_flat_when_no_later_figure_exceeds_the_first_by_more_than_the_limit() -> None:
    from benchmarks.bench_resources import Checkpoint, growth_verdicts

    mib = 2**20
    checkpoints = [
        Checkpoint(100, 1.0, {"intake": 100 * mib, "mail": 100 * mib}),
        Checkpoint(200, 2.0, {"intake": 110 * mib, "mail": 130 * mib}),
        Checkpoint(300, 3.0, {"intake": 119 * mib, "mail": 125 * mib}),
    ]
    verdicts = growth_verdicts(checkpoints, 0.2)
    assert verdicts["intake"] == (1.19, True)
    assert verdicts["mail"] == (1.3, False)
    assert growth_verdicts([], 0.2) == {}

"""Timing helper shared by the benchmark scripts (run as `python benchmarks/<name>.py`, so
this directory is on sys.path)."""

import statistics
import time

import jax


def median_ms(fn, runs: int) -> float:
    """Median wall time of `fn(i)` for i = 1..runs, in ms, after one untimed call `fn(0)`
    (compilation and warm-up); every call's outputs are awaited (`block_until_ready`)."""
    jax.block_until_ready(fn(0))
    times = []
    for i in range(runs):
        start = time.perf_counter()
        jax.block_until_ready(fn(i + 1))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)

"""Timing and device-report helpers shared by the benchmark scripts (run as
`python benchmarks/<name>.py`, so this directory is on sys.path)."""

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


def device_report() -> dict:
    """What every benchmark's JSON starts with: the machine the figures were taken on."""
    device = jax.devices()[0]
    return {
        "device_kind": device.device_kind,
        "platform": device.platform,
        "devices": jax.device_count(),
        "jax_version": jax.__version__,
    }

"""Test set-up: CPU only, 8 fake devices for sharding tests, set before jax is imported."""

import os

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def pytest_collection_modifyitems(config, items):
    """Files with slow (end-to-end) tests run first. `make test` runs two xdist workers
    with one file per worker (`--dist loadfile`, files handed out in collection order):
    started first, the long files overlap the many short ones instead of running last,
    alone on one core while the other idles. The order within each group is unchanged."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)

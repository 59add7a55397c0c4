"""Test set-up, done before jax is imported (also inherited by the tests' subprocesses).

- CPU only, 8 fake devices for the sharding tests.
- XLA:CPU compiles without its expensive LLVM passes: the tests compile hundreds of small
  programs and run each a few times, so compile time dominates (measured on
  tests/train/test_loop.py: 32% less CPU time). Numerics are unchanged in kind (same ops,
  less fusion/vectorization), and every comparison in the tests runs under the same flags.
- One persistent compilation cache for the whole run, shared by the xdist workers and
  every subprocess a test launches (resume, preemption, multi-host, CLI runs compile the
  same train step again; 49% less CPU time on test_loop.py). It lives in a temporary
  directory created by the controlling process and removed when it exits; set
  ACTION_GEN_TEST_JAX_CACHE to keep one across runs.
"""

import atexit
import os
import shutil
import tempfile

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = " ".join(
    [
        os.environ.get("XLA_FLAGS", ""),
        "--xla_force_host_platform_device_count=8",
        "--xla_backend_optimization_level=0",
        "--xla_llvm_disable_expensive_passes=true",
    ]
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

if "ACTION_GEN_TEST_JAX_CACHE" not in os.environ:
    # The controller runs first (xdist workers inherit its environment).
    _cache_dir = tempfile.mkdtemp(prefix="action_gen_test_jax_cache_")
    os.environ["ACTION_GEN_TEST_JAX_CACHE"] = _cache_dir
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["ACTION_GEN_TEST_JAX_CACHE"]
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"


# The longest test files, started first: `make test` runs `-n 2 --dist loadfile
# --no-loadscope-reorder`, which hands files to the two workers in collection order (without
# that flag pytest-xdist sorts files by their number of tests, so the learning check's few
# long tests ran last, alone), so a long file collected last would run alone at the end
# (measured: the learning check, ~4 min, and Meta-World, ~6 min).
_LONGEST_FIRST = ("test_learning.py", "test_metaworld.py")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = os.path.basename(str(item.fspath))
        return _LONGEST_FIRST.index(name) if name in _LONGEST_FIRST else len(_LONGEST_FIRST)

    items.sort(key=rank)  # stable: every other test keeps its order

"""benchmarks/pi0_latency.py --quick: the Policy-path π0 benchmark end to end at `tiny` size
on the CPU (every figure present and positive, one JSON object), with JAX's own attention
and 2 Euler steps (the switches a GPU session measures)."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_quick_reports_every_figure():
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
    )
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "benchmarks", "pi0_latency.py"),
            "--quick",
            "--attention=xla",
            "--num_steps=2",
        ],  # fmt: skip
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["variant"] == "tiny" and report["platform"] == "cpu"
    assert report["attention"] == "xla" and report["shapes"]["steps"] == 2
    for key in ("init_s", "cast_s", "compile_s", "chunk_ms", "prefix_ms", "step_ms",
                "uncached_chunk_ms", "policy_chunk_ms"):  # fmt: skip
        assert report[key] > 0, key
    assert report["params"] > 0 and report["policy_compile_s"] == report["compile_s"]

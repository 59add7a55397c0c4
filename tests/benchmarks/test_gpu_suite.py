"""benchmarks/gpu_suite.py --quick: every section's code path at tiny sizes on the CPU."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUITE = os.path.join(REPO, "benchmarks", "gpu_suite.py")


def test_quick_suite_runs_every_section(tmp_path):
    out = tmp_path / "figures.jsonl"
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        # What is tested is that the code paths run, not how fast: cheap XLA:CPU codegen
        # (about half the compile time of these tiny programs).
        XLA_FLAGS="--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
    )
    proc = subprocess.run(
        [sys.executable, SUITE, "--quick", f"--out={out}"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert printed == [json.loads(ln) for ln in out.read_text().splitlines()]
    figures = {row["figure"]: row for row in printed}
    assert not [f for f in figures if f.endswith(".error")], proc.stdout[-3000:]
    for row in printed:  # every figure says where and how it was taken
        assert row["device"] and row["jax"] and "gpu_suite.py --quick" in row["command"]
    expected = [
        "sampler.tiny.ddpm2.scan_ms", "sampler.tiny.ddpm2.loop_ms",
        "sampler.tiny.flow2.scan_ms", "sampler.tiny.flow2.loop_ms",
        "sampler.tiny_image.ddim2.scan_ms", "sampler.tiny_image.ddim2.loop_ms",
        "sampler.tiny.consistency1.scan_ms", "sampler.tiny.consistency2.scan_ms",
        "sampler.tiny.best_of_4_consistency1.scan_ms",
        "train.fp32.samples_per_s", "serve.clients1.e2e_p50_ms", "serve.clients2.e2e_p50_ms",
        "pi0.tiny.chunk_ms", "pi0.tiny.prefix_ms", "pi0.tiny.step_ms", "pi0.tiny.init_s",
        "pi0.tiny.compile_s", "pi0.tiny.policy_chunk_ms", "pi0.tiny.steps1.chunk_ms",
        "profile.small_gemm_tanh_us",
        "suite.total_s",
    ]  # fmt: skip
    for name in expected:
        assert figures[name]["value"] > 0, name
    assert figures["sampler.tiny.ddpm2.scan_ms"]["kernels_per_iteration"] > 0
    best_of = figures["sampler.tiny.best_of_4_consistency1.scan_ms"]
    assert best_of["vs_plain_1_step"] == round(
        best_of["value"] / figures["sampler.tiny.consistency1.scan_ms"]["value"], 4
    )
    # The summary table comes last.
    assert proc.stdout.rstrip().splitlines()[-1].startswith("suite.total_s")

"""Per-chunk latency of the scanned samplers vs a Python loop of jitted steps.

  .venv/bin/python benchmarks/sampler.py [--runs 10] [--models dp,tiny] [--batch 1]
      [--few_step_only]

Scanned: the objective's `sample` under one `jax.jit` (the whole chain is one XLA program).
Loop: what PyTorch-style code does: one jitted denoising step (model + DDIM/DDPM/Euler
update) called from Python num_steps times, the per-step constants passed in as
arguments, and a single `block_until_ready` at the end (dispatch stays asynchronous).
Samplers: DDIM-10 and DDPM-100 (diffusion, K = 100) and flow-10 (Euler). Few-step
samplers ("few_step" of each model, scanned only): consistency (flow parameterization,
N = 20 grid) and shortcut (the U-Net with its step-size input) at 1, 2 and 4 steps, and
the consistency sampler as the most stable of 4 candidates at 1 and 2 steps.
Models (MODELS): DP's Push-T low-dim U-Net (`dp`: down_dims (256, 512, 1024), kernel 5,
embed 256, obs T=2 x S=20, H=16, A=2), DP's image U-Net (`image`: ResNet18-GN on one
96 px camera cropped to 84, down_dims (512, 1024, 2048), embed 128, state S=2) and tiny
variants of both (`tiny`, `tiny_image`: CPU tests, the dispatch-bound regime).
Prints one JSON object; latencies are medians over --runs after a warm-up call.

The functions here are also the sampler section of benchmarks/gpu_suite.py, including its
speed switches (`Variant`: scan unroll, XLA compiler options, bf16 parameters). What they
measured on an H200 is in BUILD_NOTES (issue 17); the 1-D conv as cuDNN's convolution
(`lax.conv_general_dilated`) instead of im2col + GEMM was 2.8x slower there and is gone.
"""

import dataclasses
import functools
import json
import os
import re
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from timing import device_report, median_ms  # benchmarks/timing.py

# Runnable from a plain checkout (the GPU machine has no install of this package).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from action_gen import cli, models, objectives  # noqa: E402
from action_gen.data import schema  # noqa: E402
from action_gen.objectives import diffusion, flow  # noqa: E402
from action_gen.train.step import cast_floats, wrap_apply_fn  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Workload:
    """A model config and the observation it reads (T steps of S-dim state, and one
    camera of `image_size` px when set)."""

    config: dict
    state_dim: int = 20
    image_size: int | None = None


_IMAGE = {"name": "unet1d", "kernel_size": 5}
MODELS = {
    "dp": Workload(
        {"name": "unet1d", "down_dims": (256, 512, 1024), "kernel_size": 5, "time_embed_dim": 256}
    ),
    "tiny": Workload(
        {"name": "unet1d", "down_dims": (16, 32), "kernel_size": 5, "time_embed_dim": 16}
    ),
    "image": Workload(
        {**_IMAGE, "down_dims": (512, 1024, 2048), "time_embed_dim": 128, "image_crop": (84, 84)},
        state_dim=2,
        image_size=96,
    ),
    "tiny_image": Workload(
        {
            **_IMAGE,
            "down_dims": (16, 32),
            "time_embed_dim": 16,
            "image_features": 8,
            "num_keypoints": 4,
            "resnet_width": 8,
            "resnet_blocks": (1, 1, 1, 1),
            "image_crop": (20, 20),
        },
        state_dim=2,
        image_size=24,
    ),
}
CAMERA = "image"
T, H, A = 2, 16, 2
NUM_TRAIN_STEPS = 100
# (method, steps): "ddim" / "ddpm" are diffusion samplers, "flow" 10 Euler steps.
SAMPLERS = (("ddim", 10), ("ddpm", 100), ("flow", 10))

# XLA:GPU command-buffer (CUDA graph) settings, as per-program compiler options. XLA's
# default list captures runs of kernels and library calls between control flow; adding
# WHILE and CONDITIONAL captures the scanned sampler's loop too (one graph per chunk).
_CMD_DEFAULT = "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,DYNAMIC_SLICE_FUSION"
COMPILER_OPTIONS = {
    "default": {},
    "cmdbuf_while": {"xla_gpu_enable_command_buffer": _CMD_DEFAULT + ",WHILE,CONDITIONAL"},
    "cmdbuf_while_unrolled": {
        "xla_gpu_enable_command_buffer": _CMD_DEFAULT + ",WHILE,CONDITIONAL",
        "xla_gpu_command_buffer_unroll_loops": True,
    },
}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One setting of the sampler's speed switches.

    Attributes:
      scan_unroll: the objective's `scan_unroll` (steps per loop iteration).
      compiler: a key of COMPILER_OPTIONS (XLA options of the scanned program).
      bf16: parameters cast to bf16 once, outside the sampler, and the U-Net body and
        image encoder run in bf16 (`float32_body=False`, `dtype="bfloat16"`; the
        sampler's state and update stay float32).
    """

    scan_unroll: int = 1
    compiler: str = "default"
    bf16: bool = False

    def label(self) -> str:
        default = Variant()
        parts = [
            f"{f.name}={getattr(self, f.name)}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
        ]
        return ",".join(parts) or "baseline"


@dataclasses.dataclass
class Setup:
    """A built model: `apply_fn(params, obs, x, t)`, its parameters and an observation."""

    apply_fn: Callable
    params: dict
    obs: dict
    num_params: int


def observation(workload: Workload, batch: int, seed: int = 1) -> dict:
    """Random observation: state [B, T, S] float32, camera [B, T, h, w, 3] uint8."""
    rng = np.random.default_rng(seed)
    obs = models.example_observation(T, workload.state_dim, batch)
    obs[schema.OBS_STATE] = jnp.asarray(
        rng.normal(size=(batch, T, workload.state_dim)), jnp.float32
    )
    if workload.image_size:
        size = workload.image_size
        images = rng.integers(0, 256, (batch, T, size, size, 3), dtype=np.uint8)
        obs[schema.image_key(CAMERA)] = jnp.asarray(images)
    return obs


def build(model_name: str, batch: int, variant: Variant = Variant(), params=None) -> Setup:
    """The model of `MODELS[model_name]` under `variant` (random init, or `params`: the
    float32 parameters of an earlier `build`, shared between variants)."""
    workload = MODELS[model_name]
    config = dict(workload.config)
    if variant.bf16:  # the U-Net body and the image encoder (if any) in bf16
        config.update(float32_body=False, dtype="bfloat16")
    model = models.create_model(config)
    obs = observation(workload, batch)
    if params is None:
        params = models.init_params(model, jax.random.key(0), obs, (H, A))
    apply_fn = models.make_apply_fn(model)
    if variant.bf16:
        # Cast once here: a cast inside the sampler would re-read the float32 weights.
        params = jax.block_until_ready(cast_floats(params, jnp.bfloat16))
        apply_fn = wrap_apply_fn(apply_fn, compute_dtype="bfloat16")
    num_params = sum(x.size for x in jax.tree.leaves(params))
    return Setup(apply_fn, params, obs, int(num_params))


def sample_fn(apply_fn: Callable, method: str, num_steps: int, scan_unroll: int = 1):
    """`fn(params, obs, rng) -> [B, H, A]`: the objective's scanned sampler, unjitted."""
    if method == "flow":
        return functools.partial(
            flow.sample,
            apply_fn,
            num_steps=num_steps,
            action_shape=(H, A),
            scan_unroll=scan_unroll,
        )
    return functools.partial(
        diffusion.sample,
        apply_fn,
        num_steps=num_steps,
        action_shape=(H, A),
        sampler=method,
        num_train_steps=NUM_TRAIN_STEPS,
        scan_unroll=scan_unroll,
    )


def compile_scan(setup: Setup, method: str, num_steps: int, variant: Variant = Variant()):
    """(compiled scanned sampler, compile seconds) under `variant`'s unroll and options."""
    fn = jax.jit(sample_fn(setup.apply_fn, method, num_steps, variant.scan_unroll))
    tic = time.perf_counter()
    lowered = fn.lower(setup.params, setup.obs, jax.random.key(0))
    compiled = lowered.compile(COMPILER_OPTIONS[variant.compiler] or None)
    return compiled, time.perf_counter() - tic


def time_scan(setup: Setup, method: str, num_steps: int, runs: int, variant=Variant()) -> dict:
    """Median ms per chunk of the scanned sampler, its compile time and kernel counts, and
    the optimized HLO ("hlo")."""
    compiled, compile_s = compile_scan(setup, method, num_steps, variant)
    ms = median_ms(lambda i: compiled(setup.params, setup.obs, jax.random.key(i)), runs)
    hlo = compiled.as_text()
    return {"ms": ms, "compile_s": compile_s, **kernel_counts(hlo), "hlo": hlo}


def _step_fn(apply_fn: Callable, method: str):
    """One jitted step `step(params, obs, x, per-step constants...) -> x`."""
    if method == "flow":

        @jax.jit
        def flow_step(params, obs, x, t, dt):
            time = jnp.full((x.shape[0],), t * 100.0, jnp.float32)
            return x + dt * apply_fn(params, obs, x, time).astype(jnp.float32)

        return flow_step
    update = diffusion.ddpm_step if method == "ddpm" else diffusion.ddim_step

    @jax.jit
    def step(params, obs, x, k, alpha_bar, alpha_bar_prev, noise):
        t = jnp.full((x.shape[0],), k, jnp.float32)
        out = apply_fn(params, obs, x, t).astype(jnp.float32)
        return update(x, out, alpha_bar, alpha_bar_prev, noise)

    return step


def time_loop(setup: Setup, method: str, num_steps: int, runs: int) -> float:
    """Median ms per chunk of the Python loop of `num_steps` jitted steps."""
    batch = setup.obs[schema.OBS_STATE].shape[0]
    step = _step_fn(setup.apply_fn, method)
    params, obs = setup.params, setup.obs
    if method == "flow":
        ts = (np.arange(num_steps) / num_steps).astype(np.float32)
        dt = np.float32(1.0 / num_steps)
        draw = jax.jit(lambda key: jax.random.normal(key, (batch, H, A), jnp.float32))

        def flow_loop(i):
            x = draw(jax.random.key(i))
            for n in range(num_steps):
                x = step(params, obs, x, ts[n], dt)
            return jnp.clip(x, -1.0, 1.0)

        return median_ms(flow_loop, runs)

    ks, alpha_bars, alpha_bars_prev = diffusion.sampler_constants(NUM_TRAIN_STEPS, num_steps)
    draw = jax.jit(
        functools.partial(
            diffusion.initial_noise,
            batch_size=batch,
            action_shape=(H, A),
            num_steps=num_steps,
            stochastic=True,
        )
    )

    def loop(i):
        x, noise = draw(jax.random.key(i))
        for n in range(num_steps):
            x = step(params, obs, x, ks[n], alpha_bars[n], alpha_bars_prev[n], noise[n])
        return x

    return median_ms(loop, runs)


def forward_ms(setup: Setup, runs: int) -> float:
    """Median ms of one jitted model evaluation (for scale: a chunk is N of them)."""
    forward = jax.jit(setup.apply_fn)
    batch = setup.obs[schema.OBS_STATE].shape[0]
    x0 = jnp.zeros((batch, H, A))
    t0 = jnp.zeros((batch,))
    return median_ms(lambda i: forward(setup.params, setup.obs, x0 + i, t0), runs)


def small_kernel_us(runs: int, length: int = 200, width: int = 256) -> float:
    """The floor under a kernel-bound step: µs per launch of a chain of dependent tiny
    GEMMs ([16, w] @ [w, w], one kernel each, nothing to fuse) inside one scanned loop."""
    weights = jax.random.normal(jax.random.key(0), (4, width, width)) / width**0.5

    def body(x, _):
        for w in weights:  # 4 dependent GEMMs per iteration
            x = jnp.tanh(x @ w)
        return x, None

    chain = jax.jit(lambda x: jax.lax.scan(body, x, None, length=length)[0])
    x = jnp.ones((16, width))
    return 1e3 * median_ms(lambda i: chain(x + i), runs) / (4 * length)


# Optimized-HLO instructions that are not kernel launches of their own.
_NOT_KERNELS = (
    "parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "conditional",
    "call", "after-all", "partition-id", "replica-id", "opt-barrier",
)  # fmt: skip
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*[^=]*?\s([a-z][\w\-]*)\(")


def kernel_counts(hlo_text: str) -> dict:
    """Kernels launched per chunk and per loop iteration, read off the optimized HLO.

    Counts the instructions of the entry computation and of the scan's loop body that
    become launches (fusions, library calls such as cuBLAS GEMMs or cuDNN convolutions,
    copies); fused computations are the insides of those kernels and are skipped. At
    batch 1 the per-step time is mostly these launches, so this is the profile that says
    where a step's time goes. Returns {"kernels_per_iteration", "kernels_outside_loop",
    "loop_iterations" (None: no loop)}.
    """
    computations: dict[str, list[str]] = {}
    entry, name = None, None
    for line in hlo_text.splitlines():
        header = re.match(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if header and not line.startswith(" "):
            name = header.group(2)
            computations[name] = []
            if header.group(1):
                entry = name
            continue
        if name is not None and line.strip() and line.strip() != "}":
            computations[name].append(line)

    def count(comp: str) -> int:
        ops = (_INSTRUCTION.match(line) for line in computations.get(comp, ()))
        return sum(1 for m in ops if m and m.group(1) not in _NOT_KERNELS)

    loops = []  # (kernels per iteration, trip count) of each top-level loop
    for line in computations.get(entry, ()):
        if " while(" in line:
            body = re.search(r"body=%?([\w.\-]+)", line)
            trip = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
            if body:
                loops.append((count(body.group(1)), int(trip.group(1)) if trip else None))
    # The sampler's loop is the largest one (random-bit generation may bring small ones).
    per_iteration, trips = max(loops) if loops else (None, None)
    return {
        "kernels_per_iteration": per_iteration,
        "kernels_outside_loop": count(entry) if entry else None,
        "loop_iterations": trips,
    }


# The few-step objectives' samplers: (method, steps), and each method's objective config.
# best_of_4_consistency: the consistency sampler keeping the most stable of 4 candidate
# chunks (objectives/from_noise.py `select_stable_candidate`: one program, 8-fold batch),
# the obstacle config's 1-step policy.
FEW_STEP = tuple((m, n) for m in ("consistency", "shortcut") for n in (1, 2, 4)) + tuple(
    ("best_of_4_consistency", n) for n in (1, 2)
)
_CONSISTENCY = {"name": "consistency", "parameterization": "flow", "num_teacher_steps": 20}
FEW_STEP_OBJECTIVES = {
    "consistency": _CONSISTENCY,
    "shortcut": {"name": "shortcut"},
    "best_of_4_consistency": {**_CONSISTENCY, "num_candidates": 4},
}


def few_step(model_name: str, batch: int, runs: int, samplers=FEW_STEP) -> dict:
    """Median ms per chunk of each few-step sampler (one scanned program each), with the
    model of `MODELS[model_name]` (shortcut: plus its step-size input)."""
    workload = MODELS[model_name]
    obs = observation(workload, batch)
    results = {}
    for method, num_steps in samplers:
        config = {**workload.config, "step_input": method == "shortcut"}
        model = models.create_model(config)
        params = models.init_params(model, jax.random.key(0), obs, (H, A))
        objective = objectives.create_objective(FEW_STEP_OBJECTIVES[method], (H, A))
        fn = jax.jit(
            functools.partial(objective.sample, models.make_apply_fn(model), num_steps=num_steps)
        )
        tic = time.perf_counter()
        compiled = fn.lower(params, obs, jax.random.key(0)).compile()
        compile_s = time.perf_counter() - tic
        ms = median_ms(lambda i, c=compiled, p=params: c(p, obs, jax.random.key(i)), runs)
        results[f"{method}{num_steps}"] = {
            "scan_ms": round(ms, 3),
            "scan_ms_per_step": round(ms / num_steps, 3),
            "compile_s": round(compile_s, 2),
            **{k: v for k, v in kernel_counts(compiled.as_text()).items() if k != "hlo"},
        }
    return results


def benchmark(model_name: str, batch: int, runs: int, samplers=SAMPLERS) -> dict:
    """Forward pass, then scanned vs loop latency of each sampler, for one model."""
    setup = build(model_name, batch)
    results = {"params": setup.num_params, "forward_ms": round(forward_ms(setup, runs), 3)}
    for method, num_steps in samplers:
        scan = time_scan(setup, method, num_steps, runs)
        loop_ms = time_loop(setup, method, num_steps, runs)
        results[f"{method}{num_steps}"] = summarize(scan, loop_ms, num_steps)
    results["few_step"] = few_step(model_name, batch, runs)
    return results


def summarize(scan: dict, loop_ms: float, num_steps: int) -> dict:
    """The scan-vs-loop figures of one sampler."""
    scan_ms = scan["ms"]
    return {
        "scan_ms": round(scan_ms, 3),
        "loop_ms": round(loop_ms, 3),
        "speedup": round(loop_ms / scan_ms, 2),
        "scan_ms_per_step": round(scan_ms / num_steps, 3),
        "loop_overhead_ms_per_step": round((loop_ms - scan_ms) / num_steps, 3),
        "compile_s": round(scan["compile_s"], 2),
        "kernels_per_iteration": scan["kernels_per_iteration"],
    }


def main():
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--models", default="dp,tiny", help=f"comma list of {sorted(MODELS)}")
    parser.add_argument(
        "--few_step_only", action="store_true", help="only the few-step samplers (1/2/4 steps)"
    )
    args = parser.parse_args()
    unknown = [m for m in args.models.split(",") if m not in MODELS]
    if unknown:
        raise cli.UserError(f"--models: unknown {unknown}; known: {sorted(MODELS)}")
    if args.batch < 1 or args.runs < 1:
        raise cli.UserError(f"--batch={args.batch}, --runs={args.runs}: both must be >= 1")
    report = {
        **device_report(),
        "batch": args.batch,
        "runs": args.runs,
        "shapes": {"T": T, "H": H, "A": A, "K": NUM_TRAIN_STEPS},
    }
    for name in args.models.split(","):
        if args.few_step_only:
            report[name] = {"few_step": few_step(name, args.batch, args.runs)}
        else:
            report[name] = benchmark(name, args.batch, args.runs)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    cli.quiet_logs()
    cli.run_command(main)

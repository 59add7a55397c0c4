"""Every accelerator figure of the project in one run, one JSON line per figure.

  python benchmarks/gpu_suite.py                     # all sections, full sizes (a GPU)
  python benchmarks/gpu_suite.py --switches          # the speed-switch comparisons
  python benchmarks/gpu_suite.py --quick             # the same code paths, tiny, on CPU
  python benchmarks/gpu_suite.py --sections=sampler,train --out=/tmp/figures.jsonl

Sections (in this order; each reuses its benchmark script's functions):
  sampler  low-dim and image U-Net (benchmarks/sampler.py): forward pass, DDIM-10,
           DDPM-100 and flow-10 chunks, scanned vs a Python loop, with compile seconds
           and the kernels launched per loop iteration (the batch-1 profile); and
           best-of-M against plain few steps on the low-dim U-Net at batch 1: a 1-step
           consistency chunk keeping the most stable of 4 candidates (one program, 8
           rows) against the plain 1- and 2-step chunks;
  train    low-dim training throughput at batch 256, fp32 and bf16
           (benchmarks/train_throughput.py);
  serve    the policy server end to end with 1 and 8 clients (benchmarks/serve.py) on a
           checkpoint of the low-dim DDIM U-Net with random weights written here;
  pi0      π0 (bf16) chunk, prefix, step, init and compile seconds, the chunk through
           `sample.policy.Policy` (benchmarks/pi0_latency.py), and the chunk with 1 and 2
           expert passes (a distilled student's cost).
With --switches, the run instead measures the speed switches, each against its baseline
in the same process (sampler, low-dim then image: XLA command buffers capturing the
scanned loop, scan unroll, bf16 parameters cast once, then the winners together; train:
optimizer on one flat vector, remat, batch size, bf16 U-Net body; π0: bf16 parameters
cast once, and the attention implementations xla / cudnn, against the pi0 section's
figures; fused_blocks: the low-dim U-Net's Pallas
residual blocks, benchmarks/fused_blocks.py). Lines of switches start with "switch.".

Every line is printed (and appended to --out) as soon as it is measured, flushed, so a
run cut off by a timeout keeps what it measured: {"figure", "value", "unit", ...,
"device", "jax", "command"}. A summary table with the issue's targets comes last.
Needs only JAX, Flax, Optax, Orbax, chex, numpy, msgpack, websockets and ml_collections
(no TensorFlow).
"""

import dataclasses
import json
import os
import shlex
import sys
import tempfile
import time

# The server section runs the policy server in a child process on the same GPU: this
# process must not take most of its memory up front (JAX's default preallocation).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCHMARKS)
for path in (REPO, BENCHMARKS):  # runnable without installing the package
    if path not in sys.path:
        sys.path.insert(0, path)

import fused_blocks  # noqa: E402
import jax  # noqa: E402
import pi0_latency  # noqa: E402
import sampler  # noqa: E402
import serve  # noqa: E402
import train_throughput  # noqa: E402
from timing import device_report  # noqa: E402

from action_gen import cli  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What one run measures: full sizes on an accelerator, tiny ones with --quick."""

    lowdim: str = "dp"
    image: str = "image"
    samplers: tuple = sampler.SAMPLERS
    image_samplers: tuple = sampler.SAMPLERS
    # Best-of-M against plain few-step sampling (benchmarks/sampler.py FEW_STEP names).
    best_of: tuple = (("consistency", 1), ("consistency", 2), ("best_of_4_consistency", 1))
    runs: int = 20
    train_config: str | None = None  # configs/diffusion_unet_obstacle.py variant
    train_dtypes: tuple = ("float32", "bfloat16")
    train_batch: int = 256
    train_steps: int = 20
    train_warmup: int = 3
    pi0_variant: str = "pi0"
    pi0_dtype: str = "bfloat16"
    pi0_runs: int = 10
    pi0_distilled_steps: tuple = (1, 2)
    serve_clients: tuple = (1, 8)
    serve_requests: int = 30
    serve_max_batch: int = 8
    # Switch comparisons: scan unrolls tried, and the larger training batch.
    unrolls: tuple = (2, 10)
    big_train_batch: int = 1024


QUICK = Sizes(
    lowdim="tiny",
    image="tiny_image",
    samplers=(("ddpm", 2), ("flow", 2)),  # each code path once: DDIM only on the image model
    image_samplers=(("ddim", 2),),
    runs=2,
    train_config="runlocal",
    train_dtypes=("float32",),
    train_batch=16,
    train_steps=2,
    train_warmup=1,
    pi0_variant="tiny",
    pi0_dtype="float32",
    pi0_distilled_steps=(1,),  # the code path once
    pi0_runs=2,
    serve_clients=(1, 2),
    serve_requests=3,
    serve_max_batch=2,
    unrolls=(3,),
    big_train_batch=32,
)

# The targets (an H100/H200 at batch 1 unless said): figure -> (op, bound).
TARGETS = {
    "sampler.dp.ddim10.scan_ms": ("<=", 1.0),
    "sampler.dp.ddpm100.scan_ms": ("<=", 10.0),
    "sampler.image.ddim10.scan_ms": ("<=", 4.0),
    "train.best.samples_per_s": (">=", 60_000),
    "pi0.pi0.chunk_ms": ("<=", 20.0),
}


class Recorder:
    """Prints each figure as one flushed JSON line (and appends it to `out`), keeps them
    for the summary table."""

    def __init__(self, out: str | None, command: str, hlo_dir: str | None = None):
        device = device_report()
        self.common = {
            "device": device["device_kind"],
            "platform": device["platform"],
            "jax": device["jax_version"],
            "command": command,
        }
        self.out = out
        self.hlo_dir = hlo_dir
        self.rows: list[dict] = []
        self.start = time.perf_counter()

    def emit(self, figure: str, value, unit: str, **extra) -> None:
        row = {"figure": figure, "value": _round(value), "unit": unit}
        row.update({k: _round(v) for k, v in extra.items()})
        row["elapsed_s"] = round(time.perf_counter() - self.start, 1)
        row.update(self.common)
        self.rows.append(row)
        line = json.dumps(row)
        print(line, flush=True)
        if self.out:
            with open(self.out, "a") as f:
                f.write(line + "\n")

    def error(self, section: str, exc: BaseException) -> None:
        self.emit(f"{section}.error", repr(exc)[:500], "error")


def _round(value):
    return round(value, 4) if isinstance(value, float) else value


# --------------------------------------------------------------------------- sampler


def sampler_section(rec: Recorder, sizes: Sizes) -> None:
    """Both U-Nets: forward pass, each sampler scanned and looped."""
    # Per-launch floor of this machine: one tiny GEMM (+ tanh) after another, in a scan.
    rec.emit("profile.small_gemm_tanh_us", sampler.small_kernel_us(sizes.runs), "us")
    for name, samplers in ((sizes.lowdim, sizes.samplers), (sizes.image, sizes.image_samplers)):
        setup = sampler.build(name, 1)
        rec.emit(f"sampler.{name}.params", setup.num_params, "count")
        rec.emit(f"sampler.{name}.forward_ms", sampler.forward_ms(setup, sizes.runs), "ms")
        for method, steps in samplers:
            scan = sampler.time_scan(setup, method, steps, sizes.runs)
            label = f"sampler.{name}.{method}{steps}"
            rec.emit(
                f"{label}.scan_ms",
                scan["ms"],
                "ms",
                ms_per_step=scan["ms"] / steps,
                compile_s=scan["compile_s"],
                kernels_per_iteration=scan["kernels_per_iteration"],
                kernels_outside_loop=scan["kernels_outside_loop"],
            )
            if rec.hlo_dir and method == "ddim":  # the profile behind the kernel counts
                with open(os.path.join(rec.hlo_dir, f"{name}_{method}{steps}.hlo.txt"), "w") as f:
                    f.write(scan["hlo"])
            loop_ms = sampler.time_loop(setup, method, steps, sizes.runs)
            rec.emit(f"{label}.loop_ms", loop_ms, "ms", scan_speedup=loop_ms / scan["ms"])
        del setup
    # Best-of-M at batch 1: is 1 step with 4 candidates cheaper than 2 plain steps here?
    few = sampler.few_step(sizes.lowdim, 1, sizes.runs, samplers=sizes.best_of)
    plain_one = few.get("consistency1", {}).get("scan_ms")
    for label, figures in few.items():
        extra = {"vs_plain_1_step": figures["scan_ms"] / plain_one} if plain_one else {}
        rec.emit(
            f"sampler.{sizes.lowdim}.{label}.scan_ms",
            figures["scan_ms"],
            "ms",
            compile_s=figures["compile_s"],
            kernels_per_iteration=figures["kernels_per_iteration"],
            **extra,
        )


def sampler_switches(rec: Recorder, name: str, chains, runs: int, unrolls) -> None:
    """Each switch alone against the baseline (same process, same parameters), then the
    winners together, on each diffusion chain of `chains` (flow's loop body is the same
    model, so it is left out)."""
    setup = sampler.build(name, 1)
    V = sampler.Variant
    # Command buffers last: an XLA that aborts on them loses only what follows.
    candidates = [V(scan_unroll=u) for u in unrolls]
    candidates += [V(bf16=True)]
    candidates += [V(compiler="cmdbuf_while"), V(compiler="cmdbuf_while_unrolled")]
    bf16 = sampler.build(name, 1, V(bf16=True), params=setup.params)  # same parameters

    def setup_for(variant):
        return bf16 if variant.bf16 else setup

    def measure(variant, method, steps) -> float | None:
        label = f"switch.sampler.{name}.{method}{steps}.{variant.label()}"
        try:
            scan = sampler.time_scan(setup_for(variant), method, steps, runs, variant)
        except Exception as e:  # an option this XLA does not know: record, go on
            rec.error(label, e)
            return None
        rec.emit(
            label,
            scan["ms"],
            "ms",
            compile_s=scan["compile_s"],
            kernels_per_iteration=scan["kernels_per_iteration"],
            kernels_outside_loop=scan["kernels_outside_loop"],
        )
        return scan["ms"]

    for method, steps in chains:
        base = measure(V(), method, steps)
        winners = {}
        for variant in candidates:
            if variant.scan_unroll > steps:
                continue
            ms = measure(variant, method, steps)
            if ms is not None and base is not None and ms < 0.97 * base:
                for field in dataclasses.fields(variant):
                    value = getattr(variant, field.name)
                    if value != getattr(V(), field.name):
                        best = winners.get(field.name)
                        if best is None or ms < best[1]:
                            winners[field.name] = (value, ms)
        if len(winners) > 1:
            measure(V(**{k: v for k, (v, _) in winners.items()}), method, steps)


# --------------------------------------------------------------------------- train


def train_section(rec: Recorder, sizes: Sizes, switches: bool = False) -> None:
    """Samples/s of the real train step at each compute dtype; with `switches`, instead
    the bf16 U-Net body, remat and a larger batch."""
    names = {"float32": "fp32", "bfloat16": "bf16"}
    runs = [(names[d], d, sizes.train_batch, {}) for d in sizes.train_dtypes]
    prefix = "train"
    if switches:
        # bf16 compute with the float32 U-Net body measured fastest (H200, issue 17);
        # each switch against that, the unmeasured ones first.
        runs = [
            ("bf16_flat_optimizer", "bfloat16", sizes.train_batch, {"optimizer.flatten": True}),
            ("bf16_remat_dots", "bfloat16", sizes.train_batch, {"train.remat": "dots"}),
            ("bf16_big_batch", "bfloat16", sizes.big_train_batch, {}),
            ("bf16_body", "bfloat16", sizes.train_batch, {"model.float32_body": False}),
        ]
        prefix = "switch.train"
    best = None
    for label, dtype, batch, overrides in runs:
        try:
            result = train_throughput.measure(
                batch_size=batch,
                dtype=dtype,
                steps=sizes.train_steps,
                warmup=sizes.train_warmup,
                config_arg=sizes.train_config,
                overrides=overrides,
            )
        except Exception as e:
            rec.error(f"{prefix}.{label}", e)
            continue
        rec.emit(
            f"{prefix}.{label}.samples_per_s",
            result["samples_per_s"],
            "samples/s",
            step_ms=result["step_ms"],
            batch_size=batch,
            dtype=dtype,
            overrides=overrides,
            compile_s=result["compile_s"],
            params=result["num_params"],
        )
        if batch == sizes.train_batch and (best is None or result["samples_per_s"] > best[1]):
            best = (label, result["samples_per_s"])
    if best:
        rec.emit(f"{prefix}.best.samples_per_s", best[1], "samples/s", run=best[0])


# --------------------------------------------------------------------------- serve


def _norm_stats(state_dim: int, action_dim: int) -> dict:
    def feature(dim):
        low, high = [-1.0] * dim, [1.0] * dim
        return {"min": low, "max": high, "mean": [0.0] * dim, "std": high, "q01": low,
                "q99": high, "count": 1}  # fmt: skip

    return {"state": feature(state_dim), "actions": feature(action_dim)}


def write_checkpoint(workdir: str, config_arg: str | None, state_dim=20, action_dim=2) -> str:
    """A servable run directory: the low-dim diffusion U-Net config (DDIM-10) with random
    parameters, saved as the train loop saves it (orbax; config and norm stats beside)."""
    from action_gen import checkpoint, compat, models
    from action_gen import run as run_lib
    from action_gen.data import spec
    from configs import diffusion_unet_obstacle

    config = diffusion_unet_obstacle.get_config(config_arg)
    model = models.create_model(config.model)
    example = spec.example_observation(spec.observation_spec(config.data, state_dim))
    params = models.init_params(
        model, jax.random.key(0), example, (config.data.action_horizon, action_dim)
    )
    manager = run_lib.create_manager(workdir, async_save=False)
    checkpoint.save_checkpoint(
        manager,
        0,
        {"params": params, "ema_params": params},
        config=compat.config_to_json_dict(config),
        norm_stats=_norm_stats(state_dim, action_dim),
        data_state={},
    )
    manager.wait_until_finished()
    manager.close()
    return workdir


def serve_section(rec: Recorder, sizes: Sizes) -> None:
    """Client-measured latency and throughput of the server at each concurrency level."""
    with tempfile.TemporaryDirectory(prefix="gpu_suite_serve_") as workdir:
        write_checkpoint(workdir, sizes.train_config)
        result = serve.benchmark(
            workdir,
            clients=sizes.serve_clients,
            requests_per_client=sizes.serve_requests,
            max_batch=sizes.serve_max_batch,
        )
    rec.emit("serve.startup_s", result["server_startup_s"], "s", max_batch=result["max_batch"])
    for level in result["levels"]:
        c = level["clients"]
        extra = {k: v for k, v in level.items() if k not in ("clients", "e2e_p50_ms")}
        rec.emit(f"serve.clients{c}.e2e_p50_ms", level["e2e_p50_ms"], "ms", **extra)


# --------------------------------------------------------------------------- pi0


def pi0_section(rec: Recorder, sizes: Sizes) -> None:
    """π0's chunk figures (each printed as soon as measured), through the benchmark path
    and through the Policy."""
    v = sizes.pi0_variant
    units = {"params": "count"}

    def emit(key, value):
        unit = units.get(key, "s" if key.endswith("_s") else "ms")
        rec.emit(f"pi0.{v}.{key}", value, unit, dtype=sizes.pi0_dtype)

    built = pi0_latency.build(v, sizes.pi0_dtype, 1)
    pi0_latency.benchmark(
        v, sizes.pi0_dtype, 1, sizes.pi0_runs, built=built, uncached=False, on_figure=emit
    )
    for key, value in pi0_latency.policy_benchmark(built, sizes.pi0_runs).items():
        emit(key, value)
    # A distilled student's chunk: the prefix once, then 1 or 2 expert passes (the same
    # parameters; the program has the shape of a 1- or 2-step consistency / shortcut sample).
    for steps in sizes.pi0_distilled_steps:
        few = dataclasses.replace(built, num_steps=steps, policy=None, figures={})
        chunk = pi0_latency.benchmark(v, sizes.pi0_dtype, 1, sizes.pi0_runs, built=few,
                                      uncached=False)["chunk_ms"]  # fmt: skip
        rec.emit(f"pi0.{v}.steps{steps}.chunk_ms", chunk, "ms", dtype=sizes.pi0_dtype)


# --------------------------------------------------------------------------- switches


def switches_sampler_lowdim(rec: Recorder, sizes: Sizes) -> None:
    chains = [(m, s) for m, s in sizes.samplers if m in ("ddim", "ddpm")]
    sampler_switches(rec, sizes.lowdim, chains, sizes.runs, sizes.unrolls)


def switches_sampler_image(rec: Recorder, sizes: Sizes) -> None:
    chains = [(m, s) for m, s in sizes.image_samplers if m == "ddim"]
    sampler_switches(rec, sizes.image, chains, sizes.runs, sizes.unrolls[-1:])


def switches_train(rec: Recorder, sizes: Sizes) -> None:
    train_section(rec, sizes, switches=True)


def switches_pi0(rec: Recorder, sizes: Sizes) -> None:
    """π0 with its float32 parameters cast to bf16 once (each step then reads half the
    weight bytes); the baseline is the pi0 section's figures."""
    from action_gen.train.step import cast_floats

    v = sizes.pi0_variant
    built = pi0_latency.build(v, sizes.pi0_dtype, 1)
    built.params = jax.block_until_ready(cast_floats(built.params, jax.numpy.bfloat16))
    cast = pi0_latency.benchmark(v, sizes.pi0_dtype, 1, sizes.pi0_runs, built=built, uncached=False)
    for key in ("chunk_ms", "prefix_ms", "step_ms"):
        rec.emit(f"switch.pi0.{v}.bf16_params.{key}", cast[key], "ms")
    # The attention implementations (model.attention; "einsum" is the pi0 section's figure):
    # JAX's own lowering everywhere, cuDNN's fused kernel on NVIDIA GPUs.
    implementations = ["xla"] + ["cudnn"] * (jax.default_backend() == "gpu")
    for attention in implementations:
        variant = dataclasses.replace(built, attention=attention, policy=None, figures={})
        try:
            got = pi0_latency.benchmark(v, sizes.pi0_dtype, 1, sizes.pi0_runs, built=variant,
                                        uncached=False)  # fmt: skip
        except Exception as e:  # one implementation the card refuses must not cost the rest
            rec.error(f"pi0.attention={attention}", e)
            continue
        for key in ("chunk_ms", "prefix_ms", "step_ms"):
            rec.emit(f"switch.pi0.{v}.attention={attention}.{key}", got[key], "ms")


def switches_fused_blocks(rec: Recorder, sizes: Sizes) -> None:
    """The low-dim U-Net with `model.fused_blocks` off and on (benchmarks/fused_blocks.py,
    same parameters): DDIM-10 chunk ms and the launches of one denoising step by kind."""
    result = fused_blocks.compare(sizes.lowdim, 1, sizes.runs)
    for variant in ("unfused", "fused"):
        row = result[variant]
        rec.emit(
            f"switch.sampler.{sizes.lowdim}.ddim10.fused_blocks={variant == 'fused'}",
            row["ddim10_ms"],
            "ms",
            compile_s=row["compile_s"],
            kernels_per_iteration=row["scan_kernels_per_iteration"],
            step_kernels=row["step"]["total"],
            step_ops=row["step"]["ops"],
            step_while=row["step"]["while"],
        )
    rec.emit(  # in micro-units: figures are rounded to 4 decimals
        f"switch.sampler.{sizes.lowdim}.ddim10.fused_blocks.max_abs_diff_1e6",
        1e6 * result["chunk_max_abs_diff"],
        "1e-6",
    )


SWITCHES = {  # most telling first: a run cut off by its timeout loses the last
    "sampler": switches_sampler_lowdim,
    "sampler_image": switches_sampler_image,
    "train": switches_train,
    "pi0": switches_pi0,
    "fused_blocks": switches_fused_blocks,
}


# --------------------------------------------------------------------------- summary


def summary(rec: Recorder) -> str:
    """The table printed last: every figure, and the issue's targets where one applies."""
    lines = [
        f"device: {rec.common['device']}  jax {rec.common['jax']}  command: "
        f"{rec.common['command']}",
        f"{'figure':<58} {'value':>12} {'unit':<10} target",
    ]
    for row in rec.rows:
        value = row["value"]
        shown = f"{value:12.4g}" if isinstance(value, int | float) else f"{str(value)[:60]:>12}"
        target = ""
        if row["figure"] in TARGETS:
            op, bound = TARGETS[row["figure"]]
            met = value <= bound if op == "<=" else value >= bound
            target = f"{op} {bound:g} ({'met' if met else 'MISSED'})"
        lines.append(f"{row['figure']:<58} {shown} {row['unit']:<10} {target}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CPU test)")
    parser.add_argument(
        "--switches", action="store_true", help="compare the speed switches instead"
    )
    parser.add_argument("--sections", default=None, help="comma list (default: all)")
    parser.add_argument("--out", default=None, help="also append the JSON lines here")
    parser.add_argument("--hlo_dir", default=None, help="write the DDIM scans' optimized HLO")
    args = parser.parse_args(argv)
    runners = SWITCHES if args.switches else {
        "sampler": sampler_section,
        "train": train_section,
        "serve": serve_section,
        "pi0": pi0_section,
    }  # fmt: skip
    sections = args.sections.split(",") if args.sections else list(runners)
    unknown = set(sections) - set(runners)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; known: {list(runners)}")
    sizes = QUICK if args.quick else Sizes()
    command = shlex.join(["python", "benchmarks/gpu_suite.py", *(argv or sys.argv[1:])])
    rec = Recorder(args.out, command, args.hlo_dir)
    for section in sections:
        tic = time.perf_counter()
        try:
            runners[section](rec, sizes)
        except Exception as e:  # one broken section must not cost the others' figures
            rec.error(section, e)
        kind = "switch." if args.switches else ""
        rec.emit(f"{kind}{section}.section_s", time.perf_counter() - tic, "s")
    rec.emit("suite.total_s", time.perf_counter() - rec.start, "s")
    print(summary(rec), flush=True)


if __name__ == "__main__":
    cli.quiet_logs()
    cli.run_command(main)

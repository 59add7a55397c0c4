"""π0 chunk latency through the served path: 3 cameras, 48 text tokens, H=50, 10 Euler steps.

  python benchmarks/pi0_latency.py --variant pi0 --dtype bfloat16      # one GPU, < 3 min
  python benchmarks/pi0_latency.py --attention=cudnn --num_steps=1     # cuDNN attention; the
                                                                       # 1-step distilled chunk
  .venv/bin/python benchmarks/pi0_latency.py --quick                   # CPU smoke (tiny)

Every figure is taken on `sample.policy.Policy`'s own path: the Policy casts the float32
parameters to the compute dtype once (`--dtype`; `cast_s`), uses the prefix KV cache
(`models.make_apply_fn`) and compiles ahead of time for the batch size (`compile_s`).
Reported, as medians over --runs after a warm-up call:
  chunk_ms           the Policy's compiled program on a model-ready observation
                     (normalize → prefix once → 10 expert-only steps → unnormalize);
  policy_chunk_ms    `Policy.sample_actions` on the raw observation (host tokenization,
                     transfers and numpy out included);
  prefix_ms          `prepare` alone with the served parameters (one ViT pass over the 3
                     cameras + backbone);
  step_ms            one `apply_with_context` (the expert over state + 50 action tokens);
  uncached_chunk_ms  the same chunk re-running the prefix every step (what caching saves);
and once each: init_s (parameters, compilation included; `init_compile_s` of it), cast_s,
compile_s. `--attention` picks `model.attention` (layers.ATTENTION_IMPLEMENTATIONS: einsum,
xla, cudnn); `--num_steps` the Euler steps per chunk (1 or 2: the cost of a distilled
student's chunk, the prefix once and one or two expert passes). Parameters are random
(nothing is downloaded; latency does not depend on their values) and cheap to make:
`jax.eval_shape` of the model's init gives the shapes (tracing, no compilation), one small
jitted program draws every leaf (no forward pass is compiled for init). Needs no
TensorFlow. Prints one JSON object. `build`, `benchmark` and
`policy_benchmark` are also the π0 section of benchmarks/gpu_suite.py.
"""

import dataclasses
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from timing import device_report, median_ms  # benchmarks/timing.py

from action_gen import cli, models
from action_gen.data import schema, tokenizer
from action_gen.models import pi0
from action_gen.objectives import flow

CAMERAS = ("base", "left_wrist", "right_wrist")
TEXT_TOKENS, H, A, STATE_DIM, NUM_STEPS = 48, 50, 32, 32, 10
PROMPT = "pick up the red cup and put it in the sink"


def observation(size: int, batch: int) -> dict:
    """A model-ready observation: state [B, 1, 32], 3 uint8 images, 48 prompt tokens."""
    rng = np.random.default_rng(0)
    obs = {schema.OBS_STATE: rng.normal(size=(batch, 1, STATE_DIM)).astype(np.float32)}
    for cam in CAMERAS:
        obs[schema.image_key(cam)] = rng.integers(0, 255, (batch, 1, size, size, 3), np.uint8)
    tokens, mask = tokenizer.tokenize([(PROMPT + " ") * 4] * batch, TEXT_TOKENS)
    obs[schema.PROMPT_TOKENS], obs[schema.PROMPT_MASK] = tokens, mask
    obs[schema.OBS_PAD_MASK] = np.ones((batch, 1), bool)
    return obs


def random_params(abstract, key: jax.Array):
    """Parameters of the shapes in `abstract` (float32, like a checkpoint's master weights):
    kernels ~ N(0, 1 / fan_in) (fan_in: the second-to-last axis), vectors 0. One jitted
    program of random draws; values are irrelevant to latency but kept in a sane range."""
    leaves, treedef = jax.tree.flatten(abstract)

    def draw(key):
        out = []
        for i, leaf in enumerate(leaves):
            if len(leaf.shape) < 2:
                out.append(jnp.zeros(leaf.shape, leaf.dtype))
                continue
            scale = 1.0 / np.sqrt(leaf.shape[-2])
            noise = jax.random.normal(jax.random.fold_in(key, i), leaf.shape, leaf.dtype)
            out.append(noise * scale)
        return jax.tree.unflatten(treedef, out)

    return jax.jit(draw)(key)


@dataclasses.dataclass
class Built:
    """A π0 of one size with random float32 parameters, and its benchmark observation."""

    variant: str
    dtype: str
    model: pi0.Pi0
    params: dict
    obs: dict
    init_s: float  # shapes + compile + draw
    init_compile_s: float
    attention: str = "einsum"  # model.attention
    num_steps: int = NUM_STEPS
    policy: object = None  # the Policy built from `params` by `benchmark` (reused)
    figures: dict = dataclasses.field(default_factory=dict)


def build(
    variant: str, dtype: str, batch: int, attention: str = "einsum", num_steps: int = NUM_STEPS
) -> Built:
    """π0 `variant` with random parameters, timed: shapes from `jax.eval_shape` of the init
    (no compilation), then one jitted draw (`init_compile_s`: its compilation)."""
    model = pi0.Pi0(variant=variant, action_dim=A, dtype=dtype, attention=attention)
    obs = observation(pi0.SIZES[variant].image_size, batch)
    tic = time.perf_counter()
    abstract = models.abstract_params(model, obs, (H, A))
    compile_tic = time.perf_counter()
    params = jax.block_until_ready(random_params(abstract, jax.random.key(0)))
    init_s = time.perf_counter() - tic
    # The draw's compile dominates its wall time on every backend (a few ms of RNG).
    compile_s = time.perf_counter() - compile_tic
    return Built(variant, dtype, model, params, obs, init_s, compile_s, attention, num_steps)


def policy_config(variant: str, dtype: str, attention: str = "einsum", num_steps: int = NUM_STEPS):
    """A flow-π0 run config whose model and observation are `build`'s: 3 cameras at the
    variant's image size, one state step of 32 dims, 48 prompt tokens, H = 50."""
    from configs import flow_pi0_obstacle

    config = flow_pi0_obstacle.get_config("smoke")
    size = pi0.SIZES[variant].image_size
    config.model.variant, config.model.dtype = variant, dtype
    config.model.vocab_size = None  # the variant's own table, as `build`
    config.model.attention = attention
    config.data.obs_horizon = 1
    config.data.action_horizon = H
    config.data.cameras = {cam: [size, size] for cam in CAMERAS}
    config.data.prompt_max_len = TEXT_TOKENS
    config.objective.num_sample_steps = num_steps
    return config


def _unit_stats(dim: int) -> dict:
    ones = [1.0] * dim
    return {"min": [-1.0] * dim, "max": ones, "mean": [0.0] * dim, "std": ones,
            "q01": [-1.0] * dim, "q99": ones, "count": 1}  # fmt: skip


def benchmark(
    variant: str, dtype: str, batch: int, runs: int, *, built: Built | None = None,
    uncached: bool = True, on_figure=None,
) -> dict:  # fmt: skip
    """The Policy's chunk / prefix / step (/ uncached chunk) latency and its init, cast and
    compile seconds; `on_figure(name, value)`, if given, hears each figure when measured."""
    from action_gen.sample.policy import Policy

    built = built or build(variant, dtype, batch)
    result = {}

    def put(key, value):
        result[key] = value
        built.figures[key] = value
        if on_figure is not None:
            on_figure(key, value)

    put("params", int(sum(x.size for x in jax.tree.leaves(built.params))))
    put("init_s", round(built.init_s, 2))
    put("init_compile_s", round(built.init_compile_s, 2))
    tic = time.perf_counter()
    policy = Policy(
        policy_config(built.variant, built.dtype, built.attention, built.num_steps),
        built.params,
        {"state": _unit_stats(STATE_DIM), "actions": _unit_stats(A)},
        param_dtype=built.dtype,  # the compute dtype: cast once, here
    )
    jax.block_until_ready(policy.params)
    put("cast_s", round(time.perf_counter() - tic, 2))
    built.policy = policy
    tic = time.perf_counter()
    policy.compile((batch,), guided=False)
    put("compile_s", round(time.perf_counter() - tic, 2))
    obs = policy.prepare_observation(_raw(built.obs))
    put("chunk_ms", round(median_ms(lambda i: policy.sample_prepared(obs, i), runs), 3))

    apply_fn = models.make_apply_fn(policy.model)
    prepare, step = jax.jit(apply_fn.prepare), jax.jit(apply_fn.apply)
    model_obs = {k: v for k, v in obs.items() if k != schema.OBS_PAD_MASK}
    context = prepare(policy.params, model_obs)
    x = jnp.zeros((batch, H, A), jnp.float32)
    t = jnp.full((batch,), 50.0)
    put("prefix_ms", round(median_ms(lambda i: prepare(policy.params, model_obs), runs), 3))
    put("step_ms", round(median_ms(lambda i: step(policy.params, context, x + i, t), runs), 3))
    if uncached:
        sample = jax.jit(
            functools.partial(
                flow.sample,
                models.make_uncached_apply_fn(policy.model),
                num_steps=built.num_steps,
                action_shape=(H, A),
            )
        )
        put(
            "uncached_chunk_ms",
            round(
                median_ms(lambda i: sample(policy.params, model_obs, jax.random.key(i)), runs), 3
            ),
        )
    return result


def _raw(obs: dict) -> dict:
    """The client's view of `observation`: raw arrays and the prompt string."""
    raw = {k: v for k, v in obs.items() if k.startswith("observation/")}
    raw[schema.PROMPT] = np.array([PROMPT] * obs[schema.OBS_STATE].shape[0])
    return raw


def policy_benchmark(built: Built, runs: int, batch: int = 1) -> dict:
    """The chunk through `Policy.sample_actions` (raw observation in, numpy chunk out):
    policy_compile_s (the ahead-of-time compile of `benchmark`, or here if it did not run)
    and policy_chunk_ms."""
    if built.policy is None:
        benchmark(built.variant, built.dtype, batch, runs, built=built, uncached=False)
    raw = _raw(built.obs)
    return {
        "policy_compile_s": built.figures["compile_s"],
        "policy_chunk_ms": round(median_ms(lambda i: built.policy.sample_actions(raw, i), runs), 3),
    }


def main():
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="pi0", choices=sorted(pi0.SIZES))
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument(
        "--attention", default="einsum", choices=("einsum", "xla", "cudnn"),
        help="model.attention (cudnn: NVIDIA GPUs, bfloat16)",
    )  # fmt: skip
    parser.add_argument("--num_steps", type=int, default=NUM_STEPS, help="Euler steps.")
    parser.add_argument("--quick", action="store_true", help="CPU smoke: tiny, float32, 2 runs")
    args = parser.parse_args()
    if args.quick:
        args.variant, args.dtype, args.runs = "tiny", "float32", 2
    start = time.perf_counter()
    report = {
        **device_report(),
        "variant": args.variant,
        "dtype": args.dtype,
        "attention": args.attention,
        "batch": args.batch,
        "shapes": {
            "cameras": len(CAMERAS),
            "text_tokens": TEXT_TOKENS,
            "H": H,
            "A": A,
            "steps": args.num_steps,
        },  # fmt: skip
    }
    if args.num_steps < 1:
        parser.error("--num_steps must be >= 1")
    built = build(args.variant, args.dtype, args.batch, args.attention, args.num_steps)
    report.update(benchmark(args.variant, args.dtype, args.batch, args.runs, built=built))
    report.update(policy_benchmark(built, args.runs, args.batch))
    report["total_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    cli.quiet_logs()
    cli.run_command(main)

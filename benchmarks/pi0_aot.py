"""π0 at real size on CPU, without allocating it: ahead-of-time compile times and the bytes of
params + optimizer state per device under FSDP.

  python benchmarks/pi0_aot.py [--devices=8] [--batch_size=32] [--remat=full]

Everything starts from abstract shapes (`jax.eval_shape`): the training program of
`configs/flow_pi0_openpi.py:pi0` (π0: Gemma 2B + 300M expert + So400m/14, 3 cameras at 224²,
H = 50, prompt 48 tokens, bf16 activations, float32 master weights, AdamW) on a mesh of
`--devices` fake CPU devices (`--xla_force_host_platform_device_count`, all on fsdp), is
lowered and compiled from ShapeDtypeStructs carrying the state's shardings; no parameter is
ever materialised. Printed as one JSON line:

  init_compile_s      the sharded init (`jax.jit(init, out_shardings=...)`)
  train_lower_s, train_compile_s      one training step (forward + backward + AdamW + EMA),
                      batch B: tracing + lowering, then XLA compilation
  sampler_lower_s, sampler_compile_s  the 10-step Euler sampler with the prefix cache,
                      batch 1, bf16 params
  (each also as *_cpu_s, process CPU seconds: wall times on a loaded machine overstate)
  bytes_per_device    params, ema_params, opt_state and their total on one device
  params              the parameter count

The layers are scanned (`nn.scan`), so the compile times are those of one layer of each
stack (backbone, expert, ViT) plus the rest, whatever the depth.
"""

import json
import os
import sys
import time

from action_gen import cli


def main(argv=None) -> dict:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--remat", default="full", help="model.remat of the scanned layers")
    parser.add_argument("--variant", default="pi0", help="models/pi0.py SIZES key")
    parser.add_argument("--skip_train", action="store_true", help="only init and sampler")
    args = parser.parse_args(argv)
    flag = f"--xla_force_host_platform_device_count={args.devices}"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from action_gen import models  # noqa: PLC0415
    from action_gen.data import schema, spec  # noqa: PLC0415
    from action_gen.train import sharding  # noqa: PLC0415
    from action_gen.train.program import build_train_program  # noqa: PLC0415
    from configs import flow_pi0_openpi  # noqa: PLC0415

    if len(jax.devices()) < args.devices:
        raise SystemExit(f"{len(jax.devices())} devices; XLA_FLAGS was set too late")
    config = flow_pi0_openpi.get_config(f"pi0,variant={args.variant}")
    config.model.dtype = "bfloat16"
    config.model.remat = args.remat
    config.data.batch_size = args.batch_size
    config.mesh.data, config.mesh.fsdp = 1, args.devices
    state_dim, horizon, action_dim = 8, config.data.action_horizon, config.model.action_dim
    mesh = sharding.create_mesh(config.mesh, jax.devices()[: args.devices])
    example = spec.example_observation(spec.observation_spec(config.data, state_dim))
    out = {
        "variant": args.variant,
        "devices": args.devices,
        "batch_size": args.batch_size,
        "remat": args.remat,
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
    }

    def timed(name, fn):
        """fn() timed: `<name>_s` wall seconds and `<name>_cpu_s` process CPU seconds (all
        threads; on a shared machine the wall time also counts other processes' load)."""
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        out[f"{name}_s"] = round(time.perf_counter() - wall, 2)
        out[f"{name}_cpu_s"] = round(time.process_time() - cpu, 2)
        return result

    program = timed(
        "build", lambda: build_train_program(config, mesh, example, (horizon, action_dim))
    )
    state, shardings = program.abstract_state, program.state_shardings
    out["params"] = int(sum(x.size for x in jax.tree.leaves(state.params)))

    def per_device(tree, tree_shardings) -> int:
        leaves = zip(jax.tree.leaves(tree), jax.tree.leaves(tree_shardings), strict=True)
        return int(sum(np.prod(s.shard_shape(x.shape)) * x.dtype.itemsize for x, s in leaves))

    parts = {k: per_device(getattr(state, k), getattr(shardings, k))
             for k in ("params", "ema_params", "opt_state")}  # fmt: skip
    parts["total"] = sum(parts.values())
    out["bytes_per_device"] = parts
    out["gib_per_device"] = {k: round(v / 2**30, 3) for k, v in parts.items()}

    timed("init_compile", lambda: program.init_fn.lower(jax.random.key(0)).compile())

    if not args.skip_train:
        abstract = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
        )
        batch = spec.example_observation(
            spec.observation_spec(config.data, state_dim), args.batch_size
        )
        batch[schema.ACTIONS] = np.zeros((args.batch_size, horizon, action_dim), np.float32)
        batch[schema.ACTION_PAD_MASK] = np.ones((args.batch_size, horizon), bool)
        batch[schema.ACTION_DIM_MASK] = np.ones((args.batch_size, action_dim), bool)
        batch = {
            k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=program.batch_sharding)
            for k, v in batch.items()
        }
        lowered = timed(
            "train_lower", lambda: program.step_fn.lower(abstract, batch, jax.random.key(0))
        )
        compiled = timed("train_compile", lowered.compile)
        memory = compiled.memory_analysis()
        if memory is not None:
            out["train_temp_bytes_per_device"] = int(memory.temp_size_in_bytes)

    # The sampler as the Policy serves it: bf16 parameters on one device, batch 1.
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    params = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, jnp.bfloat16, sharding=device), state.ema_params
    )
    obs = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=device)
        for k, v in spec.example_observation(spec.observation_spec(config.data, state_dim)).items()
    }
    apply_fn = models.make_apply_fn(program.model)
    steps = int(config.objective.num_sample_steps)
    sample = jax.jit(lambda p, o, k: program.objective.sample(apply_fn, p, o, k, steps))
    lowered = timed("sampler_lower", lambda: sample.lower(params, obs, jax.random.key(0)))
    timed("sampler_compile", lowered.compile)
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    cli.quiet_logs()
    cli.run_command(main)

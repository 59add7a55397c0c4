"""Training under a fine-tuning layout (LoRA adapters, frozen leaves): the layout's sharding
names and what it costs, in parameters and optimizer-state bytes.

The layout itself — train parameters, adapters, merge, trainable mask — is
`action_gen/models/lora.py` (a served policy merges adapters at restore and must not load
the trainer); the optimizer masking is `optimizer.create_optimizer(trainable=...)`, the
gradient/EMA split `step.train_step(trainable=...)`, and `program.build_train_program`
wires them from `config.lora` and `config.optimizer.{trainable, frozen_dtype}`.

Memory figures without allocating (`footprint` on `jax.eval_shape` of the state):

  python -m action_gen.train.lora --config=configs/flow_pi0_obstacle.py:pi0 \\
      --config=configs/flow_pi0_obstacle.py:pi0,lora --config=...:pi0,frozen_backbone \\
      [--cameras=base_0_rgb,left_wrist_0_rgb,right_wrist_0_rgb --image_size=224]

prints one JSON line per config: parameters, trainable parameters, bytes of parameters, of
the EMA and of the optimizer state (Adam's mu and nu for the trainable leaves).
"""

import importlib.util
import json
import os
from typing import Any

import jax
import numpy as np
from flax import traverse_util
from jax.sharding import PartitionSpec

from action_gen import cli, compat
from action_gen import run as run_lib
from action_gen.models import lora


def train_logical_axes(model_axes: Any, abstract_train_params: Any, layout) -> Any:
    """The logical axis names (a PartitionSpec tree) of `layout`'s train parameters, for
    `sharding.state_sharding`: the base leaves keep the model's names; an adapter takes its
    kernel's names on the axes it shares with it (A [..., I, r]: the kernel's leading and
    input names, None for r; B [..., r, O]: leading names, None, the output name), so FSDP
    splits it like its kernel where it is large enough to be split at all."""
    if not layout.uses_lora:
        return model_axes
    names = traverse_util.flatten_dict(model_axes)  # PartitionSpecs are leaves (not dicts)
    adapters = traverse_util.flatten_dict(abstract_train_params[lora.LORA])
    out = {}
    for path, leaf in adapters.items():
        kernel = tuple(names.get(path[:-1], (None,) * leaf.ndim))
        if len(kernel) != leaf.ndim:
            kernel = (None,) * leaf.ndim
        if path[-1] == lora.LORA_A:
            out[path] = PartitionSpec(*kernel[:-1], None)
        else:
            out[path] = PartitionSpec(*kernel[:-2], None, kernel[-1])
    return {lora.BASE: model_axes, lora.LORA: traverse_util.unflatten_dict(out)}


def restore_pretrained_params(path: str, config, abstract_model_params: Any) -> Any:
    """The model parameters of the checkpoint at `path` (a run's workdir or its
    checkpoints/ dir; latest step), to start a fine-tuning run from (`train.init_from`).

    The checkpoint may have been trained under any layout (its stored config says which):
    its EMA parameters come out merged (`run.Run.restore_model_params`), base leaves
    straight into the shardings of `abstract_model_params`. Its `model` config must equal
    `config.model` (`compat.check_init_from`); everything else (data, optimizer, LoRA)
    may differ.
    """
    source = run_lib.Run.open(path, role="train.init_from")
    stored_config, _ = source.metadata()
    compat.check_init_from(stored_config, compat.config_to_json_dict(config), path)
    params = source.restore_model_params(abstract_model_params, use_ema=True)
    # Merged kernels are float32 like the model's own initialisation; place each leaf as
    # this run's model parameters are placed.
    return jax.tree.map(
        lambda x, a: jax.device_put(x.astype(a.dtype), a.sharding), params, abstract_model_params
    )


def _count(tree) -> int:
    return int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree.leaves(tree)))


def _bytes(tree) -> int:
    return int(
        sum(np.prod(x.shape, dtype=np.int64) * x.dtype.itemsize for x in jax.tree.leaves(tree))
    )


def footprint(abstract_state, trainable: Any = None) -> dict:
    """Sizes of a TrainState (abstract or concrete; nothing is allocated).

    Returns:
      {"params", "trainable_params": counts; "param_bytes", "ema_bytes",
      "optimizer_state_bytes": bytes of `params`, `ema_params`, `opt_state`}.
    """
    params = abstract_state.params
    trained = params if trainable is None else lora.trainable_subset(params, trainable)
    return {
        "params": _count(params),
        "trainable_params": _count(trained),
        "param_bytes": _bytes(params),
        "ema_bytes": _bytes(abstract_state.ema_params),
        "optimizer_state_bytes": _bytes(abstract_state.opt_state),
    }


def config_footprint(config, state_dim: int = 32) -> dict:
    """`footprint` of `config`'s train state, from abstract shapes only (`jax.eval_shape`):
    the π0-size figures without a GPU. `state_dim`: the robot state's (π0 pads it to 32)."""
    from action_gen.data import spec
    from action_gen.models import abstract_params, create_model
    from action_gen.train import optimizer, state

    layout = lora.FinetuneLayout.from_config(config)
    model = create_model(config.model)
    example_obs = spec.example_observation(spec.observation_spec(config.data, state_dim))
    action_dim = spec.model_action_dim(config.model, state_dim)
    action_shape = (int(config.data.action_horizon), action_dim)
    key = jax.random.key(0)
    abstract_model = abstract_params(model, example_obs, action_shape)
    abstract_train = jax.eval_shape(
        lambda p: lora.init_train_params(p, layout, key), abstract_model
    )
    mask = None if layout.is_identity else lora.trainable_mask(abstract_train, layout)
    tx, _ = optimizer.create_optimizer(config.optimizer, config.train.num_steps, mask)
    abstract_state = jax.eval_shape(lambda p: state.create_train_state(p, tx, mask), abstract_train)
    return footprint(abstract_state, mask)


def load_config(spec: str):
    """'configs/x.py:arg' -> that file's get_config(arg) (the repository root on sys.path)."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_footprint_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def main(argv: list[str] | None = None) -> None:
    parser = cli.ArgumentParser(
        prog="python -m action_gen.train.lora", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--config", action="append", required=True, help="configs/x.py:arg (repeatable)"
    )
    parser.add_argument("--cameras", default="", help="camera slots, e.g. base_0_rgb,...")
    parser.add_argument("--image_size", type=int, default=224, help="square camera size")
    args = parser.parse_args(argv)
    cameras = [c for c in args.cameras.split(",") if c]
    size = args.image_size
    for spec in args.config:
        if not os.path.isfile(spec.partition(":")[0]):
            raise cli.UserError(f"--config: config file not found: {spec.partition(':')[0]}")
        config = load_config(spec)
        if cameras:  # e.g. openpi's three 224² cameras (the obstacle task has none)
            config.data.cameras = {c: [size, size] for c in cameras}
        figures = config_footprint(config)
        print(json.dumps({"config": spec, "cameras": cameras, **figures}), flush=True)


def entry_point() -> None:
    cli.quiet_logs()
    cli.run_command(main)


if __name__ == "__main__":
    entry_point()

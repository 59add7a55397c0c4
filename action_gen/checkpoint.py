"""Self-describing orbax checkpoints: train state + config JSON + normalization stats.

Layout of `<workdir>/checkpoints/<step>/`:
  state/       TrainState (step, params, ema_params, opt_state)   PyTree item
  config/      the run's full config as JSON                        JSON item
  norm_stats/  the dataset's normalization statistics               JSON item
  data/        the input stream's position (batches consumed, seed) JSON item

A served policy needs nothing else: it reads `config`, rebuilds the model, and restores
only `state.ema_params` (partial restore), never the optimizer state.
"""

import json
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

STATE, CONFIG, NORM_STATS, DATA = "state", "config", "norm_stats", "data"
ITEM_NAMES = (STATE, CONFIG, NORM_STATS, DATA)


def config_to_json_dict(config: ml_collections.ConfigDict) -> dict:
    """Plain JSON dict of a config (FieldReferences resolved)."""
    return json.loads(config.to_json_best_effort())


def config_differences(
    stored: dict, current: dict, relevant: Callable[[str], bool]
) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (stored value, current value)}, sorted by key, for the keys
    (`"model.channels"`) where `relevant(key)` holds and two config JSON dicts (a
    checkpoint's and a run's) differ; a key missing on one side has the value None there.

    Values are compared in JSON form: a stored config has lists where a live one has tuples.
    """
    old, new = _flatten_config(stored), _flatten_config(current)
    keys = sorted(k for k in old.keys() | new.keys() if relevant(k))
    return {
        k: (old.get(k), new.get(k))
        for k in keys
        if json.dumps(old.get(k)) != json.dumps(new.get(k))
    }


def _flatten_config(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def create_checkpoint_manager(
    directory: str,
    *,
    max_to_keep: int | None = 3,
    save_interval_steps: int = 1,
    async_save: bool = True,
    read_only: bool = False,
) -> ocp.CheckpointManager:
    """An orbax CheckpointManager over `directory` with our four items."""
    directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        save_interval_steps=save_interval_steps,
        enable_async_checkpointing=async_save,
        read_only=read_only,
        create=not read_only,
    )
    return ocp.CheckpointManager(directory, options=options, item_names=ITEM_NAMES)


def save_checkpoint(
    manager: ocp.CheckpointManager,
    step: int,
    state: Any,
    *,
    config: dict,
    norm_stats: dict,
    data_state: dict,
    force: bool = False,
) -> bool:
    """Saves all items at `step` (asynchronously when the manager is async)."""
    return manager.save(
        step,
        args=ocp.args.Composite(
            **{
                STATE: ocp.args.PyTreeSave(state),
                CONFIG: ocp.args.JsonSave(config),
                NORM_STATS: ocp.args.JsonSave(norm_stats),
                DATA: ocp.args.JsonSave(data_state),
            }
        ),
        force=force,
    )


def _resolve_step(manager: ocp.CheckpointManager, step: int | None) -> int:
    """`step`, or the latest saved step; a clear error when there is none."""
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint found in {manager.directory}")
    return step


def _restore_args_like(abstract_tree):
    """Restore each leaf as a jax array with the sharding/dtype of the abstract leaf."""

    def one(leaf):
        sharding = getattr(leaf, "sharding", None)
        return ocp.ArrayRestoreArgs(sharding=sharding, global_shape=leaf.shape, dtype=leaf.dtype)

    return jax.tree.map(one, abstract_tree)


def restore_checkpoint(
    manager: ocp.CheckpointManager, abstract_state: Any, step: int | None = None
) -> tuple[Any, dict, dict, dict]:
    """Restores (state, config, norm_stats, data_state) at `step` (default: latest).

    Args:
      abstract_state: pytree of `jax.ShapeDtypeStruct` (with shardings) of the state.
    """
    step = _resolve_step(manager, step)
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            **{
                STATE: ocp.args.PyTreeRestore(
                    item=abstract_state, restore_args=_restore_args_like(abstract_state)
                ),
                CONFIG: ocp.args.JsonRestore(),
                NORM_STATS: ocp.args.JsonRestore(),
                DATA: ocp.args.JsonRestore(),
            }
        ),
    )
    return restored[STATE], restored[CONFIG], restored[NORM_STATS], restored[DATA]


def restore_metadata(manager: ocp.CheckpointManager, step: int | None = None) -> tuple[dict, dict]:
    """Restores only (config, norm_stats): enough to rebuild the model and data transform."""
    step = _resolve_step(manager, step)
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            **{CONFIG: ocp.args.JsonRestore(), NORM_STATS: ocp.args.JsonRestore()}
        ),
    )
    return restored[CONFIG], restored[NORM_STATS]


def restore_params(
    manager: ocp.CheckpointManager,
    abstract_params: Any,
    *,
    use_ema: bool = True,
    step: int | None = None,
) -> Any:
    """Restores only `state.ema_params` (or `state.params`): no optimizer state is read."""
    step = _resolve_step(manager, step)
    key = "ema_params" if use_ema else "params"
    item = {key: abstract_params}
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            **{
                STATE: ocp.args.PyTreeRestore(
                    item=item, restore_args=_restore_args_like(item), partial_restore=True
                )
            }
        ),
    )
    return restored[STATE][key]

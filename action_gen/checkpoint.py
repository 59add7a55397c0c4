"""Self-describing orbax checkpoints: train state + config JSON + normalization stats (the
orbax I/O only: which config fields a checkpoint fixes is action_gen/compat.py's, where a
run's checkpoints live and how parameters are restored is action_gen/run.py's).

Layout of `<workdir>/checkpoints/<step>/`:
  state/       TrainState (step, params, ema_params, opt_state)   PyTree item
  config/      the run's full config as JSON                        JSON item
  norm_stats/  the dataset's normalization statistics               JSON item
  data/        the input stream's position (batches consumed, seed) JSON item

A served policy needs nothing else: it reads `config`, rebuilds the model, and restores
only `state.ema_params` (partial restore), never the optimizer state.
"""

import itertools
import json
import logging
import os
import re
import shutil
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

STATE, CONFIG, NORM_STATS, DATA = "state", "config", "norm_stats", "data"
ITEM_NAMES = (STATE, CONFIG, NORM_STATS, DATA)


# Orbax's keep-last-K deletion renames a step into this folder (one atomic rename) instead
# of deleting its files in place; `_CheckpointManager` empties it. A step that fails
# `_unreadable_reason` at manager start is renamed into DAMAGED_DIR, kept for inspection.
# Neither name parses as a step, so orbax lists neither.
TODELETE_DIR, DAMAGED_DIR = "todelete", "damaged"

_scans = itertools.count()  # unique barrier names, the same sequence on every process

# Orbax writes a replicated array in parallel: each of its R replicas saves a 1/R slice,
# one device-side `slice` per replica, each a separately compiled program per shape. For
# the many small arrays of a train state (biases, norms: kilobytes) that is R dispatches and
# R compilations per shape against one plain write (the test suite's 8-device CPU mesh paid
# 144 compilations, 5 s, on a tiny U-Net's first save). Slices below this size are written
# whole by one replica; large replicated arrays keep the parallel write. Restores are the
# same either way (the on-disk format does not depend on who wrote which part).
MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL = 1 << 20


def _state_handler() -> ocp.PyTreeCheckpointHandler:
    """The train state's handler: orbax's default type handlers, with jax.Array written
    replica-parallel only for slices of at least MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL."""
    registry = ocp.type_handlers.create_type_handler_registry(
        *[(t, ocp.type_handlers.get_type_handler(t)) for t in ocp.type_handlers.supported_types()]
    )
    array_handler = ocp.type_handlers.ArrayHandler(
        min_slice_bytes_for_replica_parallel=MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL
    )
    registry.add(jax.Array, array_handler, override=True)
    return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


class _CheckpointManager(ocp.CheckpointManager):
    """Empties TODELETE_DIR whenever no save is in flight.

    `wait_until_finished` is where that holds: orbax calls it at the start of every `save`
    (after the previous save's keep-last-K rename into TODELETE_DIR), the loop calls it
    when it stops, and `close` calls it. Steps there are already out of orbax's view, so a
    kill during this `rmtree` leaves nothing that looks like a checkpoint.
    """

    _todelete: str | None = None  # set for a writable manager on the first process

    def wait_until_finished(self):
        super().wait_until_finished()
        if self._todelete is not None:
            _empty_dir(self._todelete)


def _empty_dir(path: str) -> None:
    if os.path.isdir(path):
        for name in os.listdir(path):
            shutil.rmtree(os.path.join(path, name), ignore_errors=True)


def create_checkpoint_manager(
    directory: str,
    *,
    max_to_keep: int | None = 3,
    save_interval_steps: int = 1,
    async_save: bool = True,
    read_only: bool = False,
) -> ocp.CheckpointManager:
    """An orbax CheckpointManager over `directory` with our four items, in which every step
    directory is a complete checkpoint, even after a SIGKILL at any point.

    Orbax finalises a save atomically (items are written under `<step>.orbax-checkpoint-
    tmp-*`, which is renamed to `<step>` last), but its keep-last-K deletion `rmtree`s the
    oldest step in place: a kill midway left `<step>/` with files missing (a `state/` with
    no `_sharding`, which restores as "Sharding of jax.Array cannot be None"). With
    `todelete_subdir` that deletion is one rename out of view (`_CheckpointManager` then
    deletes the files), and `cleanup_tmp_directories` removes the unfinished writes of a
    killed run. (`todelete_subdir` is ignored on gs://, where orbax deletes in place.)

    Defence for what that cannot prevent (a step damaged by an older version or by hand):
    before orbax lists the steps, each step that is not readable (`_unreadable_reason`) is
    moved to `DAMAGED_DIR` with a warning, so `latest_step()`, resume and restore fall back
    to the newest readable step. With several processes only the first one checks, and only
    for a writable manager (which every process creates together).
    """
    directory = os.path.abspath(directory)
    if jax.process_count() == 1:
        _move_damaged_steps_aside(directory)
    elif not read_only:
        if jax.process_index() == 0:
            _move_damaged_steps_aside(directory)
        ocp.multihost.sync_global_processes(f"action_gen_checkpoint_scan_{next(_scans)}")
    writable = {}
    if not read_only:  # orbax refuses both (with a warning) for a read-only manager
        writable = dict(todelete_subdir=TODELETE_DIR, cleanup_tmp_directories=True)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        save_interval_steps=save_interval_steps,
        enable_async_checkpointing=async_save,
        read_only=read_only,
        create=not read_only,
        **writable,
    )
    handlers = {STATE: _state_handler()} | {
        name: ocp.JsonCheckpointHandler() for name in (CONFIG, NORM_STATS, DATA)
    }
    manager = _CheckpointManager(directory, options=options, item_handlers=handlers)
    if not read_only and jax.process_index() == 0:
        manager._todelete = os.path.join(directory, TODELETE_DIR)
        _empty_dir(manager._todelete)  # what a killed run left there
    return manager


def _step_dirs(directory: str) -> list[tuple[int, str]]:
    """(step, path) of the directories orbax would list as steps (its default name format:
    the step number alone; unfinished writes carry a tmp suffix), sorted by step."""
    if not os.path.isdir(directory):
        return []
    names = [n for n in os.listdir(directory) if re.fullmatch(r"0|[1-9]\d*", n)]
    return sorted((int(n), os.path.join(directory, n)) for n in names)


def _unreadable_reason(step_dir: str) -> str | None:
    """Why the step at `step_dir` cannot be restored, or None if it can.

    "Readable" means orbax reads everything a restore reads except the array bytes: the
    JSON items in full (they are small), and the state's metadata, which reads its tree
    (`_METADATA`) and sharding (`_sharding`) files and opens every array's tensorstore
    metadata through the OCDBT manifest and b-tree. That costs file opens, not checkpoint
    bytes, so every step can be checked at every start. Not read: array chunks. Since
    steps appear and disappear only by renames, a step can lose chunk files only from
    outside, and a restore of such a step raises NOT_FOUND (OCDBT names its data files);
    it never returns wrong values.
    """
    state_dir = epath.Path(step_dir) / STATE
    try:
        metadata = ocp.PyTreeCheckpointHandler().metadata(state_dir)
        leaves = jax.tree.leaves(getattr(metadata, "tree", metadata))
        if not leaves:
            return f"{state_dir} has no arrays"
        # A restore without target shardings (a served policy's) needs the sharding of
        # every leaf saved as a jax.Array (numpy and scalar leaves have none).
        if sum(getattr(leaf, "sharding", None) is not None for leaf in leaves) < (
            _num_saved_jax_arrays(state_dir)
        ):
            return f"sharding metadata missing in {state_dir}"
        for item in (CONFIG, NORM_STATS, DATA):
            ocp.JsonCheckpointHandler().restore(epath.Path(step_dir) / item)
    except Exception as e:  # noqa: BLE001 - any failure to read is the answer
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''}"
    return None


def _num_saved_jax_arrays(state_dir: epath.Path) -> int:
    """How many leaves orbax's tree metadata (`_METADATA`) records as saved from a
    jax.Array; 0 if its layout is not the one we know (then sharding is not checked)."""
    try:
        tree = json.loads((state_dir / "_METADATA").read_text())["tree_metadata"]
        return sum(v["value_metadata"]["value_type"] == "jax.Array" for v in tree.values())
    except (KeyError, TypeError, AttributeError, ValueError):
        return 0


def _move_damaged_steps_aside(directory: str) -> None:
    """Renames each unreadable step into `DAMAGED_DIR/<step>-<time>`, with a warning."""
    for step, step_dir in _step_dirs(directory):
        reason = _unreadable_reason(step_dir)
        if reason is None:
            continue
        target = os.path.join(directory, DAMAGED_DIR, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
        if os.path.exists(target):
            target = f"{target}-{time.time_ns()}"
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.rename(step_dir, target)
        except FileNotFoundError:
            continue  # gone meanwhile (a running trainer's keep-last-K): not damaged
        except OSError as e:  # e.g. a read-only directory: restore will fail on it
            logging.warning(
                "damaged checkpoint step %d in %s (%s) could not be moved aside: %s",
                step,
                directory,
                reason,
                e,
            )
            continue
        logging.warning("damaged checkpoint step %d moved aside to %s: %s", step, target, reason)


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


def restore_data_state(manager: ocp.CheckpointManager, step: int | None = None) -> dict:
    """Restores only the data item: the stream position and the dataset's identity."""
    step = _resolve_step(manager, step)
    restored = manager.restore(step, args=ocp.args.Composite(**{DATA: ocp.args.JsonRestore()}))
    return restored[DATA]


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

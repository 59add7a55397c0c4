"""The training loop: the only place with side effects (data, logging, checkpoints)."""

import logging
import os
import re
import time

import jax
import ml_collections
import numpy as np
import tqdm

from action_gen import checkpoint, objectives
from action_gen.data import normalize, pipeline, spec, transforms, validate
from action_gen.envs import collect
from action_gen.train import distributed, sharding
from action_gen.train.metrics_writer import MetricWriter
from action_gen.train.program import build_train_program


def _as_list(value) -> list:
    """A config value that may be one item or a list of them, as a list ('' / None: [])."""
    if value is None or value == "":
        return []
    if isinstance(value, str | os.PathLike):
        return [value]
    return list(value)


def _task_slug(task: str) -> str:
    """A directory name for a task name ('metaworld:push@corner2:96' -> 'push_corner2_96')."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", task.split(":", 1)[-1]).strip("_")


def resolve_dataset_dirs(data_config: ml_collections.ConfigDict, workdir: str) -> list[str]:
    """The RLDS directories to train on (one, or several mixed); generates demos if asked to.

    `data.builtin_task` is a task name or a list of them (a multi-task mixture), and
    `data.dataset_dir` a directory or a list with one directory per task. An empty
    `data.dataset_dir` means `<workdir>/dataset` for one task and `<workdir>/dataset/<task>`
    for each of several. A task whose directory holds no dataset yet gets the scripted
    expert's demos written there.
    """
    tasks = [str(t) for t in _as_list(data_config.get("builtin_task"))]
    dirs = [os.fspath(d) for d in _as_list(data_config.dataset_dir)]
    if not dirs:
        base = os.path.join(workdir, "dataset")
        dirs = [base] if len(tasks) <= 1 else [os.path.join(base, _task_slug(t)) for t in tasks]
    if not tasks:
        return dirs
    if len(dirs) != len(tasks):
        raise ValueError(
            f"data.dataset_dir lists {len(dirs)} directories but data.builtin_task names "
            f"{len(tasks)} tasks; give one directory per task, or leave data.dataset_dir empty"
        )
    return [
        collect.ensure_builtin_dataset(
            task,
            path,
            num_episodes=data_config.num_demo_episodes,
            seed=data_config.demo_seed,
            post_success_steps=data_config.get("demo_post_success_steps", 0),
        )
        for task, path in zip(tasks, dirs, strict=True)
    ]


def mixture_weights(data_config: ml_collections.ConfigDict, num_datasets: int):
    """`data.weights` (one per dataset) or None (equal weights); checked against the count."""
    weights = _as_list(data_config.get("weights"))
    if not weights:
        return None
    if len(weights) != num_datasets:
        raise ValueError(
            f"data.weights has {len(weights)} entries for {num_datasets} datasets; give one "
            "per dataset (data.dataset_dir / data.builtin_task) or none for equal weights"
        )
    return [float(w) for w in weights]


# Config keys that fix what the train state means (its shapes, or what the network
# predicts): resuming under other values is refused, naming them. Learning-rate and
# logging settings may change on resume.
_RESUME_SECTIONS = ("model", "objective")
_RESUME_KEYS = ("data.obs_horizon", "data.action_horizon")
# Inference-time knobs (sampler, clip_sample, num_sample_steps, ...) may change.
_RESUME_IGNORED = frozenset(f"objective.{k}" for k in objectives.SAMPLING_FIELDS)


def check_resume_compatible(stored: dict, current: dict, directory) -> None:
    """Raises ValueError naming every state-defining config key that differs between the
    checkpoint's config (`stored`) and this run's (`current`), both JSON dicts."""
    differing = checkpoint.config_differences(
        stored,
        current,
        lambda k: (
            (k.split(".")[0] in _RESUME_SECTIONS or k in _RESUME_KEYS) and k not in _RESUME_IGNORED
        ),
    )
    if differing:
        details = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in differing.items())
        raise ValueError(
            f"cannot resume from {directory}: the config differs from the checkpoint's in "
            f"{details}. Use a new --workdir, or the checkpoint's values."
        )


def train(config: ml_collections.ConfigDict, workdir: str, *, stop_at_step: int | None = None):
    """Trains `config` in `workdir`, resuming from its latest checkpoint if there is one.

    Args:
      stop_at_step: end early after this step (with a checkpoint), as an interrupted run
        would; the schedule still spans `config.train.num_steps`.
    Returns:
      The final TrainState.
    """
    os.makedirs(workdir, exist_ok=True)
    # Process 0 writes a built-in dataset first; the others then find it on disk.
    dataset_dirs = distributed.process_zero_first(
        lambda: resolve_dataset_dirs(config.data, workdir), "dataset"
    )
    if not dataset_dirs:
        raise ValueError("no training data: set data.dataset_dir or data.builtin_task")
    weights = mixture_weights(config.data, len(dataset_dirs))
    # One dataset: its stats are cached beside it. A mixture is normalized jointly.
    if len(dataset_dirs) == 1:
        dataset_dir = dataset_dirs[0]
        norm_stats = pipeline.compute_dataset_norm_stats(dataset_dir)
    else:
        dataset_dir = dataset_dirs
        norm_stats = pipeline.compute_mixture_norm_stats(dataset_dirs)
    state_dim, data_action_dim = normalize.feature_dims(norm_stats)
    action_dim = spec.model_action_dim(config.model, data_action_dim)
    obs_horizon, action_horizon = config.data.obs_horizon, config.data.action_horizon
    num_steps = config.train.num_steps

    mesh = sharding.create_mesh(config.mesh)
    if config.data.batch_size % mesh.devices.size:
        raise ValueError(
            f"data.batch_size={config.data.batch_size} is not divisible by the "
            f"{mesh.devices.size} devices of the mesh"
        )
    rng = jax.random.key(config.seed)
    init_rng, train_rng = jax.random.split(rng)
    example_obs = spec.example_observation(spec.observation_spec(config.data, state_dim))
    program = build_train_program(config, mesh, example_obs, (action_horizon, action_dim))
    abstract_state, state_shardings = program.abstract_state, program.state_shardings
    batch_sharding = program.batch_sharding

    manager = checkpoint.create_checkpoint_manager(
        os.path.join(workdir, "checkpoints"),
        max_to_keep=config.train.keep_checkpoints,
        async_save=config.train.get("async_checkpoints", True),
    )
    config_json = checkpoint.config_to_json_dict(config)
    if manager.latest_step() is None and config.data.get("validate", True):
        # A fresh run checks its data once (data/validate.py) and stops on errors before
        # spending compute; a resumed run already passed this check.
        for path in dataset_dirs:
            validate.check_dataset(path)
    if manager.latest_step() is not None:
        stored_config, _ = checkpoint.restore_metadata(manager)
        check_resume_compatible(stored_config, config_json, manager.directory)
        abstract_with_shardings = jax.tree.map(
            lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
            abstract_state,
            state_shardings,
        )
        state, _, _, data_state = checkpoint.restore_checkpoint(manager, abstract_with_shardings)
        logging.info("Resumed from %s at step %d", manager.directory, int(state.step))
        start_step = int(data_state["batches_consumed"])
    else:
        state = program.init_fn(init_rng)
        start_step = 0
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info("Model %s: %.2fM parameters", config.model.name, num_params / 1e6)

    num_processes = jax.process_count()
    dataset = pipeline.create_train_dataset(
        dataset_dir,
        obs_horizon=obs_horizon,
        action_horizon=action_horizon,
        batch_size=config.data.batch_size // num_processes,
        norm_stats=norm_stats,
        state_norm=config.data.state_norm,
        action_norm=config.data.action_norm,
        shuffle_buffer=config.data.shuffle_buffer,
        seed=config.seed,
        shard_index=jax.process_index(),
        num_shards=num_processes,
        weights=weights,
        image_crop=config.data.get("image_crop"),
    )
    batches = pipeline.iterate_numpy_batches(dataset, start_batch=start_step)
    prepare_batch = transforms.make_batch_preparer(config, data_action_dim)

    step_fn = program.step_fn

    def save(step: int, force: bool = False):
        checkpoint.save_checkpoint(
            manager,
            step,
            state,
            config=config_json,
            norm_stats=norm_stats,
            data_state={"batches_consumed": step, "seed": config.seed, "dataset_dir": dataset_dir},
            force=force,
        )

    writer = MetricWriter(os.path.join(workdir, "tensorboard"))
    progress = tqdm.tqdm(
        total=num_steps,
        initial=start_step,
        desc="train",
        dynamic_ncols=True,
        disable=jax.process_index() != 0,
    )
    pending_metrics, timer = [], time.perf_counter()
    end_step = num_steps if stop_at_step is None else min(stop_at_step, num_steps)
    preemption = distributed.PreemptionWatcher().start()  # SIGTERM: save, then return
    try:
        for step in range(start_step, end_step):
            batch = sharding.global_batch(prepare_batch(next(batches)), batch_sharding)
            state, metrics = step_fn(state, batch, train_rng)
            pending_metrics.append(metrics)
            done = step + 1
            progress.update(1)
            preempted = preemption.should_stop(done)
            is_checkpoint_step = (
                done % config.train.checkpoint_every == 0 or done == end_step or preempted
            )
            if done % config.train.log_every == 0 or is_checkpoint_step:
                # One host sync per logging interval, not per step; always before a save
                # so a non-finite loss never reaches a checkpoint.
                fetched = jax.device_get(pending_metrics)
                losses = np.asarray([m["loss"] for m in fetched])
                if not np.isfinite(losses).all():
                    bad_step = done - len(fetched) + int(np.argmin(np.isfinite(losses))) + 1
                    raise FloatingPointError(
                        f"non-finite loss at step {bad_step}; stopping. The last good "
                        f"checkpoint (step {manager.latest_step()}) in {manager.directory} "
                        "is kept."
                    )
                summary = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
                summary["steps_per_second"] = len(fetched) / max(time.perf_counter() - timer, 1e-9)
                writer.write_scalars(done, summary)
                progress.set_postfix(loss=f"{summary['loss']:.4f}")
                pending_metrics, timer = [], time.perf_counter()
            if is_checkpoint_step:
                save(done, force=done == end_step or preempted)
            if preempted:
                logging.warning(
                    "Preempted: saved step %d to %s; stopping.", done, manager.directory
                )
                break
    finally:
        preemption.stop()
        # Whatever ends the loop, in-flight async checkpoint writes complete first.
        progress.close()
        manager.wait_until_finished()
        writer.close()
    return state

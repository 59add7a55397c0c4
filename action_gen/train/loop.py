"""The training loop: the only place with side effects (data, logging, checkpoints)."""

import logging
import os
import time

import jax
import ml_collections
import numpy as np

from action_gen import checkpoint, cli, compat
from action_gen import run as run_lib
from action_gen.data import (
    normalize,
    pipeline,
    rlds,
    sources,
    spec,
    standardize,
    transforms,
    validate,
)
from action_gen.train import distributed, sharding
from action_gen.train import lora as train_lora
from action_gen.train import teacher as teacher_lib
from action_gen.train.metrics_writer import MetricWriter
from action_gen.train.program import build_train_program


def existing_dataset_dirs(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
    """The run's dataset directories (`data.sources.dataset_dirs`), each resolved to its
    RLDS version directory; a missing one is an error naming it and the data step."""
    dirs = sources.dataset_dirs(config.data, workdir)
    if not dirs:
        raise ValueError("no training data: set data.dataset_dir or data.builtin_task")
    resolved = []
    for path in dirs:
        try:
            resolved.append(os.fspath(rlds.resolve_dataset_dir(path)))
        except FileNotFoundError as e:
            hint = (
                " Built-in demos are written by the data step: `python -m action_gen.main "
                "--mode=collect` (--mode=train runs it first)."
                if sources.builtin_tasks(config.data)
                else ""
            )
            raise FileNotFoundError(f"{e}.{hint}") from e
    return resolved


def _compute_norm_stats(dataset_dirs: list[str], layouts=None, config=None) -> dict:
    """One dataset's stats (cached beside it), or a mixture's joint stats; with `layouts`
    ((names, mappings) of foreign layouts or a robot's recordings, data/standardize.py,
    data/robots.py) each dataset's own stats (`normalize.DATASETS`), in the model's space
    when the run's robot converts joints or learns delta actions (`transforms.
    model_space_rows`: openpi computes its stats after the same transforms)."""
    if layouts is not None:
        names, mappings = layouts
        rows, tag = _model_space_rows(config)
        return normalize.combine_dataset_stats(
            {
                name: dict(
                    pipeline.compute_dataset_norm_stats(
                        path, mapping=mapping, name=name, rows=rows, rows_tag=tag
                    ),
                    **{normalize.CAMERAS: sorted(mapping["cameras"])},
                )
                for name, path, mapping in zip(names, dataset_dirs, mappings, strict=True)
            }
        )
    if len(dataset_dirs) == 1:
        return pipeline.compute_dataset_norm_stats(dataset_dirs[0])
    return pipeline.compute_mixture_norm_stats(dataset_dirs)


def _model_space_rows(config):
    """(rows function, cache tag) of the run's robot / delta stages, or (None, "")."""
    if config is None:
        return None, ""
    robot = transforms.robot_of(config)
    if robot is None:
        return None, ""
    mask = transforms.delta_mask_of(robot, robot.action_dim)
    horizon = int(config.data.action_horizon)
    tag = transforms.stats_fingerprint(robot, mask, horizon)
    if not tag:
        return None, ""
    return transforms.model_space_rows(robot, mask, horizon), tag


def resolve_layouts(config: ml_collections.ConfigDict, dataset_dirs: list[str]):
    """(unique names, mappings) of a run over named datasets (`data.dataset_names`) or a
    robot's recordings (`config.robot`: the adapter's dataset mapping, data/robots.py), or
    None for our own layout. Fills `data.cameras` (the mappings' camera slots at
    `data.image_size`) when the config leaves it empty, before the config is stored."""
    names = sources.dataset_names(config.data)
    robot = transforms.robot_of(config)
    if robot is not None:
        names = names or [robot.name] * len(dataset_dirs)
        overrides = config.robot.get("dataset") or None
        mappings = [
            robot.dataset_mapping(
                standardize.describe_features(rlds.load_builder(path).info.features), overrides
            )
            for path in dataset_dirs
        ]
    elif not names:
        return None
    else:
        mappings = standardize.resolve_mappings(names, dataset_dirs, config.data.get("mappings"))
    if not config.data.get("cameras"):
        size = [int(s) for s in config.data.get("image_size", (224, 224))]
        with config.unlocked():
            config.data.cameras = {slot: size for slot in standardize.camera_slots(mappings)}
    return standardize.unique_names(names), mappings


def _check_feature_dims(
    norm_stats, dataset_dirs, stored_data, fingerprints, layouts, config
) -> None:
    """On data other than the checkpoint's (allowed by the override), the state and action
    dims must still be the checkpoint's: the parameters' shapes depend on them."""
    if stored_data.get("dataset_fingerprints") in (None, fingerprints):
        return
    stored = normalize.feature_dims(norm_stats)
    current = normalize.feature_dims(_compute_norm_stats(dataset_dirs, layouts, config))
    if stored != current:
        raise ValueError(
            f"cannot resume on {dataset_dirs}: its (state dim, action dim) {current} differ "
            f"from the checkpoint's {stored}; the parameters' shapes depend on them"
        )


def create_training_stream(
    config: ml_collections.ConfigDict,
    dataset_dirs: list[str],
    norm_stats: dict,
    layouts=None,
    *,
    weights=None,
    start_batch: int = 0,
    batch_size: int | None = None,
):
    """(iterator of raw numpy batches from `start_batch` on, the run's transform pipeline):
    this process's share of the training stream (data/pipeline.py) and the ordered
    transforms that prepare each batch for the model (data/transforms.py), the same
    pipeline a Policy restored from the run's checkpoint builds.

    Args:
      layouts: `resolve_layouts(config, dataset_dirs)` (None: our own layout).
      batch_size: the global batch (default `data.batch_size`), split over processes.
    """
    num_processes = jax.process_count()
    dataset = pipeline.create_train_dataset(
        dataset_dirs[0] if len(dataset_dirs) == 1 else dataset_dirs,
        obs_horizon=config.data.obs_horizon,
        action_horizon=config.data.action_horizon,
        batch_size=(batch_size or config.data.batch_size) // num_processes,
        norm_stats=norm_stats,
        shuffle_buffer=config.data.shuffle_buffer,
        seed=config.seed,
        shard_index=jax.process_index(),
        num_shards=num_processes,
        weights=weights,
        image_crop=config.data.get("image_crop"),
        split=config.data.get("split", "train"),
        mappings=None if layouts is None else layouts[1],
        dataset_names=None if layouts is None else layouts[0],
        cameras=spec.cameras_of(config.data) if layouts is not None else None,
        start_batch=start_batch,  # the stream is built at its position: no replay
    )
    transform = transforms.create_pipeline(
        config, norm_stats, dataset_names=None if layouts is None else layouts[0]
    )
    return pipeline.iterate_numpy_batches(dataset), transform


def train(config: ml_collections.ConfigDict, workdir: str, *, stop_at_step: int | None = None):
    """Trains `config` in `workdir`, resuming from its latest checkpoint if there is one.

    The datasets must exist (built-in demos: the data step, `envs.collect.
    collect_builtin_datasets`, runs first). A resume refuses a config or dataset the
    checkpoint cannot honour (`compat.check_resume`,
    `compat.check_dataset_identity`) and normalizes with the checkpoint's stats.

    Args:
      stop_at_step: end early after this step (with a checkpoint), as an interrupted run
        would; the schedule still spans `config.train.num_steps`.
    Returns:
      The final TrainState.
    """
    os.makedirs(workdir, exist_ok=True)
    dataset_dirs = existing_dataset_dirs(config, workdir)
    weights = sources.mixture_weights(config.data, len(dataset_dirs))
    fingerprints = [pipeline.dataset_fingerprint(d) for d in dataset_dirs]
    dataset_dir = dataset_dirs[0] if len(dataset_dirs) == 1 else dataset_dirs
    layouts = resolve_layouts(config, dataset_dirs)  # before the config is stored
    teacher_path = teacher_lib.teacher_dir(config, workdir)
    teacher_metadata = None
    if teacher_path is not None:
        # A student reads its teacher in the teacher's own ODE convention and settings,
        # taken from the teacher's stored config before the student's is stored.
        teacher_metadata = teacher_lib.read_teacher_metadata(teacher_path)
        teacher_lib.inherit_teacher_settings(config, teacher_metadata[0])
    manager = run_lib.create_manager(
        workdir,
        max_to_keep=config.train.keep_checkpoints,
        async_save=config.train.get("async_checkpoints", True),
    )
    config_json = compat.config_to_json_dict(config)
    resuming = manager.latest_step() is not None
    if resuming:
        # The checkpoint fixes the model, objective, horizons and normalization, and its
        # norm stats are the ones the parameters were trained under: never recomputed.
        stored_config, norm_stats = checkpoint.restore_metadata(manager)
        compat.check_resume(
            stored_config,
            config_json,
            manager.directory,
            "Use a new --workdir, or the checkpoint's values.",
        )
        stored_data = checkpoint.restore_data_state(manager)
        compat.check_dataset_identity(
            stored_data.get("dataset_fingerprints"),
            fingerprints,
            stored_data.get("dataset_dir"),
            dataset_dir,
            allowed=config.train.get("allow_dataset_change", False),
            where=str(manager.directory),
        )
        _check_feature_dims(norm_stats, dataset_dirs, stored_data, fingerprints, layouts, config)
    else:
        if config.data.get("validate", True):
            # A fresh run checks its data once (data/validate.py) and stops on errors
            # before spending compute; a resumed run already passed this check.
            for i, path in enumerate(dataset_dirs):
                validate.check_dataset(
                    path,
                    mapping=None if layouts is None else layouts[1][i],
                    name=None if layouts is None else layouts[0][i],
                )
        # One dataset: its stats are cached beside it. A mixture of our own layout is
        # normalized jointly; named (foreign) layouts each by their own stats.
        norm_stats = _compute_norm_stats(dataset_dirs, layouts, config)
    if teacher_metadata is not None and not resuming:
        # A distilled student learns, and is served, in its teacher's normalized units.
        norm_stats = teacher_metadata[1]
    state_dim, data_action_dim = normalize.feature_dims(norm_stats)
    action_dim = spec.model_action_dim(config.model, data_action_dim)
    action_horizon = config.data.action_horizon
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
    loaded_teacher = None
    if teacher_path is not None:
        loaded_teacher = teacher_lib.load_teacher(
            teacher_path, config, sharding.replicated_sharding(mesh)
        )
        logging.info("Distilling the teacher in %s", loaded_teacher.directory)
    program = build_train_program(
        config,
        mesh,
        example_obs,
        (action_horizon, action_dim),
        teacher=None if loaded_teacher is None else loaded_teacher.teacher,
    )
    abstract_state, state_shardings = program.abstract_state, program.state_shardings
    batch_sharding = program.batch_sharding

    if resuming:
        abstract_with_shardings = jax.tree.map(
            lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
            abstract_state,
            state_shardings,
        )
        state, _, _, data_state = checkpoint.restore_checkpoint(manager, abstract_with_shardings)
        logging.info("Resumed from %s at step %d", manager.directory, int(state.step))
        start_step = int(data_state["batches_consumed"])
    else:
        init_from = config.train.get("init_from") or ""
        if init_from:  # fine-tuning: pretrained model parameters (any layout, merged)
            pretrained = train_lora.restore_pretrained_params(
                init_from, config, program.abstract_model_params
            )
            state = program.init_from_fn(pretrained, init_rng)
            logging.info("Initialised from %s", init_from)
        else:
            state = program.init_fn(init_rng)
        if loaded_teacher is not None and config.train.get("init_from_teacher", False):
            state = teacher_lib.init_from_teacher(state, loaded_teacher, state_shardings, init_rng)
        start_step = 0
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info("Model %s: %.2fM parameters", config.model.name, num_params / 1e6)

    batches, transform = create_training_stream(
        config, dataset_dirs, norm_stats, layouts, weights=weights, start_batch=start_step
    )

    def prepare_batch(batch):
        return transform.inputs(batch)[0]

    step_fn = program.step_fn

    def save(step: int, force: bool = False):
        checkpoint.save_checkpoint(
            manager,
            step,
            state,
            config=config_json,
            norm_stats=norm_stats,
            data_state={
                "batches_consumed": step,
                "seed": config.seed,
                "dataset_dir": dataset_dir,
                "dataset_fingerprints": fingerprints,
            },
            force=force,
        )

    writer = MetricWriter(os.path.join(workdir, "tensorboard"))
    progress = cli.progress(
        num_steps, "train", initial=start_step, disable=jax.process_index() != 0
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

"""The training loop: the only place with side effects (data, logging, checkpoints)."""

import dataclasses
import logging
import os
import time

import jax
import ml_collections
import numpy as np

from action_gen import checkpoint, cli, compat, config_schema
from action_gen import run as run_lib
from action_gen.data import memory, normalize, sources, spec, standardize, transforms
from action_gen.train import distributed, sharding
from action_gen.train import lora as train_lora
from action_gen.train import teacher as teacher_lib
from action_gen.train.metrics_writer import MetricWriter
from action_gen.train.program import build_train_program

# The tf.data loader's modules (data/pipeline.py, data/rlds.py, data/validate.py's reader)
# import TensorFlow: they are imported where that loader is used, so a run with
# data.loader='memory' (data/memory.py) and every evaluation load without it (the lent GPU
# machines have none).


def uses_memory_loader(config: ml_collections.ConfigDict) -> bool:
    """Whether the run streams with data/memory.py (`data.loader`, checked)."""
    return sources.loader(config.data) == sources.MEMORY


def existing_dataset_dirs(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
    """The run's dataset directories (`data.sources.dataset_dirs`), each resolved to its
    RLDS version directory (the memory loader: the LeRobot dataset's own directory, not
    converted); a missing one is an error naming it and the data step."""
    if uses_memory_loader(config):
        dirs = sources.dataset_dirs(config.data, workdir)  # not converted: LeRobot's own
        foreign = (
            bool(sources.dataset_names(config.data)) or transforms.robot_of(config) is not None
        )
        memory.check_supported(dirs, foreign_layout=foreign)
        return dirs
    from action_gen.data import rlds

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
    if config is not None and uses_memory_loader(config):
        return memory.compute_norm_stats(dataset_dirs[0])
    from action_gen.data import pipeline

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
        from action_gen.data import rlds

        names = names or [robot.name] * len(dataset_dirs)
        overrides = config.robot.dataset or None
        mappings = [
            robot.dataset_mapping(
                standardize.describe_features(rlds.load_builder(path).info.features), overrides
            )
            for path in dataset_dirs
        ]
    elif not names:
        return None
    else:
        mappings = standardize.resolve_mappings(names, dataset_dirs, config.data.mappings)
    if not config.data.cameras:
        size = [int(s) for s in config.data.image_size]
        with config.unlocked():
            config.data.cameras = {slot: size for slot in standardize.camera_slots(mappings)}
    return standardize.unique_names(names), mappings


def _check_feature_dims(norm_stats, data: "DataSetup", stored_data, config) -> None:
    """On data other than the checkpoint's (allowed by the override), the state and action
    dims must still be the checkpoint's: the parameters' shapes depend on them."""
    if stored_data.dataset_fingerprints in (None, data.fingerprints):
        return
    stored = normalize.feature_dims(norm_stats)
    current = normalize.feature_dims(_compute_norm_stats(data.dataset_dirs, data.layouts, config))
    if stored != current:
        raise ValueError(
            f"cannot resume on {data.dataset_dirs}: its (state dim, action dim) {current} differ "
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
    this process's share of the training stream (data/pipeline.py, or data/memory.py with
    `data.loader='memory'`) and the ordered
    transforms that prepare each batch for the model (data/transforms.py), the same
    pipeline a Policy restored from the run's checkpoint builds.

    Args:
      layouts: `resolve_layouts(config, dataset_dirs)` (None: our own layout).
      batch_size: the global batch (default `data.batch_size`), split over processes.
    """
    transform = transforms.create_pipeline(
        config, norm_stats, dataset_names=None if layouts is None else layouts[0]
    )
    if uses_memory_loader(config):
        state_dim, action_dim = normalize.feature_dims(norm_stats)
        data = memory.load_dataset(
            dataset_dirs[0],
            obs_horizon=config.data.obs_horizon,
            action_horizon=config.data.action_horizon,
            state_dim=state_dim,
            action_dim=action_dim,
        )
        batches = memory.iterate_batches(
            data,
            global_batch_size=batch_size or config.data.batch_size,
            seed=config.seed,
            start_batch=start_batch,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            image_crop=config.data.image_crop,
        )
        return batches, transform
    from action_gen.data import pipeline

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
        image_crop=config.data.image_crop,
        split=config.data.split,
        mappings=None if layouts is None else layouts[1],
        dataset_names=None if layouts is None else layouts[0],
        cameras=spec.cameras_of(config.data) if layouts is not None else None,
        start_batch=start_batch,  # the stream is built at its position: no replay
    )
    return pipeline.iterate_numpy_batches(dataset), transform


@dataclasses.dataclass(frozen=True)
class DataSetup:
    """A run's data, resolved once at its start.

    Attributes:
      dataset_dirs: each dataset's RLDS version directory (`existing_dataset_dirs`).
      fingerprints: `pipeline.dataset_fingerprint` of each, stored and checked on resume.
      weights: a mixture's sampling weights (`sources.mixture_weights`; None: one dataset).
      layouts: (unique names, mappings) of named datasets or a robot's recordings
        (`resolve_layouts`), or None for our own layout.
      norm_stats: the stats the model trains under (the checkpoint's on resume, a
        teacher's for a distillation student, else computed: `resolve_norm_stats`).
    """

    dataset_dirs: list[str]
    fingerprints: list[str]
    weights: list[float] | None
    layouts: tuple | None
    norm_stats: dict | None = None

    @property
    def dataset_dir(self) -> str | list[str]:
        """One directory, or a mixture's list (what checkpoints store)."""
        return self.dataset_dirs[0] if len(self.dataset_dirs) == 1 else self.dataset_dirs

    def data_state(self, batches_consumed: int, seed: int) -> run_lib.DataState:
        return run_lib.DataState(
            batches_consumed=batches_consumed,
            seed=seed,
            dataset_dir=self.dataset_dir,
            dataset_fingerprints=self.fingerprints,
        )


def resolve_data(config: ml_collections.ConfigDict, workdir: str) -> DataSetup:
    """The run's datasets, fingerprints, mixture weights and layouts (no stats yet). Fills
    `data.cameras` from the layouts when the config leaves it empty (`resolve_layouts`),
    so it runs before the config is stored."""
    dataset_dirs = existing_dataset_dirs(config, workdir)
    if uses_memory_loader(config):
        fingerprint = memory.dataset_fingerprint
    else:
        from action_gen.data import pipeline

        fingerprint = pipeline.dataset_fingerprint
    return DataSetup(
        dataset_dirs=dataset_dirs,
        fingerprints=[fingerprint(d) for d in dataset_dirs],
        weights=sources.mixture_weights(config.data, len(dataset_dirs)),
        layouts=resolve_layouts(config, dataset_dirs),
    )


def resolve_norm_stats(
    config: ml_collections.ConfigDict,
    config_json: dict,
    data: DataSetup,
    manager,
    teacher_norm_stats: dict | None,
) -> DataSetup:
    """`data` with the stats the model trains under.

    Resuming (`manager` holds a checkpoint): the checkpoint fixes the model, objective,
    horizons and normalization, so its config must allow `config_json`
    (`compat.check_resume`), its datasets must be these (`compat.check_dataset_identity`)
    and its stats are used, never recomputed. A fresh run validates its data once
    (data/validate.py, before spending compute) and computes the stats, unless it is a
    distillation student, which learns and is served in its teacher's normalized units.
    """
    if manager.latest_step() is not None:
        stored_config, norm_stats = checkpoint.restore_metadata(manager)
        stored_config = config_schema.complete(stored_config)  # fields added since
        compat.check_resume(
            stored_config,
            config_json,
            manager.directory,
            "Use a new --workdir, or the checkpoint's values.",
        )
        stored_data = run_lib.DataState.from_json(checkpoint.restore_data_state(manager))
        compat.check_dataset_identity(
            stored_data.dataset_fingerprints,
            data.fingerprints,
            stored_data.dataset_dir,
            data.dataset_dir,
            allowed=config.train.allow_dataset_change,
            where=str(manager.directory),
        )
        _check_feature_dims(norm_stats, data, stored_data, config)
        return dataclasses.replace(data, norm_stats=norm_stats)
    if config.data.validate and uses_memory_loader(config):
        memory.check_dataset(data.dataset_dirs[0])
    elif config.data.validate:
        from action_gen.data import validate

        for i, path in enumerate(data.dataset_dirs):
            validate.check_dataset(
                path,
                mapping=None if data.layouts is None else data.layouts[1][i],
                name=None if data.layouts is None else data.layouts[0][i],
            )
    if teacher_norm_stats is not None:
        return dataclasses.replace(data, norm_stats=teacher_norm_stats)
    # One dataset: its stats are cached beside it. A mixture of our own layout is
    # normalized jointly; named (foreign) layouts each by their own stats.
    norm_stats = _compute_norm_stats(data.dataset_dirs, data.layouts, config)
    return dataclasses.replace(data, norm_stats=norm_stats)


def initial_state(
    config: ml_collections.ConfigDict, program, manager, loaded_teacher, init_rng
) -> tuple[object, int]:
    """(the train state to start from, the step it is at): the checkpoint's on resume, else
    a fresh one (`program.init_fn`), from `train.init_from`'s model parameters
    (fine-tuning) or from the teacher's (`train.init_from_teacher`)."""
    if manager.latest_step() is not None:
        abstract_with_shardings = jax.tree.map(
            lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
            program.abstract_state,
            program.state_shardings,
        )
        state, _, _, data_state = checkpoint.restore_checkpoint(manager, abstract_with_shardings)
        logging.info("Resumed from %s at step %d", manager.directory, int(state.step))
        return state, run_lib.DataState.from_json(data_state).batches_consumed
    if config.train.init_from:  # fine-tuning: pretrained model parameters (any layout)
        pretrained = train_lora.restore_pretrained_params(
            config.train.init_from, config, program.abstract_model_params
        )
        state = program.init_from_fn(pretrained, init_rng)
        logging.info("Initialised from %s", config.train.init_from)
    else:
        state = program.init_fn(init_rng)
    if loaded_teacher is not None and config.train.init_from_teacher:
        state = teacher_lib.init_from_teacher(
            state, loaded_teacher, program.state_shardings, init_rng
        )
    return state, 0


def train(config: ml_collections.ConfigDict, workdir: str, *, stop_at_step: int | None = None):
    """Trains `config` in `workdir`, resuming from its latest checkpoint if there is one:
    data (`resolve_data`, `resolve_norm_stats`) → program (`build_train_program`) → state
    (`initial_state`) → loop (`run_training_loop`).

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
    data = resolve_data(config, workdir)  # before the config is stored
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
        async_save=config.train.async_checkpoints,
    )
    config_json = compat.config_to_json_dict(config)
    data = resolve_norm_stats(
        config,
        config_json,
        data,
        manager,
        None if teacher_metadata is None else teacher_metadata[1],
    )

    state_dim, data_action_dim = normalize.feature_dims(data.norm_stats)
    action_dim = spec.model_action_dim(config.model, data_action_dim)
    mesh = sharding.create_mesh(config.mesh)
    if config.data.batch_size % mesh.devices.size:
        raise ValueError(
            f"data.batch_size={config.data.batch_size} is not divisible by the "
            f"{mesh.devices.size} devices of the mesh"
        )
    init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
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
        (config.data.action_horizon, action_dim),
        teacher=None if loaded_teacher is None else loaded_teacher.teacher,
    )
    state, start_step = initial_state(config, program, manager, loaded_teacher, init_rng)
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info("Model %s: %.2fM parameters", config.model.name, num_params / 1e6)
    return run_training_loop(
        config,
        workdir,
        manager,
        program,
        state,
        data,
        config_json,
        start_step=start_step,
        train_rng=train_rng,
        stop_at_step=stop_at_step,
    )


def run_training_loop(
    config: ml_collections.ConfigDict,
    workdir: str,
    manager,
    program,
    state,
    data: DataSetup,
    config_json: dict,
    *,
    start_step: int,
    train_rng,
    stop_at_step: int | None = None,
):
    """Steps `state` from `start_step` to `train.num_steps` (or `stop_at_step`): the stream
    at its position, one jitted step per batch, metrics every `train.log_every` steps (a
    non-finite loss stops before it reaches a checkpoint), a checkpoint every
    `train.checkpoint_every`, at the end and on SIGTERM. Returns the final state."""
    batches, transform = create_training_stream(
        config,
        data.dataset_dirs,
        data.norm_stats,
        data.layouts,
        weights=data.weights,
        start_batch=start_step,
    )
    num_steps = config.train.num_steps

    def save(step: int, force: bool = False):
        checkpoint.save_checkpoint(
            manager,
            step,
            state,
            config=config_json,
            norm_stats=data.norm_stats,
            data_state=data.data_state(step, config.seed).to_json(),
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
            inputs = transform.inputs(next(batches))[0]
            batch = sharding.global_batch(inputs, program.batch_sharding)
            state, metrics = program.step_fn(state, batch, train_rng)
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

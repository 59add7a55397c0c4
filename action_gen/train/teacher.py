"""The teacher of a distillation objective (`objective.teacher_workdir`): where its run is,
what carries over from it into the student, and its weights.

What carries over (the rule itself: compat.check_distillation): the teacher's
normalization stats (the student is trained, and served, in the teacher's normalized units)
and its horizons and normalization modes; the teacher's family (`objective.parameterization`)
and that family's ODE settings (`objectives.family_settings`: time_scale and
time_convention of a flow teacher; num_train_steps, schedule, prediction_type, betas of a
diffusion one), which the student takes from the teacher's stored config where it does not
state them (`inherit_teacher_settings`) and must equal where it does; and, for a student
initialized from the teacher (`train.init_from_teacher`), its model config.
"""

import dataclasses
import logging
import os

import jax
import ml_collections
from flax import traverse_util

from action_gen import compat, models, objectives
from action_gen import run as run_lib


@dataclasses.dataclass(frozen=True)
class LoadedTeacher:
    """A teacher run restored for distillation.

    Attributes:
      teacher: `objectives.Teacher(apply_fn, params)` (EMA parameters).
      config: the teacher's stored config (JSON dict).
      norm_stats: the teacher's normalization stats (the student's, too).
      directory: the teacher's checkpoint directory.
    """

    teacher: objectives.Teacher
    config: dict
    norm_stats: dict
    directory: str


def teacher_dir(config: ml_collections.ConfigDict, workdir: str) -> str | None:
    """The teacher run's workdir (`objective.teacher_workdir`, relative to the student's
    `workdir` unless absolute), or None for an objective without a teacher."""
    # A field of the distillation objectives only (the objective section is open).
    path = config.objective.teacher_workdir if "teacher_workdir" in config.objective else None
    path = path or None
    if path is None:
        return None
    return path if os.path.isabs(path) else os.path.join(os.path.abspath(workdir), path)


def inherit_teacher_settings(config: ml_collections.ConfigDict, teacher_config: dict) -> None:
    """Checks that `config` (the student) can distill the teacher whose stored config is
    `teacher_config` (`compat.check_distillation`), then writes into `config.objective` the
    teacher family's ODE settings the student leaves out (a flow teacher's time_scale and
    time_convention, ...), so the student reads the teacher in the teacher's own convention
    and its stored config says so."""
    objective = config.objective
    family = objective.parameterization if "parameterization" in objective else None
    if family is None or family != teacher_config["objective"]["name"]:
        return  # check_distillation (load_teacher) names the mismatch
    settings = objectives.family_settings(family, teacher_config["objective"])
    with config.unlocked():
        for key, value in settings.items():
            if key not in config.objective:
                config.objective[key] = value


def read_teacher_metadata(path: str) -> tuple[dict, dict, str]:
    """(stored config, norm stats, checkpoint directory) of the teacher run at `path`."""
    try:
        teacher = run_lib.Run.open(path, role="teacher (objective.teacher_workdir)")
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{e}: train the teacher first (`--mode=train_and_eval` with a config that has a "
            "`teacher` section does both)"
        ) from None
    stored_config, norm_stats = teacher.metadata()
    return stored_config, norm_stats, teacher.directory


def load_teacher(
    path: str, student_config: ml_collections.ConfigDict, sharding: jax.sharding.Sharding
) -> LoadedTeacher:
    """Restores the teacher run at `path` (EMA parameters laid out by `sharding`, adapters
    merged when it was fine-tuned with LoRA) after checking that `student_config` can
    distill it (`compat.check_distillation`)."""
    stored_config, norm_stats, ckpt_dir = read_teacher_metadata(path)
    compat.check_distillation(stored_config, compat.config_to_json_dict(student_config), ckpt_dir)
    config = ml_collections.ConfigDict(stored_config)
    model, abstract = models.abstract_checkpoint_params(config, norm_stats)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract
    )
    params = run_lib.Run.open(ckpt_dir).restore_model_params(abstract, use_ema=True)
    return LoadedTeacher(
        teacher=objectives.Teacher(models.make_apply_fn(model), params),
        config=stored_config,
        norm_stats=norm_stats,
        directory=ckpt_dir,
    )


def init_from_teacher(state, loaded: LoadedTeacher, state_shardings, init_rng: jax.Array):
    """`state` (fresh) with params and EMA set to the teacher's EMA parameters, laid out
    like the state's (the optimizer state is unchanged: its init does not depend on the
    values). The student's model config equals the teacher's (`compat.check_distillation`)
    except for `compat.STUDENT_ONLY_MODEL_KEYS`: a head only the student has starts from the
    teacher's output layer where the model says how (`models.student_head_from_teacher`:
    the multiple-choice head as noisy copies of it, drawn with a key folded from
    `init_rng`, the key the fresh state was initialized with), and keeps its fresh
    initialization otherwise. Every parameter both have must have the same shape."""
    teacher = traverse_util.flatten_dict(loaded.teacher.params, sep="/")
    student = traverse_util.flatten_dict(state.params, sep="/")
    mismatched = [
        f"{path}: teacher {teacher[path].shape}, student {student[path].shape}"
        for path in sorted(set(teacher) & set(student))
        if teacher[path].shape != student[path].shape
    ]
    if mismatched or not set(teacher) & set(student):
        raise ValueError(
            f"train.init_from_teacher: the teacher's parameters in {loaded.directory} do not "
            f"match the student's model: {'; '.join(mismatched) or 'no parameter in common'}"
        )
    merged = traverse_util.unflatten_dict(
        {path: teacher.get(path, value) for path, value in student.items()}, sep="/"
    )
    head_rng = jax.random.fold_in(init_rng, 1)
    merged = models.student_head_from_teacher(merged, loaded.teacher.params, head_rng)
    derived = traverse_util.flatten_dict(merged, sep="/")
    fresh = sorted(p for p in set(student) - set(teacher) if derived[p] is student[p])
    if set(student) - set(teacher):
        logging.info(
            "init_from_teacher: student-only parameter(s) %s; kept at their fresh init: %s",
            ", ".join(sorted(set(student) - set(teacher))),
            ", ".join(fresh) or "none",
        )
    # Fresh buffers: the train step donates the state, and the teacher's stay in use.
    return state.replace(
        params=jax.device_put(merged, state_shardings.params, may_alias=False),
        ema_params=jax.device_put(merged, state_shardings.ema_params, may_alias=False),
    )

"""The teacher of a distillation objective (`objective.teacher_workdir`): where its run is,
what carries over from it into the student, and its weights.

What carries over: the teacher's normalization stats (the student is trained, and
served, in the teacher's normalized units) and the config fields a checkpoint fixes
besides model and objective (the `data.*` entries of `checkpoint.FIXED_KEYS`: obs /
action horizons, state and action normalization), which must equal the student's. A
student initialized from the teacher (`train.init_from_teacher`) must also have the
teacher's model config. The student's objective names the teacher's family
(`parameterization`) and its settings (time_scale; num_train_steps, schedule, ...), which
must equal the teacher's.
"""

import dataclasses
import json
import logging
import os

import jax
import ml_collections
from flax import traverse_util

from action_gen import checkpoint, models, objectives

# Model fields a student initialized from its teacher may set on its own: they add a head
# the teacher lacks (a multiple-choice head, models/unet1d.py), which `init_from_teacher`
# derives from the teacher's output layer (`models.student_head_from_teacher`).
STUDENT_ONLY_MODEL_KEYS = frozenset({"model.num_hypotheses"})


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
    path = config.objective.get("teacher_workdir") or None
    if path is None:
        return None
    return path if os.path.isabs(path) else os.path.join(os.path.abspath(workdir), path)


def check_student_config(teacher_config: dict, student_config: dict, where: str) -> None:
    """Raises ValueError naming every field where the student cannot follow the teacher.

    Args:
      teacher_config, student_config: config JSON dicts (stored and current).
      where: the teacher's checkpoint directory, for the message.
    """
    init = bool(student_config.get("train", {}).get("init_from_teacher", False))
    differing = checkpoint.config_differences(
        teacher_config,
        student_config,
        # The data fields only: the optimizer's trainable split is the student's own choice.
        lambda k: (
            (k in checkpoint.FIXED_KEYS and k.startswith("data."))
            or (init and k.startswith("model.") and k not in STUDENT_ONLY_MODEL_KEYS)
        ),
    )
    student_objective = student_config["objective"]
    family = student_objective.get("parameterization")
    if family != teacher_config["objective"]["name"]:
        differing["objective.parameterization"] = (teacher_config["objective"]["name"], family)
    for key, value in teacher_config["objective"].items():
        if key in student_objective and key not in objectives.SAMPLING_FIELDS | {"name"}:
            if json.dumps(student_objective[key]) != json.dumps(value):
                differing[f"objective.{key}"] = (value, student_objective[key])
    if differing:
        details = ", ".join(f"{k}: teacher {t!r}, student {s!r}" for k, (t, s) in differing.items())
        raise ValueError(
            f"the student cannot distill the teacher in {where}: {details}. The student "
            "keeps the teacher's horizons and normalization, names its objective in "
            "objective.parameterization with the same settings, and (init_from_teacher) "
            "its model."
        )


def read_teacher_metadata(path: str) -> tuple[dict, dict, str]:
    """(stored config, norm stats, checkpoint directory) of the teacher run at `path`."""
    ckpt_dir = os.path.join(path, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(
            f"no teacher checkpoint at {ckpt_dir} (objective.teacher_workdir): train the "
            "teacher first (`--mode=train_and_eval` with a config that has a `teacher` "
            "section does both)"
        )
    manager = checkpoint.create_checkpoint_manager(ckpt_dir, read_only=True)
    stored_config, norm_stats = checkpoint.restore_metadata(manager)
    return stored_config, norm_stats, ckpt_dir


def load_teacher(
    path: str, student_config: ml_collections.ConfigDict, sharding: jax.sharding.Sharding
) -> LoadedTeacher:
    """Restores the teacher run at `path` (EMA parameters laid out by `sharding`) after
    checking that `student_config` can distill it (`check_student_config`)."""
    stored_config, norm_stats, ckpt_dir = read_teacher_metadata(path)
    check_student_config(stored_config, checkpoint.config_to_json_dict(student_config), ckpt_dir)
    config = ml_collections.ConfigDict(stored_config)
    model, abstract = models.abstract_checkpoint_params(config, norm_stats)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract
    )
    manager = checkpoint.create_checkpoint_manager(ckpt_dir, read_only=True)
    params = checkpoint.restore_params(manager, abstract, use_ema=True)
    return LoadedTeacher(
        teacher=objectives.Teacher(models.make_apply_fn(model), params),
        config=stored_config,
        norm_stats=norm_stats,
        directory=ckpt_dir,
    )


def init_from_teacher(state, loaded: LoadedTeacher, state_shardings, init_rng: jax.Array):
    """`state` (fresh) with params and EMA set to the teacher's EMA parameters, laid out
    like the state's (the optimizer state is unchanged: its init does not depend on the
    values). The student's model config equals the teacher's (`check_student_config`)
    except for `STUDENT_ONLY_MODEL_KEYS`: a head only the student has starts from the
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

"""Compatibility rules: which config fields a trained run fixes, for each way of reusing it.

Three ways to reuse a run, each a named predicate over dotted config keys ("model.channels")
and a check that names every differing field:

  resume        `--mode=train` on a workdir with a checkpoint; also sweep evaluation and
                `Policy.from_checkpoint(config=...)`, which sample a stored model under a
                given config (`fixed_for_resume`, `check_resume`).
  init_from     a fine-tuning run starting from another run's model parameters
                (`train.init_from`; `fixed_for_init_from`, `check_init_from`).
  distillation  a student learning from a teacher run (`objective.teacher_workdir`;
                `fixed_for_distillation`, `check_distillation`).

What each fixes, and why (a field "changes meaning" when the same value of a parameter or
a number in the data would mean something else under the new value):
  resume: `model.*` (the parameters' shapes and function), `objective.*` except its
    sampling-only settings (objectives.SAMPLING_FIELDS: what the network predicts),
    `lora.*`, `optimizer.trainable`, `optimizer.frozen_dtype`, `optimizer.flatten` (the
    train state's tree: adapters, which leaves carry Adam moments and an EMA, one flat
    vector or a tree of moments), the data fields that set the model's inputs and outputs
    (`data.obs_horizon`, `data.action_horizon`, `data.state_norm`, `data.action_norm`), and
    the robot adapter's conventions (`robot.name`, `robot.state`, `robot.state_dims`,
    `robot.action_dim`, `robot.delta_action_dims`, `robot.joints`: the units of states and
    actions). The dataset itself is identified by fingerprint (`check_dataset_identity`).
  init_from: `model.*` only — a fine-tuning run chooses its own data, objective settings,
    optimizer and LoRA layout; the parameters must have the same shapes and function.
  distillation: the resume rule's `data.*` fields (the student learns and is served in the
    teacher's normalized units and horizons); the teacher's objective family and every
    setting of it, compared against the student's *family settings* including the
    family's defaults for a setting the student leaves out (`objective.time_convention`
    among them: a teacher in openpi's convention, t = 1 noise, is never read in mirrored
    time); and `model.*` when the student starts from the teacher's weights
    (`train.init_from_teacher`), except `STUDENT_ONLY_MODEL_KEYS`.
"""

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
from flax import traverse_util

from action_gen import config_schema, objectives

RESUME_FIXED_SECTIONS = ("model", "objective", "lora")
RESUME_FIXED_KEYS = (
    "data.obs_horizon",
    "data.action_horizon",
    "data.state_norm",
    "data.action_norm",
    "optimizer.trainable",
    "optimizer.frozen_dtype",
    "optimizer.flatten",
    "robot.name",
    "robot.state",
    "robot.state_dims",
    "robot.action_dim",
    "robot.delta_action_dims",
    "robot.joints",
)
DISTILLATION_DATA_KEYS = tuple(k for k in RESUME_FIXED_KEYS if k.startswith("data."))
# Model fields a student initialized from its teacher may set on its own: they add a head
# the teacher lacks (a multiple-choice head, models/unet1d.py), which `init_from_teacher`
# derives from the teacher's output layer (`models.student_head_from_teacher`).
STUDENT_ONLY_MODEL_KEYS = frozenset({"model.num_hypotheses"})


def config_to_json_dict(config: ml_collections.ConfigDict) -> dict:
    """Plain JSON dict of a config (FieldReferences resolved): what a checkpoint stores."""
    return json.loads(config.to_json_best_effort())


def config_differences(
    stored: dict, current: dict, relevant: Callable[[str], bool]
) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (stored value, current value)}, sorted by key, for the keys where
    `relevant(key)` holds and two config JSON dicts (a checkpoint's and a run's) differ; a
    key missing on one side has the value None there. Values are compared in JSON form: a
    stored config has lists where a live one has tuples; "" and None are the same unset
    value (a section a newer config declares empty). Both are completed with the schema's
    defaults first (config_schema.complete: a field added since the checkpoint was stored
    has its default there)."""
    old = traverse_util.flatten_dict(config_schema.complete(stored), sep=".")
    new = traverse_util.flatten_dict(config_schema.complete(current), sep=".")
    keys = sorted(k for k in old.keys() | new.keys() if relevant(k))

    def norm(value):
        return None if value in ("", None) else json.dumps(value)

    return {k: (old.get(k), new.get(k)) for k in keys if norm(old.get(k)) != norm(new.get(k))}


def describe_differences(
    differing: Mapping[str, tuple[Any, Any]], old: str = "", new: str = "", arrow: str = " -> "
) -> str:
    """The "key: <old>'a' -> <new>'b', ..." text of a `config_differences` result."""
    return ", ".join(f"{k}: {old}{a!r}{arrow}{new}{b!r}" for k, (a, b) in differing.items())


# ------------------------------------------------------------------------------- resume


def fixed_for_resume(key: str) -> bool:
    """Whether a resumed run (or a stored model sampled under another config) must keep the
    checkpoint's value of the dotted `key` (module docstring)."""
    section, _, field = key.partition(".")
    if section == "objective" and field in objectives.SAMPLING_FIELDS:
        return False
    return section in RESUME_FIXED_SECTIONS or key in RESUME_FIXED_KEYS


def check_resume(stored: dict, current: dict, where: str, remedy: str) -> None:
    """Raises ValueError naming every field `fixed_for_resume` that differs between the
    checkpoint's config (`stored`) and `current` (both config JSON dicts).

    Args:
      where: the checkpoint directory, for the message.
      remedy: what the user can do instead (e.g. "use a new --workdir").
    """
    differing = config_differences(stored, current, fixed_for_resume)
    if differing:
        details = describe_differences(differing)
        raise ValueError(
            f"the checkpoint in {where} was trained with another config: {details} differ "
            f"(a checkpoint fixes model.*, objective.* except its sampling settings, lora.*, "
            f"and {', '.join(RESUME_FIXED_KEYS)}). {remedy}"
        )


def check_dataset_identity(
    stored_fingerprints: list[str] | None,
    current_fingerprints: list[str],
    stored_dirs,
    current_dirs,
    *,
    allowed: bool,
    where: str,
) -> None:
    """Refuses to resume on other data than the checkpoint was trained on.

    Each dataset is identified by `pipeline.dataset_fingerprint` (its dataset_info.json:
    shard lengths, byte count, features), not by its path, so a moved copy resumes. With
    `allowed` (`--config.train.allow_dataset_change=True`) the new data is accepted; the
    checkpoint's norm stats are kept either way. A checkpoint without fingerprints (older
    format) is accepted with a warning.
    """
    if stored_fingerprints is None:
        logging.warning(
            "%s records no dataset fingerprint (older checkpoint): the dataset is not checked",
            where,
        )
        return
    if list(stored_fingerprints) == list(current_fingerprints) or allowed:
        return
    raise ValueError(
        f"cannot resume from {where}: it was trained on {stored_dirs} (fingerprint "
        f"{[f[:12] for f in stored_fingerprints]}), but this run reads {current_dirs} "
        f"(fingerprint {[f[:12] for f in current_fingerprints]}). Point data.dataset_dir at "
        "the original data, use a new --workdir, or pass "
        "--config.train.allow_dataset_change=True to continue training on the new data "
        "(normalized with the checkpoint's stats)."
    )


# ---------------------------------------------------------------------------- init_from


def fixed_for_init_from(key: str) -> bool:
    """Whether a fine-tuning run (`train.init_from`) must keep the source run's value."""
    return key.startswith("model.")


def check_init_from(stored: dict, current: dict, where: str) -> None:
    """Raises ValueError naming every `model.*` field where the run differs from the
    checkpoint it starts from."""
    differing = config_differences(stored, current, fixed_for_init_from)
    if differing:
        details = describe_differences(differing)
        raise ValueError(
            f"train.init_from={where}: the checkpoint's model differs from this run's: "
            f"{details}. Fine-tune with the checkpoint's model.* values."
        )


# ------------------------------------------------------------------------- distillation


def fixed_for_distillation(key: str, init_from_teacher: bool = False) -> bool:
    """Whether a student must keep its teacher's value of the dotted config `key` (the
    objective's family settings are compared by `check_distillation`)."""
    if key in DISTILLATION_DATA_KEYS:
        return True
    return init_from_teacher and key.startswith("model.") and key not in STUDENT_ONLY_MODEL_KEYS


def teacher_family_settings(objective: Mapping) -> dict:
    """The family settings a config's objective section states for its teacher's family
    (`parameterization`), with the family's defaults for the ones it leaves out
    (`objectives.family_settings`)."""
    family = objective["parameterization"] if "parameterization" in objective else None
    family = family or objective["name"]
    return objectives.family_settings(family, objective)


def check_distillation(teacher_config: dict, student_config: dict, where: str) -> None:
    """Raises ValueError naming every field where the student cannot follow the teacher.

    Args:
      teacher_config, student_config: config JSON dicts (stored and current).
      where: the teacher's checkpoint directory, for the message.
    """
    teacher_config = config_schema.complete(teacher_config)
    student_config = config_schema.complete(student_config)
    init = bool(student_config["train"]["init_from_teacher"])
    differing = config_differences(
        teacher_config, student_config, lambda k: fixed_for_distillation(k, init)
    )
    teacher_objective = teacher_config["objective"]
    student_objective = student_config["objective"]  # open: `parameterization` is consistency's
    family = (
        student_objective["parameterization"] if "parameterization" in student_objective else None
    )
    if family != teacher_objective["name"]:
        differing["objective.parameterization"] = (teacher_objective["name"], family)
    else:
        theirs = objectives.family_settings(family, teacher_objective)
        ours = teacher_family_settings(student_config["objective"])
        for key in sorted(theirs):
            if json.dumps(ours.get(key)) != json.dumps(theirs[key]):
                differing[f"objective.{key}"] = (theirs[key], ours.get(key))
    if differing:
        details = describe_differences(differing, "teacher ", "student ", arrow=", ")
        raise ValueError(
            f"the student cannot distill the teacher in {where}: {details}. The student "
            "keeps the teacher's horizons and normalization, names its objective in "
            "objective.parameterization with the same settings (time_convention included), "
            "and (init_from_teacher) its model."
        )

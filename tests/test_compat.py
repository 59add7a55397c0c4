"""The compatibility rules (action_gen/compat.py), field by field: what resume, init_from and
distillation each fix, and the refusals that name the fields."""

import ml_collections
import pytest

from action_gen import compat, objectives
from action_gen.train import teacher as teacher_lib

RESUME = {
    # model, objective (except sampling settings), lora: the parameters and what they mean
    "model.down_dims": True,
    "model.variant": True,
    "objective.prediction_type": True,
    "objective.time_convention": True,
    "objective.time_scale": True,
    "objective.sampler": False,
    "objective.num_sample_steps": False,
    "objective.clip_sample": False,
    "objective.num_candidates": False,
    "lora.rank": True,
    "lora.targets": True,
    # the train state's tree
    "optimizer.trainable": True,
    "optimizer.frozen_dtype": True,
    "optimizer.flatten": True,
    "optimizer.lr": False,
    "optimizer.warmup_steps": False,
    # the units of the model's inputs and outputs
    "data.obs_horizon": True,
    "data.action_horizon": True,
    "data.state_norm": True,
    "data.action_norm": True,
    "data.batch_size": False,
    "data.dataset_dir": False,
    "robot.name": True,
    "robot.joints": True,
    "robot.delta_action_dims": True,
    "robot.state_dims": True,
    "robot.action_dim": True,
    "robot.state": True,
    "robot.default_prompt": False,
    "robot.dataset": False,
    "train.num_steps": False,
    "eval.num_episodes": False,
    "seed": False,
}


@pytest.mark.parametrize("key", sorted(RESUME))
def test_resume_rule_field_by_field(key):
    assert compat.fixed_for_resume(key) is RESUME[key], key


def test_every_sampling_field_may_change_on_resume():
    for field in objectives.SAMPLING_FIELDS:
        assert not compat.fixed_for_resume(f"objective.{field}"), field


@pytest.mark.parametrize(
    "key, fixed",
    [("model.down_dims", True), ("model.variant", True), ("objective.name", False),
     ("lora.rank", False), ("optimizer.trainable", False), ("data.action_norm", False),
     ("robot.name", False)],
)  # fmt: skip
def test_init_from_rule_field_by_field(key, fixed):
    assert compat.fixed_for_init_from(key) is fixed


@pytest.mark.parametrize(
    "key, plain, init_from_teacher",
    [("data.obs_horizon", True, True), ("data.action_horizon", True, True),
     ("data.state_norm", True, True), ("data.action_norm", True, True),
     ("data.batch_size", False, False), ("model.down_dims", False, True),
     ("model.num_hypotheses", False, False), ("optimizer.trainable", False, False),
     ("objective.name", False, False)],
)  # fmt: skip
def test_distillation_rule_field_by_field(key, plain, init_from_teacher):
    assert compat.fixed_for_distillation(key) is plain
    assert compat.fixed_for_distillation(key, init_from_teacher=True) is init_from_teacher


def test_resume_refusal_names_each_field():
    stored = {"model": {"down_dims": [8]}, "optimizer": {"lr": 1e-3, "flatten": False}}
    current = {"model": {"down_dims": [16]}, "optimizer": {"lr": 3e-4, "flatten": True}}
    with pytest.raises(ValueError, match=r"model.down_dims: \[8\] -> \[16\], optimizer.flatten"):
        compat.check_resume(stored, current, "/ckpt", "use a new --workdir")
    # "" and None are one unset value (a section a newer config declares empty).
    compat.check_resume({"robot": {"name": ""}}, {}, "/ckpt", "")
    with pytest.raises(ValueError, match="robot.name"):
        compat.check_resume({"robot": {"name": "aloha"}}, {}, "/ckpt", "")


def test_init_from_refusal_names_the_model_fields():
    compat.check_init_from(
        {"model": {"a": 1}, "lora": {}}, {"model": {"a": 1}, "lora": {"r": 2}}, "s"
    )
    with pytest.raises(ValueError, match=r"train.init_from=src.*model.a: 1 -> 2"):
        compat.check_init_from({"model": {"a": 1}}, {"model": {"a": 2}}, "src")


def _teacher(**objective):
    return {"data": {"obs_horizon": 2, "action_horizon": 16, "state_norm": "minmax",
                     "action_norm": "minmax"},
            "model": {"name": "unet1d"}, "objective": {"name": "flow", **objective}}  # fmt: skip


def _student(**objective):
    config = _teacher()
    config["objective"] = {"name": "consistency", "parameterization": "flow", **objective}
    return config


def test_distillation_reads_the_teachers_family_settings():
    # The family's defaults stand in for settings a config leaves out.
    compat.check_distillation(_teacher(), _student(), "t")
    compat.check_distillation(_teacher(time_scale=100.0), _student(), "t")
    with pytest.raises(ValueError, match="objective.time_scale: teacher 1.0, student 100.0"):
        compat.check_distillation(_teacher(time_scale=1.0), _student(time_scale=100.0), "t")
    # An openpi-convention teacher is never read in mirrored time: refused unless stated...
    openpi = _teacher(time_scale=1.0, time_convention="noise_at_1")
    with pytest.raises(ValueError, match="time_convention: teacher 'noise_at_1'"):
        compat.check_distillation(openpi, _student(time_scale=1.0), "t")
    compat.check_distillation(openpi, _student(time_scale=1.0, time_convention="noise_at_1"), "t")
    # ... or inherited from the teacher's stored config (what the trainer does).
    student = ml_collections.ConfigDict(_student())
    teacher_lib.inherit_teacher_settings(student, openpi)
    assert student.objective.time_convention == "noise_at_1"
    assert student.objective.time_scale == 1.0
    compat.check_distillation(openpi, compat.config_to_json_dict(student), "t")
    # Other families and fixed data fields.
    with pytest.raises(ValueError, match="objective.parameterization: teacher 'flow'"):
        compat.check_distillation(_teacher(), _student(parameterization="diffusion"), "t")
    diffusion = _teacher()
    diffusion["objective"] = {"name": "diffusion", "schedule": "linear"}
    with pytest.raises(ValueError, match="objective.schedule: teacher 'linear'"):
        compat.check_distillation(diffusion, _student(parameterization="diffusion"), "t")
    shorter = _student()
    shorter["data"]["action_horizon"] = 8
    with pytest.raises(ValueError, match="data.action_horizon: teacher 16, student 8"):
        compat.check_distillation(_teacher(), shorter, "t")

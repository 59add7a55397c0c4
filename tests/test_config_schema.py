"""The config schema (action_gen/config_schema.py): every config in configs/ has every
declared field, a stored config lacking fields is completed with the defaults, misspelt
overrides still fail with "did you mean", and code in action_gen/ reads config fields as
attributes, never `.get(name, default)` on a config."""

import importlib.util
import json
import pathlib
import re

import ml_collections
import pytest

from action_gen import cli, config_schema, main

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Every config file with the variants its docstring lists ('' = no arg).
VARIANTS = {
    "ablation_obstacle": ["", "demo", "runlocal", "smoke", "runlocal,objective=tokens"],
    "consistency_pi0_obstacle": ["", "runlocal", "smoke", "runlocal,lora"],
    "diffusion_unet_aloha": ["", "task=insertion,image=96x128,cpu", "smoke", "chunk=100"],
    "flow_unet_aloha": ["", "state,cpu", "smoke"],
    "consistency_unet_metaworld": ["", "task=push,cpu", "runlocal", "teacher=diffusion"],
    "consistency_unet_obstacle": ["", "runlocal", "tiny", "smoke", "teacher=none"],
    "diffusion_unet_dataset": ["name=bridge", "smoke,name=bridge+taco_play"],
    "diffusion_unet_metaworld": ["", "task=push,cpu", "runlocal", "image=corner2:64,runlocal"],
    "diffusion_unet_obstacle": ["", "demo", "runlocal", "smoke"],
    "flow_pi0_obstacle": ["", "runlocal", "pi0", "smoke", "pi0,lora", "smoke,frozen_backbone"],
    "flow_pi0_openpi": ["pi0", "pi05,smoke", "pi0,robot=aloha,lora"],
    "flow_unet_metaworld": ["", "task=push,cpu", "runlocal"],
    "flow_unet_obstacle": ["", "demo", "runlocal", "smoke"],
    "regression_unet_metaworld": ["", "runlocal"],
    "regression_unet_obstacle": ["", "demo", "runlocal", "smoke"],
    "shortcut_unet_obstacle": ["", "demo", "runlocal", "smoke"],
}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(
        f"_schema_{name}", ROOT / "configs" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_config_file_is_covered():
    files = {p.stem for p in (ROOT / "configs").glob("*.py")} - {"__init__", "common"}
    assert files == set(VARIANTS)


@pytest.mark.parametrize(
    "name,arg", [(n, a) for n, args in VARIANTS.items() for a in args], ids=lambda v: v or "-"
)
def test_config_has_every_schema_field(name, arg):
    config = _load(name).get_config(arg) if arg else _load(name).get_config()
    assert config_schema.missing_fields(config) == []
    if "teacher" in config:
        assert config_schema.missing_fields(config.teacher) == []


def test_base_config_declares_each_field_once_with_a_meaning():
    config = config_schema.base_config()
    assert config_schema.missing_fields(config) == []
    for fields in [config_schema.TOP, *config_schema.SECTIONS.values()]:
        for key, field in fields.items():
            assert field.meaning.strip(), key
    text = config_schema.describe()
    assert "data.state_norm = 'minmax'  # " in text
    assert "train.ema_power = 0.75  # " in text


def test_complete_fills_an_old_stored_config():
    """A checkpoint's config from before the schema: sections and fields missing."""
    stored = json.loads(_load("diffusion_unet_obstacle").get_config("runlocal").to_json())
    del stored["robot"], stored["lora"], stored["mesh"]
    del stored["data"]["validate"], stored["data"]["prompt_format"], stored["eval"]["plot"]
    del stored["train"]["ema_power"], stored["optimizer"]["final_lr_fraction"]
    stored["teacher"] = {"data": {"batch_size": 3}, "train": {}}
    completed = config_schema.complete(stored)
    assert config_schema.missing_fields(completed) == []
    assert config_schema.missing_fields(completed["teacher"]) == []
    assert completed["data"]["validate"] is True
    assert completed["data"]["prompt_format"] == "plain"
    assert completed["train"]["ema_power"] == 0.75
    assert completed["optimizer"]["final_lr_fraction"] == 0.0
    assert completed["robot"]["name"] == "" and completed["lora"]["rank"] == 0
    assert completed["mesh"] == {"data": -1, "fsdp": 1, "rules": "fsdp", "fsdp_min_size": 65536}
    assert completed["teacher"]["data"]["batch_size"] == 3  # stored values are kept
    assert "validate" not in stored["data"]  # the stored dict itself is left as it was
    # The completed config reads as attributes, as the code does.
    config = ml_collections.ConfigDict(completed)
    assert config.data.state_norm == "minmax" and config.eval.record == ""


def test_complete_fills_a_config_dict_in_place():
    config = ml_collections.ConfigDict({"data": {"batch_size": 3}, "model": {"name": "unet1d"}})
    assert config_schema.complete(config) is config
    assert config.data.batch_size == 3 and config.data.split == "train"
    assert config.model.to_dict() == {"name": "unet1d"}  # open sections keep their fields


def test_a_misspelt_override_fails_with_did_you_mean():
    spec = "--config=configs/diffusion_unet_obstacle.py:runlocal"
    with pytest.raises(cli.UserError, match=r"did you mean data\.state_norm"):
        main.check_overrides(["main", spec, "--config.data.state_nrom=minmax"])
    with pytest.raises(cli.UserError, match=r"did you mean train\.ema_power"):
        main.check_overrides(["main", spec, "--config.train.ema_pwer=0.5"])
    main.check_overrides(["main", spec, "--config.eval.record_episodes=2"])  # a schema field


# `.get(` on a config-like receiver: a name containing config / cfg, alone or followed by
# attributes (`config.data.get(`, `data_config.get(`, `self.config.eval.get(`).
CONFIG_GET = re.compile(r"\b\w*(?:config|cfg)\w*(?:\.\w+)*\.get\(", re.IGNORECASE)


def config_get_calls(source: str) -> list[int]:
    """Line numbers of `.get(` calls on config-like receivers (comments ignored)."""
    return [
        i
        for i, line in enumerate(source.splitlines(), 1)
        if CONFIG_GET.search(line.split("#", 1)[0])
    ]


def test_the_scan_catches_a_new_fallback():
    assert config_get_calls('x = config.data.get("x", 1)\n') == [1]
    assert config_get_calls('x = 1\ny = data_config.get("mappings")\n') == [2]
    assert config_get_calls("n = self.config.eval.get('num_envs')\n") == [1]
    assert config_get_calls("n = cfg.get('a')\n") == [1]
    assert config_get_calls('x = config.data.state_norm  # not .get("x")\n') == []
    assert config_get_calls('v = request.get("prompt")\n') == []


def test_code_reads_config_fields_without_fallbacks():
    found = []
    for path in sorted((ROOT / "action_gen").rglob("*.py")):
        for line in config_get_calls(path.read_text()):
            found.append(f"{path.relative_to(ROOT)}:{line}")
    assert not found, (
        "config fields read with .get (declare the field in action_gen/config_schema.py and "
        f"read it as an attribute): {found}"
    )

"""The run config's schema: every field of every section, declared once with its default
and a one-line meaning. The files in configs/ start from `base_config()` and set what
differs; code reads the fields as attributes (`config.data.state_norm`), never with a
fallback, since every config has them all. A checkpoint's stored config written before a
field existed gets the field's default when it is loaded (`complete`), the one place
defaults are filled in.

Two sections are open: `model` and `objective` hold `name` (which model / objective) and
the keyword arguments of that module's constructor (action_gen/models) or that objective's
`loss` / `sample` (action_gen/objectives), whose defaults and meanings are there. `eval`
may also hold any objective sampling setting (objectives.SAMPLING_FIELDS, e.g.
`num_candidates`): it overrides the checkpoint's value in --mode=eval. `teacher`, when
present, is a distillation teacher's whole run config (configs/consistency_unet_obstacle.py).

`python -m action_gen.config_schema` prints every field ("section.field = default  #
meaning"). Imports only ml_collections and the standard library: config files load it
without JAX or TensorFlow.
"""

import copy
import json
from collections.abc import Mapping
from typing import Any, NamedTuple

import ml_collections


class Field(NamedTuple):
    default: Any
    meaning: str


# Top-level fields (not sections).
TOP = {
    "seed": Field(0, "the run's random seed (parameters, noise, data order)"),
}

SECTIONS: dict[str, dict[str, Field]] = {
    "data": {
        "dataset_dir": Field("", "the dataset's directory; '' = <workdir>/dataset"),
        "dataset_dirs": Field(None, "a mixture's directories, comma-separated, one per name"),
        "dataset_names": Field(
            None, "registered RLDS mapping name(s) (data/standardize.py); None / '' = native"
        ),
        "builtin_task": Field(
            "obstacle", "built-in task(s) whose demos are generated if missing ('' = none)"
        ),
        "num_demo_episodes": Field(200, "demos generated for a built-in task"),
        "demo_seed": Field(0, "base seed of the generated demos"),
        "demo_post_success_steps": Field(0, "expert steps kept past a demo's first success"),
        "obs_horizon": Field(2, "T, observation frames per sample"),
        "action_horizon": Field(16, "H, actions per predicted chunk"),
        "batch_size": Field(256, "global batch size"),
        "shuffle_buffer": Field(20_000, "windows in the shuffle buffer"),
        "state_norm": Field("minmax", "state normalization (data/normalize.py MODES)"),
        "action_norm": Field("minmax", "action normalization (data/normalize.py MODES)"),
        "weights": Field(None, "a mixture's sampling weights, one per dataset (None: equal)"),
        "split": Field("train", "the RLDS split read (or a TFDS slice 'train[:95%]')"),
        "mappings": Field(None, "{name: mapping} of datasets not in the registry"),
        "mapping_file": Field("", "a JSON file {name: mapping} of datasets of your own"),
        "image_size": Field((224, 224), "camera slots' (h, w) when data.cameras is empty"),
        "cameras": Field(None, "{camera: (h, w)} the model receives; None = no images"),
        "image_crop": Field(None, "(h, w) random crop in training; None = no crop"),
        "prompt_max_len": Field(0, "L, padded instruction tokens (0: no language input)"),
        "tokenizer": Field("bytes", "'bytes' or a SentencePiece .model file"),
        "prompt_format": Field("plain", "prompt text layout (data/tokenizer.py)"),
        "validate": Field(True, "check the dataset's episodes before training"),
        "loader": Field(
            "tfdata",
            "training stream: 'tfdata' (RLDS via tf.data) | 'memory' (one LeRobot dataset "
            "in RAM, no TensorFlow; data/memory.py)",
        ),
    },
    "optimizer": {
        "lr": Field(1e-4, "peak learning rate"),
        "warmup_steps": Field(500, "linear warmup steps, then cosine decay"),
        "b1": Field(0.95, "AdamW beta1"),
        "b2": Field(0.999, "AdamW beta2"),
        "eps": Field(1e-8, "AdamW epsilon"),
        "weight_decay": Field(1e-6, "AdamW weight decay"),
        "grad_clip_norm": Field(1.0, "global gradient-norm clip"),
        "final_lr_fraction": Field(0.0, "the cosine decay's end, a fraction of lr"),
        "flatten": Field(False, "optax.flatten: one fused update over all leaves"),
        "trainable": Field("", "regex over parameter paths that train; '' = every leaf"),
        "frozen_dtype": Field("", "dtype of the frozen leaves; '' = float32"),
    },
    "train": {
        "num_steps": Field(20_000, "training steps"),
        "log_every": Field(100, "steps between metric logs"),
        "checkpoint_every": Field(2_000, "steps between checkpoints"),
        "keep_checkpoints": Field(3, "checkpoints kept"),
        "async_checkpoints": Field(True, "write checkpoints in the background"),
        "allow_dataset_change": Field(
            False, "resume on data whose fingerprint differs from the checkpoint's"
        ),
        "ema_power": Field(0.75, "EMA warmup power: decay = 1 - (1 + step)^-power"),
        "ema_max_decay": Field(0.9999, "the EMA decay's ceiling"),
        "grad_accum_steps": Field(1, "micro-batches per update (divides batch_size)"),
        "compute_dtype": Field("float32", "float32 | bfloat16 (bf16 compute, fp32 weights)"),
        "remat": Field("none", "none | full | dots: recompute the forward in backward"),
        "init_from": Field("", "a run / checkpoint dir whose weights initialize this run"),
        "init_from_teacher": Field(False, "a distillation student starts at the teacher"),
    },
    "mesh": {
        "data": Field(-1, "data-parallel axis size (-1: the remaining devices)"),
        "fsdp": Field(1, "FSDP axis size (-1: the remaining devices)"),
        "rules": Field("fsdp", "logical-axis rule set (train/sharding.py RULE_SETS)"),
        "fsdp_min_size": Field(2**16, "params with fewer elements stay replicated"),
    },
    "eval": {
        "env": Field("obstacle", "env name (or a list: a multi-task policy); '' = none"),
        "num_episodes": Field(100, "episodes per env"),
        "num_envs": Field(0, "simulator instances (episodes run in rounds); 0 = one each"),
        "seed": Field(100_000, "episodes' base seed: 100000 dev, 200000 test (seed_splits.py)"),
        "obs_horizon": Field(2, "observation frames the policy reads"),
        "action_exec_horizon": Field(8, "Ta: actions executed of each chunk, then re-plan"),
        "temporal_ensemble_decay": Field(
            None, "m: ACT's temporal ensemble of all covering chunks, w_k ∝ exp(-m k); None = off"
        ),
        "num_sample_steps": Field(10, "sampling steps (overrides the checkpoint's)"),
        "clip_sample": Field(None, "clip the sampled chunk; None = the checkpoint's"),
        "use_ema": Field(True, "evaluate the EMA parameters"),
        "checkpoint_step": Field(-1, "the checkpoint step evaluated; -1 = the latest"),
        "plot": Field(True, "write rollouts.png (the obstacle plot)"),
        "max_steps": Field(None, "episode step limit; None = the env's own"),
        "record": Field("", "film episodes with camera 'name:size' ('' = no video)"),
        "record_episodes": Field(3, "episodes filmed per env when recording"),
    },
    "robot": {
        "name": Field("", "robot adapter (data/robots.py); '' = our own layout"),
        "cameras": Field("", "'slot=client key,...'; '' = the named robot's"),
        "optional_cameras": Field("", "'k1,k2': cameras a request may omit"),
        "image_layout": Field("", "hwc_or_chw | chw; '' = the named robot's"),
        "state": Field("", "'key1,key2': state parts, concatenated"),
        "state_dims": Field("", "'7,1': each state part's width"),
        "action_dim": Field(0, "the robot's action width; 0 = the named robot's"),
        "delta_action_dims": Field("", "'6,-1,6,-1': delta (+) / absolute (-) runs of dims"),
        "joints": Field("", "none | aloha_pi: joint convention"),
        "default_prompt": Field("", "text of a request / episode without an instruction"),
        "dataset": Field("", "'client key=dataset feature,...': where a dataset keeps each"),
    },
    "lora": {
        "rank": Field(0, "LoRA rank; 0 = no adapters (models/lora.py)"),
        "alpha": Field(16.0, "LoRA alpha: adapters scaled by alpha / rank"),
        "targets": Field(
            r"(backbone|expert)[^/]*/(q|kv|out|gate_up|down)/kernel$",
            "regex over kernel paths that get adapters",
        ),
    },
    # Open sections: `name` and the named module's / objective's keyword arguments.
    "model": {
        "name": Field("unet1d", "the model (models.MODELS); other fields: its constructor's"),
    },
    "objective": {
        "name": Field("diffusion", "the objective (objectives.OBJECTIVES); other fields: its"),
        "num_sample_steps": Field(10, "sampling steps of the trained model"),
    },
}
OPEN_SECTIONS = ("model", "objective", "eval")
TEACHER = "teacher"  # optional: a distillation teacher's whole run config


def _value(default):
    return copy.deepcopy(default)


def section(name: str, **values) -> ml_collections.ConfigDict:
    """Section `name` with every field at its default but those in `values` (declared
    fields of a closed section)."""
    fields = SECTIONS[name]
    unknown = sorted(set(values) - set(fields)) if name not in OPEN_SECTIONS else []
    if unknown:
        raise KeyError(f"{name} has no field(s) {unknown}; declared: {sorted(fields)}")
    return ml_collections.ConfigDict(
        {**{key: _value(field.default) for key, field in fields.items()}, **values}
    )


def base_config() -> ml_collections.ConfigDict:
    """Every field at its default (a diffusion U-Net on the built-in obstacle task)."""
    config = ml_collections.ConfigDict()
    for key, field in TOP.items():
        config[key] = _value(field.default)
    for name in SECTIONS:
        config[name] = section(name)
    return config


def complete(config):
    """`config` with every declared field it lacks at its default: a stored config (JSON
    dict: a new dict is returned) or a ConfigDict (filled in place and returned), and a
    `teacher` run config inside it. The one place defaults fill a missing field."""
    if isinstance(config, ml_collections.ConfigDict):
        with config.unlocked():
            _fill(config, ml_collections.ConfigDict)
        return config
    out = json.loads(json.dumps(dict(config)))
    _fill(out, dict)
    return out


def _fill(config, new_section) -> None:
    for key, field in TOP.items():
        if key not in config:
            config[key] = _value(field.default)
    for name, fields in SECTIONS.items():
        if name not in config or config[name] is None:
            config[name] = new_section()
        for key, field in fields.items():
            if key not in config[name]:
                config[name][key] = _value(field.default)
    if TEACHER in config and config[TEACHER] is not None:
        _fill(config[TEACHER], new_section)


def missing_fields(config: Mapping) -> list[str]:
    """Dotted names of the declared fields `config` lacks (empty for a complete config)."""
    out = [key for key in TOP if key not in config]
    for name, fields in SECTIONS.items():
        present = config[name] if name in config else {}
        out += [f"{name}.{key}" for key in fields if key not in present]
    return out


def describe() -> str:
    """Every field, one line each: "section.field = default  # meaning"."""
    lines = [f"{key} = {field.default!r}  # {field.meaning}" for key, field in TOP.items()]
    for name, fields in SECTIONS.items():
        open_note = "  (open section: see this module's docstring)" * (name in OPEN_SECTIONS)
        lines.append(f"\n[{name}]{open_note}")
        lines += [f"{name}.{k} = {f.default!r}  # {f.meaning}" for k, f in fields.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(describe())

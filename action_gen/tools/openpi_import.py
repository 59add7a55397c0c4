"""openpi π0 / π0.5 checkpoints → our self-describing checkpoint, and the proof they match.

  python -m action_gen.tools.openpi_import --openpi_checkpoint=SRC --workdir=DST [--asset_id=NAME]
  python -m action_gen.tools.openpi_import --compare=REF.npz --workdir=DST

Import. SRC is an openpi checkpoint directory: a released one (`SRC/params/`, an orbax PyTree
`{"params": {...}}` of float32 leaves, and `SRC/assets/<asset_id>/norm_stats.json`) or one
written during openpi training (`SRC/<step>/params/` with every leaf wrapped in a `value`
level by nnx, beside `train_state/` and `assets/`; the latest step is taken). The parameters
are renamed and reshaped by the declared table `param_rules` (openpi's einsum layouts →
our Dense kernels, e.g. `PaliGemma/llm/layers/attn/q_einsum/w` [depth, N, W, h] →
`layers/backbone/q/kernel` [depth, W, N*h]); LoRA leaves (`*_lora_a/b`) are merged into
their base weight (openpi's LoRA variants have alpha = rank: scale 1). The model's sizes are
read off the shapes and must be one of `models.pi0.SIZES`. The norm stats (openpi's NormStats:
mean, std, q01, q99) become our stats with openpi's 1e-6 folded in (std + 1e-6, q99 + 1e-6),
so our `meanstd` / `quantile` maps are openpi's z-score / quantile maps exactly; min / max
(which openpi does not keep) are set to q01 / q99. π0 normalizes with z-scores, π0.5 with
quantiles (openpi's defaults; `--norm` overrides).

Prompts. The config gets openpi's prompt format (`data.prompt_format`, data/tokenizer.py):
"openpi_pi0" for π0 (BOS + cleaned text + "\\n", 48 tokens), "openpi_pi05" for π0.5 ("Task:
..., State: <256-bin normalized state>;\\nAction: ", 200 tokens); `--prompt_format` overrides
(openpi_pi0 for a π0.5 trained with discrete_state_input=False). The ids are PaliGemma's only
with `--tokenizer=PATH/paligemma_tokenizer.model` (openpi's gs://big_vision file; nothing is
downloaded here; its absolute path is stored); without it prompts are byte ids, which only a
synthetic checkpoint can read (the summary then carries a warning).

DST receives `checkpoints/0/` with the config of `configs/flow_pi0_openpi.py` for the
detected model (every convention as a model / objective option), the parameters (as
`params` and `ema_params`; no optimizer state: fine-tune into a new workdir with
`--config.train.init_from=DST`), and the norm stats. `Policy.from_checkpoint(DST)` and
`--mode=serve --workdir=DST` use it unchanged. The backbone's final RMSNorm
(`PaliGemma/llm/final_norm`) is not imported: openpi applies it only to the prefix outputs,
which no action depends on.

Compare. REF.npz holds openpi-format model inputs (`image/<camera>` [B, 224, 224, 3] float
in [-1, 1], `image_mask/<camera>` [B], `state` [B, 32] (normalized, padded),
`tokenized_prompt` / `tokenized_prompt_mask` [B, L], `noise` [B, H, 32]) and openpi's
`sample_actions` output `actions` [B, H, 32] (optional `num_steps`, default 10). The
checkpoint's model and objective sample from the same noise (the objective's
`sample_from_noise`); one JSON line reports max_abs_error = max |ours - openpi| and
max_rel_error = max_abs_error / max |openpi|, and the exit status is 1 above `--tolerance`
(max_rel_error). Default tolerance 1e-4: both sides compute the same float32 function, but
with other operation orders (attention scale before / after the logits, RoPE and time
embedding formulas, XLA fusions), each rounding ~6e-8 relative; over 2 x depth layers and
10 Euler steps such differences grow to ~1e-6 .. 1e-5 of the actions' scale (measured
figures in BUILD_NOTES.md). A wrong convention (time direction, a transposed kernel, a
missing mask or scale) moves the actions by O(1).
"""

import dataclasses
import functools
import json
import os
import sys
from collections.abc import Callable

import numpy as np
from absl import app, flags

from action_gen import cli

VALUE = "value"  # nnx wraps each leaf of a training checkpoint in this level
LLM, IMG = "PaliGemma/llm", "PaliGemma/img"
_ENC = f"{IMG}/Transformer/encoderblock"
_MHA = f"{_ENC}/MultiHeadDotProductAttention_0"
# openpi leaves with no counterpart: the backbone's final norm only touches prefix outputs.
IGNORED = (f"{LLM}/final_norm/scale",)
CAMERAS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")  # openpi's IMAGE_KEYS
NORM_EPS = 1e-6  # openpi: (x - mean) / (std + 1e-6), (x - q01) / (q99 - q01 + 1e-6)
DEFAULT_TOLERANCE = 1e-4


# --------------------------------------------------------------------------- the mapping


@dataclasses.dataclass(frozen=True)
class Rule:
    """Our parameter `ours` is `kind`(openpi's leaves `openpi`) (see `_KINDS`)."""

    ours: str
    openpi: tuple[str, ...]
    kind: str = "same"


# kind -> (openpi arrays -> ours, ours -> openpi arrays). Shapes, d = depth:
#   q       [d, N, W, h] ↔ [d, W, N*h]          kv  [d, 2, K, W, h] ↔ [d, W, 2*K*h]
#   out     [d, N, h, W] ↔ [d, N*h, W]          gate_up [d, 2, W, F] ↔ [d, W, 2F]
#   patch   [p, p, 3, D] ↔ [p*p*3, D]           pos [1, N, D] ↔ [N, D]
#   vit_qkv 3 x [d, D, n, h] ↔ [d, D, 3*n*h]   vit_qkv_bias 3 x [d, n, h] ↔ [d, 3*n*h]
#   vit_out [d, n, h, D] ↔ [d, n*h, D]
def _q(a):
    (w,) = a
    d, n, width, h = w.shape
    return w.transpose(0, 2, 1, 3).reshape(d, width, n * h)


def _q_inv(x, s, xp):
    d, width, _ = x.shape
    return (x.reshape(d, width, s.num_heads, s.head_dim).transpose(0, 2, 1, 3),)


def _kv(a):
    (w,) = a
    d, two, k, width, h = w.shape
    return w.transpose(0, 3, 1, 2, 4).reshape(d, width, two * k * h)


def _kv_inv(x, s, xp):
    d, width, _ = x.shape
    return (x.reshape(d, width, 2, s.num_kv_heads, s.head_dim).transpose(0, 2, 3, 1, 4),)


def _out_inv(x, s, xp):
    d, _, width = x.shape
    return (x.reshape(d, s.num_heads, s.head_dim, width),)


def _gate_up(a):
    (w,) = a
    return np.concatenate([w[:, 0], w[:, 1]], axis=-1)


def _gate_up_inv(x, s, xp):
    g, u = xp.split(x, 2, axis=-1)
    return (xp.stack([g, u], axis=1),)


def _vit_heads(s):
    return s.vit_heads, s.vit_width // s.vit_heads


_KINDS: dict[str, tuple[Callable, Callable]] = {
    "same": (lambda a: a[0], lambda x, s, xp: (x,)),
    "q": (_q, _q_inv),
    "kv": (_kv, _kv_inv),
    "out": (lambda a: a[0].reshape(a[0].shape[0], -1, a[0].shape[-1]), _out_inv),
    "gate_up": (_gate_up, _gate_up_inv),
    "patch": (
        lambda a: a[0].reshape(-1, a[0].shape[-1]),
        lambda x, s, xp: (x.reshape(s.patch_size, s.patch_size, -1, x.shape[-1]),),
    ),
    "pos": (lambda a: a[0][0], lambda x, s, xp: (x[None],)),
    "vit_qkv": (
        lambda a: np.concatenate([w.reshape(*w.shape[:2], -1) for w in a], axis=-1),
        lambda x, s, xp: tuple(
            w.reshape(*w.shape[:2], *_vit_heads(s)) for w in xp.split(x, 3, axis=-1)
        ),
    ),
    "vit_qkv_bias": (
        lambda a: np.concatenate([b.reshape(b.shape[0], -1) for b in a], axis=-1),
        lambda x, s, xp: tuple(b.reshape(b.shape[0], *_vit_heads(s)) for b in xp.split(x, 3, -1)),
    ),
    "vit_out": (
        lambda a: a[0].reshape(a[0].shape[0], -1, a[0].shape[-1]),
        lambda x, s, xp: (x.reshape(x.shape[0], *_vit_heads(s), x.shape[-1]),),
    ),
}


def _dense(ours: str, theirs: str) -> list[Rule]:
    return [
        Rule(f"{ours}/kernel", (f"{theirs}/kernel",)),
        Rule(f"{ours}/bias", (f"{theirs}/bias",)),
    ]


def param_rules(pi05: bool) -> list[Rule]:
    """The declared mapping openpi → ours for π0 (`pi05=False`) or π0.5: one Rule per leaf
    of our parameter tree (every openpi leaf is used once, except `IGNORED`)."""
    rules = [
        Rule("vit/patch_embed/kernel", (f"{IMG}/embedding/kernel",), "patch"),
        Rule("vit/patch_embed/bias", (f"{IMG}/embedding/bias",)),
        Rule("vit/pos_embedding", (f"{IMG}/pos_embedding",), "pos"),
        Rule("vit/blocks/qkv/kernel",
             tuple(f"{_MHA}/{n}/kernel" for n in ("query", "key", "value")), "vit_qkv"),
        Rule("vit/blocks/qkv/bias",
             tuple(f"{_MHA}/{n}/bias" for n in ("query", "key", "value")), "vit_qkv_bias"),
        Rule("vit/blocks/out/kernel", (f"{_MHA}/out/kernel",), "vit_out"),
        Rule("vit/blocks/out/bias", (f"{_MHA}/out/bias",)),
        *_dense("vit/blocks/mlp_in", f"{_ENC}/MlpBlock_0/Dense_0"),
        *_dense("vit/blocks/mlp_out", f"{_ENC}/MlpBlock_0/Dense_1"),
        Rule("token_embedding/embedding", (f"{LLM}/embedder/input_embedding",)),
        *_dense("image_proj", f"{IMG}/head"),
        *_dense("action_in_proj", "action_in_proj"),
        *_dense("action_out", "action_out_proj"),
    ]  # fmt: skip
    for ours, theirs in (("ln_attn", "LayerNorm_0"), ("ln_mlp", "LayerNorm_1")):
        for p in ("scale", "bias"):
            rules.append(Rule(f"vit/blocks/{ours}/{p}", (f"{_ENC}/{theirs}/{p}",)))
    for p in ("scale", "bias"):
        rules.append(Rule(f"vit/ln_final/{p}", (f"{IMG}/Transformer/encoder_norm/{p}",)))
    layers = f"{LLM}/layers"
    for ours, sfx in (("backbone", ""), ("expert", "_1")):
        adaptive = pi05 and ours == "expert"
        rules += [
            Rule(f"layers/{ours}/q/kernel", (f"{layers}/attn/q_einsum{sfx}/w",), "q"),
            Rule(f"layers/{ours}/kv/kernel", (f"{layers}/attn/kv_einsum{sfx}/w",), "kv"),
            Rule(f"layers/{ours}/out/kernel", (f"{layers}/attn/attn_vec_einsum{sfx}/w",), "out"),
            Rule(f"layers/{ours}/gate_up/kernel", (f"{layers}/mlp{sfx}/gating_einsum",), "gate_up"),
            Rule(f"layers/{ours}/down/kernel", (f"{layers}/mlp{sfx}/linear",)),
        ]  # fmt: skip
        for norm, theirs in (("attn_norm", "pre_attention_norm"), ("mlp_norm", "pre_ffw_norm")):
            if adaptive:
                rules += _dense(
                    f"layers/{ours}/{norm}/modulation", f"{layers}/{theirs}{sfx}/Dense_0"
                )
            else:
                rules.append(
                    Rule(f"layers/{ours}/{norm}/scale", (f"{layers}/{theirs}{sfx}/scale",))
                )
    if pi05:
        rules += [
            *_dense("expert_norm/modulation", f"{LLM}/final_norm_1/Dense_0"),
            *_dense("time_mlp_in", "time_mlp_in"),
            *_dense("time_mlp_out", "time_mlp_out"),
        ]
    else:
        rules += [Rule("expert_norm/scale", (f"{LLM}/final_norm_1/scale",)),
                  *_dense("state_proj", "state_proj"),
                  *_dense("time_mlp_in", "action_time_mlp_in"),
                  *_dense("time_mlp_out", "action_time_mlp_out")]  # fmt: skip
    return rules


# --------------------------------------------------------------------------- reading


def locate_checkpoint(src: str) -> tuple[str, str]:
    """(params dir, assets dir) of an openpi checkpoint: SRC itself, SRC's params/ dir, or
    the latest numbered step of a training run's checkpoint directory."""
    src = os.path.abspath(src)
    if os.path.basename(src) == "params" and not os.path.isdir(os.path.join(src, "params")):
        src = os.path.dirname(src)
    if not os.path.isdir(os.path.join(src, "params")):
        steps = [int(n) for n in os.listdir(src) if n.isdigit()] if os.path.isdir(src) else []
        steps = [s for s in steps if os.path.isdir(os.path.join(src, str(s), "params"))]
        if not steps:
            raise FileNotFoundError(
                f"{src} is not an openpi checkpoint: no params/ directory (nor numbered steps "
                "holding one)"
            )
        src = os.path.join(src, str(max(steps)))
    return os.path.join(src, "params"), os.path.join(src, "assets")


def read_openpi_params(params_dir: str) -> tuple[dict[str, np.ndarray], bool]:
    """The `params` item of an openpi params/ directory as {"a/b/c": numpy array}, with the
    training checkpoints' `value` level removed; also whether it was there."""
    import jax  # noqa: PLC0415
    import orbax.checkpoint as ocp  # noqa: PLC0415
    from flax import traverse_util  # noqa: PLC0415

    with ocp.PyTreeCheckpointer() as ckptr:
        metadata = ckptr.metadata(params_dir)
        metadata = getattr(metadata, "item_metadata", metadata)  # orbax >= 0.12: StepMetadata
        tree = getattr(metadata, "tree", metadata)
        if "params" not in tree:
            raise ValueError(f"{params_dir}: no 'params' item (has {sorted(tree)})")
        item = {"params": tree["params"]}
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
        params = ckptr.restore(
            params_dir, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args)
        )["params"]
    flat = traverse_util.flatten_dict(params)
    wrapped = bool(flat) and all(k[-1] == VALUE for k in flat)
    if wrapped:
        flat = {k[:-1]: v for k, v in flat.items()}
    return {"/".join(k): np.asarray(v) for k, v in flat.items()}, wrapped


def merge_lora(flat: dict[str, np.ndarray], scale: float = 1.0) -> dict[str, np.ndarray]:
    """Folds openpi's LoRA leaves into their weights: w + scale * (a @ b), a [..., D, r],
    b [..., r, F] (`<name>_lora_a` for a parameter `<name>`, `lora_a` for an Einsum's `w`)."""
    out = dict(flat)
    for key in sorted(k for k in flat if k.endswith("lora_a")):
        b_key = key[: -len("lora_a")] + "lora_b"
        base = key[: -len("_lora_a")] if key.endswith("_lora_a") else key[: -len("lora_a")] + "w"
        if base not in flat or b_key not in flat:
            raise ValueError(f"LoRA leaf {key}: no {base} or {b_key} beside it")
        out[base] = flat[base] + scale * np.matmul(flat[key], flat[b_key])
        del out[key], out[b_key]
    return out


def detect_size(flat: dict[str, np.ndarray]):
    """(pi05, Pi0Size, action dim) read off the shapes of openpi's parameters."""
    from action_gen.models import pi0  # noqa: PLC0415

    def shape(key):
        if key not in flat:
            raise KeyError(f"openpi checkpoint has no parameter {key!r}")
        return flat[key].shape

    if f"{LLM}/layers/attn/qkv_einsum/w" in flat:
        raise ValueError("checkpoints with num_kv_heads == num_heads (qkv_einsum) are unsupported")
    depth, heads, width, head_dim = shape(f"{LLM}/layers/attn/q_einsum/w")
    expert_width = shape(f"{LLM}/layers/attn/q_einsum_1/w")[2]
    patch, _, _, vit_width = shape(f"{IMG}/embedding/kernel")
    n_patches = shape(f"{IMG}/pos_embedding")[1]
    vit_depth, _, vit_heads, _ = shape(f"{_MHA}/query/kernel")
    size = pi0.Pi0Size(
        width=width,
        depth=depth,
        mlp_dim=shape(f"{LLM}/layers/mlp/linear")[1],
        num_heads=heads,
        num_kv_heads=shape(f"{LLM}/layers/attn/kv_einsum/w")[2],
        head_dim=head_dim,
        expert_width=expert_width,
        expert_mlp_dim=shape(f"{LLM}/layers/mlp_1/linear")[1],
        vocab_size=shape(f"{LLM}/embedder/input_embedding")[0],
        vit_width=vit_width,
        vit_depth=vit_depth,
        vit_mlp_dim=shape(f"{_ENC}/MlpBlock_0/Dense_0/kernel")[-1],
        vit_heads=vit_heads,
        patch_size=patch,
        image_size=int(round(n_patches**0.5)) * patch,
    )
    pi05 = "time_mlp_in/kernel" in flat and "state_proj/kernel" not in flat
    return pi05, size, shape("action_in_proj/kernel")[0]


def variant_of(size) -> str:
    """The name of `size` in models.pi0.SIZES (a clear error when it has none)."""
    from action_gen.models import pi0  # noqa: PLC0415

    for name, known in pi0.SIZES.items():
        if known == size:
            return name
    raise ValueError(
        f"the checkpoint's sizes {size} are none of models.pi0.SIZES ({sorted(pi0.SIZES)}); "
        "add a named size there"
    )


def to_ours(flat: dict[str, np.ndarray], pi05: bool) -> dict:
    """openpi's flat parameters → our nested parameter tree (numpy, float32)."""
    from flax import traverse_util  # noqa: PLC0415

    out, used = {}, set(IGNORED)
    for rule in param_rules(pi05):
        missing = [k for k in rule.openpi if k not in flat]
        if missing:
            raise KeyError(f"openpi checkpoint has no parameter(s) {missing} (for {rule.ours})")
        out[rule.ours] = np.asarray(_KINDS[rule.kind][0]([flat[k] for k in rule.openpi]),
                                    np.float32)  # fmt: skip
        used.update(rule.openpi)
    unused = sorted(set(flat) - used)
    if unused:
        raise ValueError(f"openpi parameters with no counterpart in our π0: {unused}")
    return traverse_util.unflatten_dict(out, sep="/")


def to_openpi(params: dict, pi05: bool, size, xp=np) -> dict[str, np.ndarray]:
    """The inverse of `to_ours`: our parameters in openpi's flat layout (the backbone's
    final norm, which `to_ours` drops, as zeros). Used to write checkpoints in openpi's
    layout for tests; `xp=jax.numpy` traces it (e.g. under `jax.eval_shape`)."""
    from flax import traverse_util  # noqa: PLC0415

    ours = dict(traverse_util.flatten_dict(params, sep="/"))
    flat = {}
    for rule in param_rules(pi05):
        arrays = _KINDS[rule.kind][1](ours.pop(rule.ours), size, xp)
        flat.update(zip(rule.openpi, arrays, strict=True))
    if ours:
        raise ValueError(f"parameters with no openpi counterpart: {sorted(ours)}")
    flat[IGNORED[0]] = xp.zeros((size.width,), np.float32)
    return flat


# --------------------------------------------------------------------------- norm stats


def read_openpi_norm_stats(assets_dir: str, asset_id: str | None) -> tuple[dict, str]:
    """(openpi's {"state": {...}, "actions": {...}} stats, asset id) from
    `<assets>/<asset_id>/norm_stats.json` (the only asset when `asset_id` is None)."""
    if asset_id is None:
        found = sorted(
            os.path.relpath(root, assets_dir)
            for root, _, files in os.walk(assets_dir)
            if "norm_stats.json" in files  # ids may hold a "/" (physical-intelligence/libero)
        )
        if len(found) != 1:
            raise ValueError(
                f"{assets_dir}: pass --asset_id, one of {found}" if found
                else f"{assets_dir}: no <asset_id>/norm_stats.json"
            )  # fmt: skip
        asset_id = found[0]
    path = os.path.join(assets_dir, asset_id, "norm_stats.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"openpi norm stats not found: {path}")
    with open(path) as f:
        data = json.load(f)
    stats = data.get("norm_stats", data)
    for feature in ("state", "actions"):
        if feature not in stats:
            raise ValueError(f"{path}: no {feature!r} stats (has {sorted(stats)})")
    return stats, asset_id


def convert_norm_stats(openpi_stats: dict, source: str = "") -> dict:
    """openpi NormStats → our stats (data/normalize.py) with openpi's epsilon folded in:
    std' = std + 1e-6 and q99' = q99 + 1e-6, so that our meanstd map (x - mean) / std' and
    quantile map 2 (x - q01) / (q99' - q01) - 1 are openpi's exactly; min / max = q01 / q99'
    (openpi keeps no extremes), count 0 (unknown)."""
    out = {}
    for feature in ("state", "actions"):
        s = {
            k: np.asarray(v, np.float64) for k, v in openpi_stats[feature].items() if v is not None
        }
        missing = [k for k in ("mean", "std") if k not in s]
        if missing:
            raise ValueError(f"{source}: {feature} stats lack {missing}")
        q01 = s.get("q01", s["mean"] - 3 * s["std"])
        q99 = s.get("q99", s["mean"] + 3 * s["std"]) + NORM_EPS
        out[feature] = {
            "mean": s["mean"].tolist(),
            "std": (s["std"] + NORM_EPS).tolist(),
            "q01": q01.tolist(),
            "q99": q99.tolist(),
            "min": q01.tolist(),
            "max": q99.tolist(),
            "count": 0,
        }
    out["_source"] = {"openpi_norm_stats": source, "epsilon_folded_in": NORM_EPS}
    return out


# --------------------------------------------------------------------------- import


def import_checkpoint(
    src: str,
    workdir: str,
    *,
    asset_id: str | None = None,
    action_horizon: int = 50,
    norm: str | None = None,
    tokenizer: str = "bytes",
    max_token_len: int | None = None,
    lora_scale: float = 1.0,
    prompt_format: str | None = None,
    robot: str | None = None,
    default_prompt: str | None = None,
    delta_action_dims: str | None = None,
) -> dict:
    """Writes SRC's parameters and norm stats as our checkpoint in `workdir` (module
    docstring); returns a summary (model variant, config arg, counts).

    With `robot` (a data/robots.py adapter name: libero, aloha, aloha_sim, droid), the
    checkpoint serves that robot's openpi client unchanged (`--mode=serve`), with
    `default_prompt` for requests without one and `delta_action_dims` overriding the
    adapter's delta actions (openpi notation "6,-1"; "none" for none)."""
    import jax  # noqa: PLC0415
    from flax import traverse_util  # noqa: PLC0415

    from action_gen import checkpoint, compat, models  # noqa: PLC0415
    from action_gen import run as run_lib  # noqa: PLC0415
    from action_gen.data import normalize, robots, spec, transforms  # noqa: PLC0415
    from action_gen.train.state import TrainState  # noqa: PLC0415
    from configs import flow_pi0_openpi  # noqa: PLC0415

    if robot and robot not in robots.ROBOTS:
        raise ValueError(
            f"--robot={robot!r} is not one of {sorted(robots.ROBOTS)} (a robot of your own: "
            "import without --robot, then declare config.robot in a config file)"
        )
    params_dir, assets_dir = locate_checkpoint(src)
    flat, wrapped = read_openpi_params(params_dir)
    flat = merge_lora(flat, lora_scale)
    pi05, size, action_dim = detect_size(flat)
    variant = variant_of(size)
    openpi_stats, asset_id = read_openpi_norm_stats(assets_dir, asset_id)
    norm_stats = convert_norm_stats(openpi_stats, os.path.join(assets_dir, asset_id))
    normalize.validate_norm_stats(norm_stats, source=f"{assets_dir}/{asset_id}")
    arg = [("pi05" if pi05 else "pi0"), f"variant={variant}", f"horizon={action_horizon}"]
    arg += [f"norm={norm}"] if norm else []
    if tokenizer not in ("", "bytes"):
        tokenizer = os.path.abspath(tokenizer)
        if "," in tokenizer:
            raise ValueError(f"--tokenizer path must not contain ',': {tokenizer}")
        arg += [f"tokenizer={tokenizer}"]
    arg += [f"max_token_len={max_token_len}"] if max_token_len else []
    arg += [f"prompt_format={prompt_format}"] if prompt_format else []
    arg += [f"robot={robot}"] if robot else []
    config = flow_pi0_openpi.get_config(",".join(arg))
    if default_prompt:
        config.robot.default_prompt = default_prompt
    if delta_action_dims:
        config.robot.delta_action_dims = delta_action_dims
    adapter = transforms.robot_of(config)  # the named robot exists, its fields are valid
    if adapter is not None:
        widths = normalize.feature_dims(norm_stats)
        if widths[0] < adapter.state_dim or widths[1] < adapter.action_dim:
            raise ValueError(
                f"{assets_dir}/{asset_id}: norm stats of (state, action) widths {widths} are "
                f"narrower than robot {robot!r}'s ({adapter.state_dim}, {adapter.action_dim}); "
                "pass the --asset_id of this robot's stats"
            )
    tok = transforms.create_prompt_tokenizer(config)  # the file loads; the format is known
    transforms.prompt_format(config)
    vocab = size.vocab_size  # the embedding table read off the checkpoint
    if tok.vocab_size > vocab:
        raise ValueError(f"--tokenizer={tokenizer} has {tok.vocab_size} ids; the model {vocab}")
    if action_dim != config.model.action_dim:
        raise ValueError(
            f"action_in_proj takes {action_dim} dims; expected {config.model.action_dim}"
        )

    params = to_ours(flat, pi05)
    # Check against the tree our model builds for this config (paths, shapes), abstractly.
    model = models.create_model(config.model)
    state_dim, _ = normalize.feature_dims(norm_stats)
    example = spec.example_observation(spec.observation_spec(config.data, state_dim))
    abstract = models.abstract_params(model, example, (action_horizon, config.model.action_dim))
    want = {k: v.shape for k, v in traverse_util.flatten_dict(abstract, sep="/").items()}
    got = {k: v.shape for k, v in traverse_util.flatten_dict(params, sep="/").items()}
    if want != got:
        diff = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
        raise ValueError(
            f"imported parameters do not fit our π0 ({variant}): "
            + ", ".join(f"{k}: ours {want.get(k)} vs imported {got.get(k)}" for k in diff[:10])
        )

    os.makedirs(workdir, exist_ok=True)
    manager = run_lib.create_manager(workdir, max_to_keep=None, async_save=False)
    if manager.latest_step() is not None:
        raise FileExistsError(f"{workdir} already holds a checkpoint; import into a new workdir")
    # numpy leaves: orbax writes them as they are (no device copy of a 3 B-parameter tree).
    state = TrainState(step=np.zeros((), np.int32), params=params, ema_params=params, opt_state=())
    checkpoint.save_checkpoint(
        manager,
        0,
        state,
        config=compat.config_to_json_dict(config),
        norm_stats=norm_stats,
        data_state=run_lib.DataState(
            batches_consumed=0, seed=0, imported_from=os.path.abspath(src)
        ).to_json(),
        force=True,
    )
    manager.wait_until_finished()
    manager.close()
    return {
        "workdir": os.path.abspath(workdir),
        "openpi_params": params_dir,
        "value_level": wrapped,
        "asset_id": asset_id,
        "model": "pi05" if pi05 else "pi0",
        "variant": variant,
        "config": f"configs/flow_pi0_openpi.py:{','.join(arg)}",
        "num_params": int(sum(v.size for v in jax.tree.leaves(params))),
        "state_norm": config.data.state_norm,
        "prompt_format": config.data.prompt_format,
        "prompt_max_len": config.data.prompt_max_len,
        "tokenizer": config.data.tokenizer,
        "robot": robot or None,
        "default_prompt": config.robot.default_prompt or None,
        "delta_action_dims": list(adapter.delta_action_dims) if adapter is not None else None,
        "serve": f"python -m action_gen.main --mode=serve --workdir={os.path.abspath(workdir)}",
        **(
            {"warning": "no --tokenizer: prompts are byte ids, not PaliGemma's"}
            if tok.name == "bytes"
            else {}
        ),
    }


# --------------------------------------------------------------------------- compare


def reference_observation(ref) -> dict:
    """Our model's observation from REF.npz's openpi-format inputs (T = 1)."""
    from action_gen.data import schema  # noqa: PLC0415

    state = np.asarray(ref["state"], np.float32)
    obs = {schema.OBS_STATE: state[:, None]}
    for name in CAMERAS:
        if f"image/{name}" in ref:
            obs[schema.image_key(name)] = np.asarray(ref[f"image/{name}"], np.float32)[:, None]
            obs[schema.image_mask_key(name)] = np.asarray(ref[f"image_mask/{name}"], bool)
    if "tokenized_prompt" in ref:
        obs[schema.PROMPT_TOKENS] = np.asarray(ref["tokenized_prompt"], np.int32)
        obs[schema.PROMPT_MASK] = np.asarray(ref["tokenized_prompt_mask"], bool)
    return obs


@functools.cache
def load_policy(workdir: str):
    """`Policy.from_checkpoint(workdir)`, once per process."""
    from action_gen.sample.policy import Policy  # noqa: PLC0415

    return Policy.from_checkpoint(workdir)


@functools.cache
def _noise_sampler(policy, num_steps: int):
    """The jitted `(params, obs, noise) -> actions` of the policy's model and objective."""
    import jax  # noqa: PLC0415

    from action_gen import models  # noqa: PLC0415

    apply_fn = models.make_apply_fn(policy.model)
    return jax.jit(
        lambda p, o, n: policy.objective.sample_from_noise(
            apply_fn, p, o, jax.random.key(0), num_steps, n
        )
    )


def sample_reference(ref: dict, policy, num_steps: int) -> np.ndarray:
    """The policy's model and objective sampled from REF's inputs and `noise` [B, H, A]
    (normalized, padded actions [B, H, A], as openpi's `sample_actions` returns them)."""
    if policy.objective.sample_from_noise is None:
        raise ValueError(f"the {policy.objective.name!r} objective cannot sample from noise")
    noise = np.asarray(ref["noise"], np.float32)
    if noise.shape[1:] != (policy.action_horizon, policy.model_action_dim):
        raise ValueError(
            f"noise {noise.shape} is not [B, H={policy.action_horizon}, "
            f"A={policy.model_action_dim}] of the checkpoint"
        )
    sample = _noise_sampler(policy, int(num_steps))
    return np.asarray(sample(policy.params, reference_observation(ref), noise))


def reference_request(ref: dict):
    """The robot client's dict of a `Policy.infer` reference: `obs_json` with its array
    leaves ("@leaf_<k>") taken from the file (docs/openpi_reference/make_policy_ref.py)."""

    def walk(node):
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, str) and node.startswith("@leaf_"):
            return ref[node[1:]]
        return node

    return walk(json.loads(str(ref["obs_json"])))


def compare(ref_path: str, workdir: str, tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """Our actions from REF.npz's inputs and noise vs openpi's (module docstring).

    Two kinds of reference: model inputs (`state`, `image/<cam>`, tokens; openpi's
    `sample_actions`), or a robot client's dict (`obs_json` + leaves; openpi's
    `Policy.infer(obs, noise=)`), which our Policy answers through its robot adapter and
    transform pipeline (`Policy.infer`)."""
    with np.load(ref_path) as data:
        ref = dict(data)
    policy_ref = "obs_json" in ref
    for key in ("noise", "actions") + (() if policy_ref else ("state",)):
        if key not in ref:
            raise KeyError(f"{ref_path} has no {key!r} (has {sorted(ref)})")
    num_steps = int(ref.get("num_steps", 10))
    policy = load_policy(os.path.abspath(workdir))
    if policy_ref:
        if policy.num_sample_steps != num_steps:
            raise ValueError(
                f"{ref_path}: {num_steps} steps; the policy samples {policy.num_sample_steps}"
            )
        ours = policy.infer(reference_request(ref), noise=np.asarray(ref["noise"]))["actions"]
    else:
        ours = sample_reference(ref, policy, num_steps)
    theirs = np.asarray(ref["actions"], np.float32)
    if ours.shape != theirs.shape:
        raise ValueError(f"our actions {ours.shape} vs openpi's {theirs.shape} in {ref_path}")
    err = np.abs(ours - theirs)
    max_abs = float(err.max())
    max_rel = max_abs / max(float(np.abs(theirs).max()), 1e-12)
    return {
        "max_abs_error": max_abs,
        "max_rel_error": max_rel,
        "mean_abs_error": float(err.mean()),
        "max_abs_openpi": float(np.abs(theirs).max()),
        "tolerance": tolerance,
        "passed": bool(max_rel <= tolerance),
        "shape": list(ours.shape),
        "num_steps": num_steps,
        "reference": os.path.abspath(ref_path),
        "workdir": os.path.abspath(workdir),
    }


# --------------------------------------------------------------------------- command line


def _command_line_flags() -> flags.FlagValues:
    """This command's flags, in their own FlagValues: importing the module defines nothing
    global (action_gen.main defines --workdir too, and both are imported by tests)."""
    fv = flags.FlagValues()
    flags.DEFINE_string(
        "openpi_checkpoint", None, "openpi checkpoint directory to import.", flag_values=fv
    )
    flags.DEFINE_string("workdir", None, "Our run directory (written / compared).", flag_values=fv)
    flags.DEFINE_string("asset_id", None, "assets/<asset_id> of the norm stats.", flag_values=fv)
    flags.DEFINE_string("compare", None, "REF.npz: compare the workdir's actions.", flag_values=fv)
    flags.DEFINE_float(
        "tolerance", DEFAULT_TOLERANCE, "compare: largest max_rel_error.", flag_values=fv
    )
    flags.DEFINE_integer("action_horizon", 50, "Action horizon H (openpi: 50).", flag_values=fv)
    flags.DEFINE_enum(
        "norm", None, ["meanstd", "quantile"], "Override the norm mode.", flag_values=fv
    )
    flags.DEFINE_string("tokenizer", "bytes", "PaliGemma SentencePiece model file.", flag_values=fv)
    flags.DEFINE_integer("max_token_len", None, "Prompt length (48 π0, 200 π0.5).", flag_values=fv)
    flags.DEFINE_float("lora_scale", 1.0, "alpha / rank of merged LoRA leaves.", flag_values=fv)
    flags.DEFINE_enum(
        "prompt_format",
        None,
        ["openpi_pi0", "openpi_pi05", "plain"],
        "Override the prompt format.",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "robot",
        None,
        "Serve this robot's openpi client dict: libero, aloha, aloha_sim, droid.",
        flag_values=fv,
    )
    flags.DEFINE_string("default_prompt", None, "Prompt of a request without one.", flag_values=fv)
    flags.DEFINE_string(
        "delta_action_dims",
        None,
        "Override the robot's delta actions, openpi notation: 6,-1 (pi0_libero); none.",
        flag_values=fv,
    )
    return fv


def main(argv: list[str]) -> None:
    """`argv` as sys.argv (program name first). Prints one JSON line; in --compare mode
    exits 0 when max_rel_error <= --tolerance, else 1."""
    fv = _command_line_flags()
    if any(a in ("--help", "-h", "--helpshort", "--helpfull") for a in argv[1:]):
        print(__doc__.split("\n\n")[0] + "\n")
        print(fv.get_help())
        print("  --[no]verbose: the traceback of a user error (or ACTION_GEN_VERBOSE=1)")
        return
    try:
        rest = fv(cli.strip_verbose(argv))
    except flags.Error as e:
        raise app.UsageError(str(e)) from e
    if len(rest) > 1:
        raise app.UsageError(f"unexpected arguments: {rest[1:]}")
    if not fv.workdir or bool(fv.openpi_checkpoint) == bool(fv.compare):
        raise app.UsageError("pass --workdir and exactly one of --openpi_checkpoint, --compare")
    if fv.compare:
        result = compare(fv.compare, fv.workdir, fv.tolerance)
        print(json.dumps(result), flush=True)
        sys.exit(0 if result["passed"] else 1)
    result = import_checkpoint(
        fv.openpi_checkpoint,
        fv.workdir,
        asset_id=fv.asset_id,
        action_horizon=fv.action_horizon,
        norm=fv.norm,
        tokenizer=fv.tokenizer,
        max_token_len=fv.max_token_len,
        lora_scale=fv.lora_scale,
        prompt_format=fv.prompt_format,
        robot=fv.robot,
        default_prompt=fv.default_prompt,
        delta_action_dims=fv.delta_action_dims,
    )
    print(json.dumps(result), flush=True)


def entry_point() -> None:
    """`python -m action_gen.tools.openpi_import` / `action-gen-import-openpi`."""
    cli.quiet_logs()
    cli.run_command(lambda: main(sys.argv))


if __name__ == "__main__":
    entry_point()

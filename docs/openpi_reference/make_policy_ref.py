"""Reference `Policy.infer` outputs made with openpi's own code for openpi's robot configs.

Runs only in openpi's own venv, outside this repository (never imported by the project).

Venv (openpi @15a9616, its pyproject pins, CPU only; lerobot / gym-aloha / wandb not needed):
  git -C /work/.mirror/Physical-Intelligence+openpi/repo archive HEAD | tar -x -C /tmp/openpi_src
  python3.11 -m venv /tmp/openpi_env
  /tmp/openpi_env/bin/pip install "jax==0.5.3" "jaxlib==0.5.3" "flax==0.10.2" \
    "orbax-checkpoint==0.11.13" "ml-dtypes==0.4.1" "tensorstore==0.1.74" "jaxtyping==0.2.36" \
    "ml_collections==1.0.0" "numpy>=1.22.4,<2.0.0" "beartype==0.19.0" "chex==0.1.90" \
    "transformers==4.53.2" "torch==2.13.0" augmax dm-tree einops equinox flatbuffers \
    "fsspec[gcs]" imageio numpydantic opencv-python-headless pillow sentencepiece tqdm-loggable \
    typing-extensions tyro filelock treescope rich polars /tmp/openpi_src/packages/openpi-client
  (torch 2.13.0 is the local CPU wheel; openpi pins 2.7.1, only imported, never run here.)
Run (about 10 min on 2 cores, 6 GB of memory, 3 GB of checkpoints):
  cd /tmp && PYTHONPATH=/tmp/openpi_src/src JAX_PLATFORMS=cpu \
    nice -n 10 /tmp/openpi_env/bin/python \
    /work/main/docs/openpi_reference/make_policy_ref.py --out=/tmp/openpi_policy_ref
  (add --check_only=1 to only re-check the REF files already written)

What it does: for π0 and π0.5 (openpi's smallest model: dummy Gemma for both experts,
So400m/14, float32), openpi's own init at a fixed seed, every leaf then perturbed by 0.02·N(0, 1)
(openpi zero-initialises several leaves), saved in the released layout
`<out>/ckpt_<family>/params` (orbax `{"params": pure dict}`, no "value" level) with
`<out>/ckpt_<family>/assets/<asset_id>/norm_stats.json` written by `openpi.shared.normalize.save`
(random but realistic stats from sampled robot states; some WIDER than the robot state). Then, per
case, the named TrainConfig with its model replaced by `dataclasses.replace(model,
paligemma_variant="dummy", action_expert_variant="dummy", dtype="float32")`,
`create_trained_policy(cfg, ckpt, default_prompt=...)` and `policy.infer(obs, noise=noise)` on
client dicts shaped as openpi's example clients send them.

Monkeypatched (openpi's files are not edited):
- `sys.modules["openpi.training.data_loader"]`: empty module (it imports lerobot; checkpoints.py
  needs it only for annotations).
- `openpi.shared.download.maybe_download`: the PaliGemma tokenizer URL (gs://big_vision/...)
  maps to a local SentencePiece model built here (110 pieces, PaliGemma's special ids pad 0 /
  eos 1 / bos 2 / unk 3, "\\n" a piece, digits split); every other path goes to openpi's function.
- `openpi.models.model.restore_params`: called with dtype=None instead of create_trained_policy's
  bfloat16, so the float32 checkpoint stays float32. Every transform is as openpi builds it.

Each `REF_<case>_<i>.npz`: obs_json (client dict, array leaves as "@leaf_<k>"), leaf_<k>, noise
[H, 32] f32, actions (openpi's infer output), meta_json, and debug/* (openpi's input transforms'
output: state, tokenized_prompt(_mask), image/<cam>, image_mask/<cam>; and what the output
transforms received: debug/out_in/state, debug/out_in/actions = the model's raw sample).
"""

# ruff: noqa: E402  (openpi imports follow the data_loader stub)
import argparse
import copy
import dataclasses
import io
import json
import pathlib
import sys
import types

sys.modules["openpi.training.data_loader"] = types.ModuleType("openpi.training.data_loader")

import jax
import numpy as np
import orbax.checkpoint as ocp
import sentencepiece as spm
from flax import nnx
from openpi.models import model as _model
from openpi.models import pi0_config
from openpi.policies import aloha_policy, policy_config
from openpi.shared import download
from openpi.shared import normalize as _normalize
from openpi.training import config as _config

OPENPI_COMMIT = "15a9616a00943ada6c20a0f158e3adb39df2ccac"
TOKENIZER_URL = "gs://big_vision/paligemma_tokenizer.model"
PROMPTS = [
    "put both the alphabet soup and the tomato sauce in the basket",
    "open_the top drawer\n",
    "pick up the marker and put it in the cup",
    "Close the drawer ",
]

# case -> (openpi config, default_prompt given to create_trained_policy, client, client kwargs)
CASES = {
    "pi0_libero": ("pi0_libero", None, "libero", {}),
    "pi05_libero": ("pi05_libero", None, "libero", {}),
    "pi0_aloha": ("pi0_aloha", "fold the towel", "aloha", {}),
    "pi0_aloha_sim": ("pi0_aloha_sim", None, "aloha_sim", {}),
    "pi0_droid": ("pi0_droid", None, "droid", {}),
    "pi05_droid": ("pi05_droid", None, "droid", {}),
    "pi0_libero_resize": ("pi0_libero", None, "libero", {"hw": (256, 256), "wrist_hw": (200, 300)}),
    "pi0_aloha_resize": ("pi0_aloha", "fold the towel", "aloha", {"hw": (480, 640)}),
}
# config -> widths of the stats written for (state, actions); wider than the robot where > its dim.
STATS_WIDTH = {
    "pi0_libero": (32, 32),
    "pi05_libero": (32, 32),
    "pi0_aloha": (14, 32),
    "pi0_aloha_sim": (14, 14),
    "pi0_droid": (8, 8),
    "pi05_droid": (8, 8),
}
ROBOT = {
    "libero": (8, 7),
    "aloha": (14, 14),
    "aloha_sim": (14, 14),
    "droid": (8, 8),
}  # state, action dims


def build_tokenizer(path: pathlib.Path):
    corpus = [
        "Task: pick up the cup, State: 0 12 128 255 -1;",
        "Action: ",
        "go around the left of the obstacle",
        "Pick up the fork and put it in the bowl",
        "0 1 2 3 4 5 6 7 8 9",
        "open the drawer, close the_door",
        "fold the towel",
        "Transfer cube",
        *PROMPTS,
    ]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus * 5),
        model_writer=buf,
        vocab_size=110,
        model_type="bpe",
        minloglevel=2,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        user_defined_symbols=["\n"],
        split_digits=True,
        num_threads=1,
    )
    path.write_bytes(buf.getvalue())


def patch_openpi(tokenizer_path: pathlib.Path):
    orig_download, orig_restore = download.maybe_download, _model.restore_params
    download.maybe_download = lambda url, **kw: (
        tokenizer_path if str(url) == TOKENIZER_URL else orig_download(url, **kw)
    )
    _model.restore_params = lambda path, **kw: orig_restore(path, **{**kw, "dtype": None})


def model_config(name):
    cfg = _config.get_config(name)
    model = dataclasses.replace(
        cfg.model, paligemma_variant="dummy", action_expert_variant="dummy", dtype="float32"
    )
    return dataclasses.replace(cfg, model=model)


# ---- client observations, as openpi's example clients send them ----
def sample_state(client, rng, n):
    """Robot states in the client's space, [n, dim] float64."""
    u = lambda lo, hi, k: rng.uniform(lo, hi, (n, k))  # noqa: E731
    if client == "libero":  # eef pos, axis-angle, gripper qpos (2)
        q = u(0.0, 0.04, 1)
        return np.concatenate(
            [u(-0.25, 0.25, 2), u(0.85, 1.25, 1), u(-3.0, 3.0, 3), q, -q + u(-1e-3, 1e-3, 1)], 1
        )
    if client in ("aloha", "aloha_sim"):  # per arm: 6 joints (rad), gripper in [0, 1]
        arm = lambda: np.concatenate([u(-1.5, 1.5, 6), u(0.0, 1.0, 1)], 1)  # noqa: E731
        return np.concatenate([arm(), arm()], 1)
    return np.concatenate([u(-2.0, 2.0, 7), u(0.0, 1.0, 1)], 1)  # droid: 7 joints, gripper


def model_space_state(client, states):
    """What openpi's Normalize sees (AlohaInputs flips joints and maps grippers to angles)."""
    if client in ("aloha", "aloha_sim"):
        return np.stack([aloha_policy._decode_state(s.copy(), adapt_to_pi=True) for s in states])
    return states


def make_obs(client, rng, i, hw=(224, 224), wrist_hw=None):
    img = lambda shape: rng.integers(0, 256, shape, dtype=np.uint8)  # noqa: E731
    state = sample_state(client, rng, 1)[0].astype(np.float32 if i == 1 else np.float64)
    prompt = PROMPTS[(i + (client == "droid") * 2) % len(PROMPTS)]
    if client == "libero":  # examples/libero/main.py: HWC uint8, state float64 [8]
        return {
            "observation/image": img((*hw, 3)),
            "observation/wrist_image": img((*(wrist_hw or hw), 3)),
            "observation/state": state,
            "prompt": prompt,
        }
    if client == "aloha":  # examples/aloha_real/env.py: CHW uint8 cameras, qpos [14], no prompt
        cams = ("cam_high", "cam_left_wrist", "cam_right_wrist")
        return {"state": state, "images": {c: img((3, *hw)) for c in cams}}
    if client == "aloha_sim":  # examples/aloha_sim/env.py: cam_high only, CHW 3x224x224
        return {"state": state, "images": {"cam_high": img((3, *hw))}}
    return {
        "observation/exterior_image_1_left": img((*hw, 3)),
        "observation/wrist_image_left": img((*hw, 3)),
        "observation/joint_position": state[:7],
        "observation/gripper_position": state[7:],
        "prompt": prompt,
    }


def obs_to_json(obs, leaves):
    def walk(x):
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, np.ndarray):
            leaves.append(x)
            return f"@leaf_{len(leaves) - 1}"
        assert isinstance(x, str), type(x)
        return x

    return json.dumps(walk(obs))


def obs_from_npz(z):
    def walk(x):
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items()}
        return z[x[1:]] if x.startswith("@leaf_") else x

    return walk(json.loads(str(z["obs_json"])))


# ---- checkpoints ----
def save_checkpoint(ckpt: pathlib.Path, pi05: bool, seed: int):
    model = pi0_config.Pi0Config(
        dtype="float32", paligemma_variant="dummy", action_expert_variant="dummy", pi05=pi05
    ).create(jax.random.key(seed))
    pure = nnx.state(model).to_pure_dict()
    leaves, treedef = jax.tree.flatten(pure)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [
        np.asarray(x + 0.02 * jax.random.normal(k, x.shape, x.dtype))
        for x, k in zip(leaves, keys, strict=True)
    ]
    with ocp.PyTreeCheckpointer() as ckptr:
        ckptr.save(
            (ckpt / "params").resolve(), {"params": jax.tree.unflatten(treedef, leaves)}, force=True
        )


def stats_from(x):
    return _normalize.NormStats(
        mean=x.mean(0), std=x.std(0), q01=np.quantile(x, 0.01, 0), q99=np.quantile(x, 0.99, 0)
    )


def save_stats(assets: pathlib.Path, client, widths, rng):
    n = 4000
    state = model_space_state(client, sample_state(client, rng, n))
    extra = lambda k: rng.normal(rng.normal(0, 0.5, k), rng.uniform(0.2, 2.0, k), (n, k))  # noqa: E731
    state = np.concatenate([state, extra(widths[0] - state.shape[1])], 1)
    actions = extra(widths[1])
    _normalize.save(assets, {"state": stats_from(state), "actions": stats_from(actions)})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/openpi_policy_ref")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check_only", type=int, default=0)
    args = ap.parse_args()
    out = pathlib.Path(args.out).resolve()
    if args.check_only:
        return check(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = out / "tokenizer.model"
    build_tokenizer(tok)
    patch_openpi(tok)

    configs = {name: model_config(name) for name, *_ in CASES.values()}
    family = {name: "pi05" if c.model.pi05 else "pi0" for name, c in configs.items()}
    asset_id = {name: c.data.create(c.assets_dirs, c.model).asset_id for name, c in configs.items()}
    client_of = {CASES[case][0]: CASES[case][2] for case in CASES}
    rng = np.random.default_rng(args.seed)
    for fam in sorted(set(family.values())):
        save_checkpoint(out / f"ckpt_{fam}", fam == "pi05", args.seed)
        print("saved", fam, flush=True)
    for name in configs:
        save_stats(
            out / f"ckpt_{family[name]}" / "assets" / asset_id[name],
            client_of[name],
            STATS_WIDTH[name],
            rng,
        )

    policy_keys = sorted({(c[0], c[1]) for c in CASES.values()}, key=str)
    for cfg_name, default_prompt in policy_keys:
        cfg = configs[cfg_name]
        ckpt = out / f"ckpt_{family[cfg_name]}"
        policy = policy_config.create_trained_policy(cfg, ckpt, default_prompt=default_prompt)
        seen, orig_out = tap_output_transform(policy)
        for case_idx, (case, (name, dp, client, kw)) in enumerate(CASES.items()):
            if (name, dp) != (cfg_name, default_prompt):
                continue
            for i in range(2):
                r = np.random.default_rng(1000 * case_idx + i)
                obs = make_obs(client, r, i, **kw)
                noise = r.standard_normal((cfg.model.action_horizon, cfg.model.action_dim)).astype(
                    np.float32
                )
                leaves = []
                obs_json = obs_to_json(obs, leaves)
                before = copy.deepcopy(obs)
                model_in = jax.tree.map(np.asarray, policy._input_transform(copy.deepcopy(obs)))
                actions = policy.infer(obs, noise=noise)["actions"]
                assert all(jax.tree.leaves(jax.tree.map(np.array_equal, before, obs))), (
                    "infer changed obs"
                )
                meta = {
                    "case": case,
                    "config": cfg_name,
                    "pi05": cfg.model.pi05,
                    "action_horizon": cfg.model.action_horizon,
                    "action_dim": cfg.model.action_dim,
                    "max_token_len": cfg.model.max_token_len,
                    "discrete_state_input": cfg.model.discrete_state_input,
                    "num_steps": 10,
                    "asset_id": asset_id[cfg_name],
                    "default_prompt": default_prompt,
                    "config_default_prompt": getattr(cfg.data, "default_prompt", None),
                    "checkpoint_dir": str(ckpt),
                    "tokenizer": str(tok),
                    "openpi_commit": OPENPI_COMMIT,
                    "robot_state_dim": ROBOT[client][0],
                    "robot_action_dim": ROBOT[client][1],
                    "stats_width": {
                        "state": STATS_WIDTH[cfg_name][0],
                        "actions": STATS_WIDTH[cfg_name][1],
                    },
                    "stats_wider_than_state": STATS_WIDTH[cfg_name][0] > ROBOT[client][0],
                    "use_quantile_norm": cfg.model.model_type != _model.ModelType.PI0,
                    "input_transforms": [
                        type(t).__name__ for t in policy._input_transform.transforms
                    ],
                    "output_transforms": [type(t).__name__ for t in orig_out.transforms],
                    "params_dtype": "float32",
                    "model_dtype": "float32",
                    "jax": jax.__version__,
                }
                arrays = {f"leaf_{k}": v for k, v in enumerate(leaves)}
                arrays.update({f"debug/{k}": v for k, v in _flatten(model_in).items()})
                arrays.update({f"debug/out_in/{k}": np.asarray(v) for k, v in seen.items()})
                path = out / f"REF_{case}_{i}.npz"
                np.savez(
                    path,
                    obs_json=np.array(obs_json),
                    meta_json=np.array(json.dumps(meta)),
                    noise=noise,
                    actions=actions,
                    **arrays,
                )
                # The file alone reproduces openpi's output.
                with np.load(path) as z:
                    again = policy.infer(obs_from_npz(z), noise=z["noise"])["actions"]
                assert np.array_equal(again, actions), case
                print(
                    path.name,
                    actions.shape,
                    actions.dtype,
                    float(np.abs(actions).mean()),
                    flush=True,
                )
        del policy
    check(out)


def tap_output_transform(policy):
    """Records what the output transforms receive: the model's raw sample and the model's state."""
    seen, orig = {}, policy._output_transform

    def tapped(data):
        seen.clear()
        seen.update(copy.deepcopy(data))
        return orig(data)

    policy._output_transform = tapped
    return seen, orig


def _flatten(tree, prefix=""):
    flat = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}/"))
        else:
            flat[prefix + k] = np.asarray(v)
    return flat


def check(out: pathlib.Path):
    rows = []
    for case in CASES:
        acts = []
        for i in range(2):
            with np.load(out / f"REF_{case}_{i}.npz") as z:
                meta = json.loads(str(z["meta_json"]))
                obs = obs_from_npz(z)
                a = z["actions"]
                assert a.shape == (meta["action_horizon"], meta["robot_action_dim"]), (
                    case,
                    a.shape,
                )
                assert (
                    z["noise"].shape == (meta["action_horizon"], 32)
                    and z["noise"].dtype == np.float32
                )
                assert np.isfinite(a).all(), case
                acts.append(a)
        assert not np.allclose(acts[0], acts[1]), case
        shapes = {
            k: (v.shape, str(v.dtype)) if isinstance(v, np.ndarray) else v
            for k, v in _flatten(obs).items()
            if k != "prompt"
        }
        rows.append(
            (
                case,
                meta["config"],
                str(a.shape),
                str(a.dtype),
                meta["asset_id"],
                meta["stats_wider_than_state"],
                shapes,
            )
        )
    for r in rows:
        print(*r, sep=" | ")
    print("ok", 2 * len(rows), "REF files")


if __name__ == "__main__":
    main()

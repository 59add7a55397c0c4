"""Reference π0 / π0.5 checkpoints and actions made with openpi's own code (outside the repo).

  PYTHONPATH=/tmp/openpi_src/src JAX_PLATFORMS=cpu venv/bin/python make_ref.py --pi05=0 --out=/tmp/openpi_ref/pi0

Writes, for openpi's smallest config (gemma variant "dummy" for PaliGemma and the expert,
SigLIP So400m/14 at 224², float32), randomly initialised with a fixed seed and then every
leaf perturbed (openpi zero-initialises adaRMS modulations, RMSNorm scales and the SigLIP
head, which would hide conventions):
  <out>/train/<step>/{params,train_state,assets/<asset>/norm_stats.json}  openpi's save_state
  <out>/released/{params,assets/<asset>/norm_stats.json}                 params without "value"
  <out>/REF.npz  the model inputs (openpi format) and openpi's sample_actions, 10 steps.
"""

import argparse
import dataclasses
import json
import pathlib
import sys
import types

# openpi.training.checkpoints imports data_loader (lerobot, not installed here) only for a type
# annotation (`from __future__ import annotations`): a stub module stands in for it.
sys.modules["openpi.training.data_loader"] = types.ModuleType("openpi.training.data_loader")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
from flax import nnx  # noqa: E402

from openpi.models import model as _model  # noqa: E402
from openpi.models import pi0_config  # noqa: E402
from openpi.shared import normalize as _normalize  # noqa: E402
from openpi.training import checkpoints as _checkpoints  # noqa: E402
from openpi.training import utils as training_utils  # noqa: E402

ASSET = "synthetic_robot"


class _FakeLoader:
    """What save_state asks of a data loader: its data config's norm stats and asset id."""

    def __init__(self, norm_stats):
        self._cfg = types.SimpleNamespace(norm_stats=norm_stats, asset_id=ASSET)

    def data_config(self):
        return self._cfg


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pi05", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=2)
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    config = pi0_config.Pi0Config(
        dtype="float32", paligemma_variant="dummy", action_expert_variant="dummy",
        pi05=bool(args.pi05),
    )
    model = config.create(jax.random.key(args.seed))
    graphdef, state = nnx.split(model)
    pure = state.to_pure_dict()
    leaves, treedef = jax.tree.flatten(pure)
    keys = jax.random.split(jax.random.key(args.seed + 1), len(leaves))
    leaves = [
        np.asarray(x + 0.02 * jax.random.normal(k, x.shape, x.dtype)) for x, k in zip(leaves, keys)
    ]
    pure = jax.tree.unflatten(treedef, leaves)
    state.replace_by_pure_dict(pure)
    model = nnx.merge(graphdef, state)

    rng = np.random.default_rng(args.seed)
    b, state_dim, action_dim = args.batch, 8, 7
    stats = lambda d: _normalize.NormStats(  # noqa: E731
        mean=rng.normal(size=d), std=rng.uniform(0.5, 2.0, d),
        q01=rng.uniform(-3, -1, d), q99=rng.uniform(1, 3, d),
    )
    norm_stats = {"state": stats(state_dim), "actions": stats(action_dim)}

    # openpi's own save code, training layout (every leaf under a "value" level).
    params_state = nnx.state(model)
    train_state = training_utils.TrainState(
        step=0, params=params_state, model_def=nnx.graphdef(model), opt_state=optax.sgd(1e-3).init(params_state),
        tx=optax.sgd(1e-3), ema_decay=None, ema_params=None,
    )
    mngr, _ = _checkpoints.initialize_checkpoint_dir(
        out / "train", keep_period=None, overwrite=True, resume=False
    )
    _checkpoints.save_state(mngr, train_state, _FakeLoader(norm_stats), step=1)
    mngr.wait_until_finished()
    # Released layout: params as a pure dict (no "value"), float32, and the assets.
    with ocp.PyTreeCheckpointer() as ckptr:
        ckptr.save((out / "released" / "params").resolve(), {"params": pure}, force=True)
    _normalize.save(out / "released" / "assets" / ASSET, norm_stats)
    # openpi's own restore reads both back to the same pure dict.
    for d in (out / "train" / "1" / "params", out / "released" / "params"):
        back = _model.restore_params(d, restore_type=np.ndarray)
        same = jax.tree.map(lambda a, c: bool(np.array_equal(a, c)), back, pure)
        assert all(jax.tree.leaves(same)), d

    names = _model.IMAGE_KEYS
    images = {n: rng.uniform(-1, 1, (b, 224, 224, 3)).astype(np.float32) for n in names}
    masks = {n: np.ones(b, bool) for n in names}
    masks["left_wrist_0_rgb"][-1] = False  # a missing camera in the last sample
    st = np.zeros((b, config.action_dim), np.float32)
    st[:, :state_dim] = rng.uniform(-1, 1, (b, state_dim))  # normalized, zero-padded to 32
    length = config.max_token_len
    tokens = np.zeros((b, length), np.int32)
    tmask = np.zeros((b, length), bool)
    for i in range(b):
        n = 12 + 7 * i
        tokens[i, :n] = rng.integers(1, 257_152, n)
        tmask[i, :n] = True
    noise = rng.normal(size=(b, config.action_horizon, config.action_dim)).astype(np.float32)
    # Camera dict in a scrambled order: openpi uses IMAGE_KEYS' order whatever the dict's.
    order = [names[2], names[0], names[1]]
    obs = _model.Observation.from_dict({
        "image": {n: jnp.asarray(images[n]) for n in order},
        "image_mask": {n: jnp.asarray(masks[n]) for n in order},
        "state": jnp.asarray(st), "tokenized_prompt": jnp.asarray(tokens),
        "tokenized_prompt_mask": jnp.asarray(tmask),
    })

    @nnx.jit
    def sample(model, obs, noise):
        return model.sample_actions(jax.random.key(0), obs, num_steps=10, noise=noise)

    actions = np.asarray(sample(model, obs, jnp.asarray(noise)))
    ref = {f"image/{n}": images[n] for n in names}
    ref.update({f"image_mask/{n}": masks[n] for n in names})
    ref.update(state=st, tokenized_prompt=tokens, tokenized_prompt_mask=tmask, noise=noise,
               actions=actions, num_steps=np.int32(10))
    np.savez(out / "REF.npz", **ref)
    print(json.dumps({"out": str(out), "pi05": bool(args.pi05), "actions_abs_mean": float(np.abs(actions).mean()),
                      "jax": jax.__version__, "config": dataclasses.asdict(config) | {"pytorch_compile_mode": None}},
                     default=str))


if __name__ == "__main__":
    main()

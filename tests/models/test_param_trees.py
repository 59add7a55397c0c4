"""Checkpoints keep restoring: every model's parameter tree (paths, shapes, dtypes, logical
axes) equals the one recorded in param_trees.json.

A refactor of the layers must not rename, reshape or re-annotate a parameter: orbax restores
by path and shape, and the sharding rules read the axis names. The trees are computed with
`jax.eval_shape` (nothing is compiled or run), at the tiny sizes, with the optional inputs
(cameras, instruction tokens) that add submodules.

An intended change of a tree breaks every saved checkpoint of that model; after making
one, rewrite the record with `python -m tests.models.test_param_trees` and say so in the
commit.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import pytest
from flax import traverse_util

from action_gen import models
from action_gen.data import schema, tokenizer

RECORD = pathlib.Path(__file__).with_name("param_trees.json")
IMAGE = dict(
    image_features=8, num_keypoints=4, resnet_width=8, resnet_blocks=(1, 1), image_crop=(12, 12)
)
UNET = {"name": "unet1d", "down_dims": (16, 32), "time_embed_dim": 16}
DPT = {"name": "transformer", "embed_dim": 32, "num_layers": 2, "num_heads": 4}
PI0 = {"name": "pi0", "variant": "tiny", "action_dim": 3}
UNET_PROMPT = {**UNET, "n_groups": 4, "instruction_features": 16}
TOKEN_HEAD = {"name": "token_head", "num_bins": 16, "embed_dim": 32, "num_layers": 2}
# name -> (model config, observation has a camera image of this size (0: none), has a
# prompt, action shape (H, A)).
CASES = {
    "unet1d": (UNET, 0, False, (16, 2)),
    "unet1d_image_prompt": ({**UNET_PROMPT, **IMAGE}, 16, True, (16, 2)),
    "transformer": (DPT, 0, False, (8, 2)),
    "transformer_image_prompt": ({**DPT, **IMAGE}, 16, True, (8, 2)),
    "pi0": (PI0, 32, True, (4, 3)),
    "pi0_adarms": ({**PI0, "time_conditioning": "adarms"}, 32, True, (4, 3)),
    "token_head": (TOKEN_HEAD, 0, False, (4, 2)),
}


def _observation(image_size: int, prompt: bool, batch=2, horizon=2, state_dim=5) -> dict:
    obs = models.example_observation(horizon, state_dim, batch)
    if image_size:
        shape = (batch, horizon, image_size, image_size, 3)
        obs[schema.image_key("front")] = jnp.zeros(shape, jnp.uint8)
    if prompt:
        tokens, mask = tokenizer.tokenize(["open the drawer"] * batch, 16)
        obs[schema.PROMPT_TOKENS], obs[schema.PROMPT_MASK] = jnp.asarray(tokens), mask
    return obs


def describe(case: str) -> dict[str, list]:
    """'path/to/param' -> [shape, dtype, logical axes] of the case's parameters."""
    config, image_size, prompt, action_shape = CASES[case]
    model = models.create_model(config)
    obs = _observation(image_size, prompt)
    params = jax.eval_shape(
        lambda key: models.init_params(model, key, obs, action_shape), jax.random.key(0)
    )
    axes = models.param_logical_axes(model, obs, action_shape)
    flat = traverse_util.flatten_dict(params, sep="/")
    flat_axes = traverse_util.flatten_dict(axes, sep="/")
    return {
        path: [list(leaf.shape), str(leaf.dtype), list(flat_axes[path])]
        for path, leaf in sorted(flat.items())
    }


def test_every_model_has_a_case():
    assert {config["name"] for config, *_ in CASES.values()} == set(models.MODELS)


@pytest.mark.parametrize("case", sorted(CASES))
def test_param_tree_matches_record(case):
    want = json.loads(RECORD.read_text())[case]
    got = describe(case)
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    assert not missing and not extra, f"{case}: missing {missing}, new {extra}"
    changed = {p: (want[p], got[p]) for p in want if want[p] != got[p]}
    assert not changed, f"{case}: [shape, dtype, axes] (recorded, now): {changed}"


def _write_record():
    cases = []  # one parameter per line: a changed tree reads as a short diff
    for case in sorted(CASES):
        rows = ",\n".join(
            f"    {json.dumps(p)}: {json.dumps(v)}" for p, v in describe(case).items()
        )
        cases.append(f"  {json.dumps(case)}: {{\n{rows}\n  }}")
    RECORD.write_text("{\n" + ",\n".join(cases) + "\n}\n")
    print(f"wrote {RECORD}")


if __name__ == "__main__":
    _write_record()

"""The instruction encoder and language-conditioned U-Net / DP-T (multi-task policies)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from action_gen import models
from action_gen.data import schema, tokenizer, transforms
from action_gen.models import text
from tests.models.model_contract import check_model_contract

TINY_UNET = {
    "name": "unet1d",
    "down_dims": (16, 32),
    "time_embed_dim": 16,
    "n_groups": 4,
    "instruction_features": 16,
}
TINY_DPT = {"name": "transformer", "embed_dim": 32, "num_layers": 1, "num_heads": 4}
PROMPTS = ["push the puck to the goal", "open the drawer", "close the drawer"]


def _obs(prompts=PROMPTS, max_len=32, horizon=2, state_dim=5):
    tokens, mask = tokenizer.tokenize(prompts, max_len)
    rng = np.random.default_rng(0)
    batch = len(prompts)
    return {
        schema.OBS_STATE: jnp.asarray(rng.normal(size=(batch, horizon, state_dim)), jnp.float32),
        schema.OBS_PAD_MASK: jnp.ones((batch, horizon), bool),
        schema.PROMPT_TOKENS: jnp.asarray(tokens),
        schema.PROMPT_MASK: jnp.asarray(mask),
    }


def test_encoder_ignores_padding_and_separates_prompts():
    obs = _obs()
    tokens, mask = obs[schema.PROMPT_TOKENS], obs[schema.PROMPT_MASK]
    encoder = text.InstructionEncoder(vocab_size=tokenizer.VOCAB_SIZE, features=16)
    params = encoder.init(jax.random.key(0), tokens, mask)
    out = encoder.apply(params, tokens, mask)
    assert out.shape == (3, 16) and bool(jnp.all(jnp.isfinite(out)))
    # Different instructions, different embeddings.
    assert not np.allclose(out[1], out[2], atol=1e-4)
    # Whatever sits in the padded positions is never read.
    garbage = jnp.where(mask, tokens, 77)
    np.testing.assert_allclose(encoder.apply(params, garbage, mask), out, rtol=1e-5, atol=1e-6)
    # An empty prompt (all masked) stays finite.
    empty = encoder.apply(params, tokens, jnp.zeros_like(mask))
    assert bool(jnp.all(jnp.isfinite(empty)))


@pytest.mark.parametrize("config", [TINY_UNET, TINY_DPT], ids=["unet1d", "transformer"])
def test_language_conditioned_models(config):
    """Both denoisers meet the model contract with prompt tokens, read them (the output
    changes with the instruction), and have no instruction parameters without them."""
    obs = _obs()
    _, params, out = check_model_contract(config, obs, objective_names=("diffusion",))
    assert "instruction_encoder" in params
    model = models.create_model(ml_collections.ConfigDict(config))
    apply_fn = jax.jit(models.make_apply_fn(model))
    x = jax.random.normal(jax.random.key(1), out.shape)
    t = jnp.full((out.shape[0],), 10.0)
    swapped = _obs(prompts=[PROMPTS[1], PROMPTS[2], PROMPTS[0]])
    changed = apply_fn(params, swapped, x, t)
    same = apply_fn(params, obs, x, t)
    for i in range(3):
        assert not np.allclose(changed[i], same[i], atol=1e-5)
    no_prompt = {
        k: v for k, v in obs.items() if k not in (schema.PROMPT_TOKENS, schema.PROMPT_MASK)
    }
    plain = models.init_params(model, jax.random.key(0), no_prompt, out.shape[1:])
    assert "instruction_encoder" not in plain


def test_tokenizer_larger_than_embedding_table_is_rejected():
    config = ml_collections.ConfigDict(
        {"data": {"prompt_max_len": 16, "tokenizer": "bytes"}, "model": {"vocab_size": 100}}
    )
    with pytest.raises(ValueError, match="model.vocab_size=100"):
        transforms.create_prompt_tokenizer(config)

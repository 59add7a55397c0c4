"""The model contract, for every model in `models.MODELS` at its tiny size.

`model.apply({"params": params}, obs, x, t)` with obs state [B, T, S], x [B, H, A], t [B]:
[B, H, A] float32 and finite (the token head: logits [B, H, A, V]); the same with and
without jit (chex variants); same seed, same parameters and output; one compilation per
input shape; and a wrong input layout is refused at the model's boundary
(`layers.check_model_inputs`), by name, before any computation.

The objectives' side of the contract (losses, samplers) is tests/objectives/test_contract.py;
tests/models/model_contract.py runs both on the models' optional inputs (images, prompts).
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

from action_gen import models
from action_gen.data import schema

B, T, S, H, A = 2, 2, 5, 8, 2
NUM_BINS = 16
TINY = {
    "unet1d": {"name": "unet1d", "down_dims": (16, 32), "time_embed_dim": 16},
    "transformer": {"name": "transformer", "embed_dim": 32, "num_layers": 1, "num_heads": 4},
    "pi0": {"name": "pi0", "variant": "tiny", "action_dim": A},
    "token_head": {"name": "token_head", "num_bins": NUM_BINS, "embed_dim": 32, "num_layers": 1},
}
# π0 without a camera runs an empty prefix: give it one image (the tiny ViT's 32 x 32).
IMAGE_SIZE = {"pi0": 32}
NAMED = [(name, name) for name in sorted(TINY)]


def _inputs(name: str, seed: int = 0):
    """(obs, x, t) for `name`; the token head's x holds bin indices as floats."""
    rng = np.random.default_rng(seed)
    obs = {
        schema.OBS_STATE: jnp.asarray(rng.normal(size=(B, T, S)), jnp.float32),
        schema.OBS_PAD_MASK: jnp.ones((B, T), bool),
    }
    if name in IMAGE_SIZE:
        size = IMAGE_SIZE[name]
        obs[schema.image_key("front")] = jnp.asarray(
            rng.integers(0, 256, (B, T, size, size, 3)), jnp.uint8
        )
    if name == "token_head":
        x = jnp.asarray(rng.integers(0, NUM_BINS, (B, H, A)), jnp.float32)
    else:
        x = jnp.asarray(rng.normal(size=(B, H, A)), jnp.float32)
    t = jnp.asarray(rng.uniform(0.0, 99.0, B), jnp.float32)
    return obs, x, t


def _output_shape(name: str) -> tuple[int, ...]:
    return (B, H, A, NUM_BINS) if name == "token_head" else (B, H, A)


@functools.cache
def _model_and_params(name: str):
    model = models.create_model(TINY[name])
    obs, _, _ = _inputs(name)
    return model, models.init_params(model, jax.random.key(0), obs, (H, A))


def _apply(model):
    return lambda params, obs, x, t: model.apply({"params": params}, obs, x, t)


@functools.cache
def _jitted(name: str):
    """The jitted apply, allowed one trace for the life of the test module."""
    model, _ = _model_and_params(name)
    apply = _apply(model)
    # assert_max_traces counts per name and source: one count per model.
    apply.__name__ = f"apply_{name}"
    return jax.jit(chex.assert_max_traces(apply, n=1))


@functools.cache
def _reference(name: str) -> np.ndarray:
    _, params = _model_and_params(name)
    return np.asarray(_jitted(name)(params, *_inputs(name)))


class ModelContractTest(chex.TestCase):
    def test_every_model_is_covered(self):
        self.assertEqual(set(TINY), set(models.MODELS))

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*NAMED)
    def test_output_shape_dtype_and_jit_equals_eager(self, name):
        model, params = _model_and_params(name)
        out = self.variant(_apply(model))(params, *_inputs(name))
        chex.assert_shape(out, _output_shape(name))
        chex.assert_type(out, jnp.float32)
        chex.assert_tree_all_finite(out)
        # Compiled and op-by-op execution fuse differently: equal up to float error.
        chex.assert_trees_all_close(out, _reference(name), rtol=1e-5, atol=1e-5)

    @parameterized.named_parameters(*NAMED)
    def test_same_seed_same_parameters_and_output(self, name):
        model, params = _model_and_params(name)
        obs, x, t = _inputs(name)
        chex.assert_trees_all_equal(
            models.init_params(model, jax.random.key(0), obs, (H, A)), params
        )
        chex.assert_trees_all_equal(_jitted(name)(params, obs, x, t), _reference(name))

    @parameterized.named_parameters(*NAMED)
    def test_compiles_once(self, name):
        """New values of the same shapes (parameters, observation, x, t) reuse the one
        compilation: assert_max_traces fails on a second trace."""
        _, params = _model_and_params(name)
        _reference(name)  # the first trace
        obs, x, t = _inputs(name, seed=1)
        out = _jitted(name)(jax.tree.map(lambda p: p * 1.01, params), obs, x, t)
        chex.assert_shape(out, _output_shape(name))
        self.assertFalse(np.allclose(out, _reference(name)))
        self.assertEqual(_jitted(name)._cache_size(), 1)

    @parameterized.named_parameters(*NAMED)
    def test_wrong_input_layout_is_refused(self, name):
        model, params = _model_and_params(name)
        obs, x, t = _inputs(name)
        apply = _apply(model)
        flat_state = {**obs, schema.OBS_STATE: obs[schema.OBS_STATE][:, -1]}  # [B, S]
        bad = {
            "state [B, S]": (flat_state, x, t),
            "actions [B, H*A]": (obs, x.reshape(B, H * A), t),
            "actions of another batch": (obs, x[:1], t),
            "time [B + 1]": (obs, x, jnp.zeros(B + 1)),
            "integer actions": (obs, x.astype(jnp.int32), t),
        }
        for what, args in bad.items():
            with self.assertRaisesRegex(AssertionError, "Chex", msg=what):
                jax.eval_shape(apply, params, *args)  # shapes only: nothing runs

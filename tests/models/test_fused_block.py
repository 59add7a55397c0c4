"""The fused residual block (models/fused_block.py, Pallas in interpret mode on CPU) computes
the unfused `ConditionalResidualBlock1D`: the block alone in float32 and bf16, the whole
U-Net with `fused_blocks=True`, the gradient through the custom VJP, the parameter tree;
and the kernel lowers to Triton IR for a GPU (nothing compiled or run there).

Tolerances, as a fraction of the reference output's largest |value|:
  float32: max |fused - unfused| <= 1e-5 (measured <= 5e-7: the same math, the group
    statistics summed in another order);
  bf16 (bf16 parameters and inputs on both sides): <= 2e-2 against the unfused bf16 block
    and against the float32 block (measured <= 7e-3 and <= 6e-3; the unfused bf16 block
    is itself 8e-3 off float32: the kernel rounds to bf16 once per phase, it after every
    op);
  gradients (each leaf, as a fraction of its largest |value|): <= 1e-5 (measured 4e-7).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from action_gen import models
from action_gen.data import schema
from action_gen.models import fused_block, unet1d

FP32_TOL, BF16_TOL = 1e-5, 2e-2
COND_DIM = 24
# (batch, length, C_in, C, groups, kernel size, FiLM with scale, split into two kernels,
# also in bf16)
CASES = {
    "b1_channels_change": (1, 16, 2, 16, 8, 5, True, False, True),
    "b3_nonpow2_bias_only": (3, 12, 24, 32, 4, 5, False, False, True),
    "split_b2_identity_k3": (2, 8, 32, 32, 8, 3, True, True, False),
    "split_b2_channels_change": (2, 6, 16, 32, 4, 5, True, True, False),
}


def _random_params(abstract, seed: int):
    """Parameters for `abstract`'s tree, drawn with numpy (nothing compiled): kernels
    N(0, 1/fan_in), GroupNorm scales 1 + N(0, 0.3²), every bias N(0, 0.3²): every bias
    and the FiLM projection nonzero, scales off 1, so a wrong order or a missing term
    changes the output."""
    rng = np.random.default_rng(seed)
    flat, tree = jax.tree_util.tree_flatten_with_path(abstract)
    leaves = []
    for path, leaf in flat:
        noise = rng.normal(size=leaf.shape).astype(np.float32)
        if leaf.ndim > 1:
            leaves.append(noise / np.sqrt(np.prod(leaf.shape[:-1])))
        elif jax.tree_util.keystr(path).endswith("['scale']"):
            leaves.append(1.0 + 0.3 * noise)
        else:
            leaves.append(0.3 * noise)
    return jax.tree.unflatten(tree, [jnp.asarray(leaf) for leaf in leaves])


def _block(case: str, seed: int = 0):
    batch, length, c_in, channels, groups, taps, scale, split, _ = CASES[case]
    module = unet1d.ConditionalResidualBlock1D(channels, taps, groups, scale)
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(batch, length, c_in)), jnp.float32)
    cond = jnp.asarray(rng.normal(size=(batch, COND_DIM)), jnp.float32)
    abstract = jax.eval_shape(module.init, jax.random.key(0), x, cond)["params"]
    params = _random_params(nn.meta.unbox(abstract), seed + 1)

    def fused(params, x, cond):
        return fused_block.residual_block(
            params, x, cond, n_groups=groups, cond_predict_scale=scale, split=split
        )

    def unfused(params, x, cond):
        return module.apply({"params": params}, x, cond)

    return fused, unfused, params, x, cond


def _max_err(got, want, scale) -> float:
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    return float(np.max(np.abs(got - want)) / np.max(np.abs(np.asarray(scale, np.float32))))


@pytest.mark.parametrize("case", sorted(CASES))
def test_block_matches_unfused(case):
    fused, unfused, params, x, cond = _block(case)
    want = jax.jit(unfused)(params, x, cond)
    got = jax.jit(fused)(params, x, cond)
    assert got.shape == want.shape and got.dtype == want.dtype == jnp.float32
    assert _max_err(got, want, want) <= FP32_TOL
    if not CASES[case][-1]:
        return

    # bf16 parameters and inputs: both sides compute in bf16.
    bf16 = lambda tree: jax.tree.map(lambda a: a.astype(jnp.bfloat16), tree)  # noqa: E731
    want_bf16 = jax.jit(unfused)(bf16(params), bf16(x), bf16(cond))
    got_bf16 = jax.jit(fused)(bf16(params), bf16(x), bf16(cond))
    assert got_bf16.dtype == want_bf16.dtype == jnp.bfloat16
    assert _max_err(got_bf16, want_bf16, want) <= BF16_TOL
    assert _max_err(got_bf16, want, want) <= BF16_TOL


def test_gradient_through_the_custom_vjp_is_the_unfused_gradient():
    fused, unfused, params, x, cond = _block("b1_channels_change")
    weights = jnp.asarray(np.random.default_rng(7).normal(size=(1, 16, 16)), jnp.float32)
    fused_vjp = fused_block.with_reference_vjp(fused, unfused)

    def loss(fn):
        return lambda p, x, c: jnp.sum(weights * jnp.tanh(fn(p, x, c)))

    want = jax.jit(jax.grad(loss(unfused), argnums=(0, 1, 2)))(params, x, cond)
    got = jax.jit(jax.grad(loss(fused_vjp), argnums=(0, 1, 2)))(params, x, cond)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    flat_want, _ = jax.tree_util.tree_flatten_with_path(want)
    for (path, w), g in zip(flat_want, jax.tree.leaves(got), strict=True):
        name = jax.tree_util.keystr(path)
        assert np.max(np.abs(w)) > 0, name  # every input and parameter takes part
        assert _max_err(g, w, w) <= FP32_TOL, name


TINY = {"name": "unet1d", "down_dims": (16, 32), "time_embed_dim": 16}
H, A = 8, 2


def _unet_inputs(batch: int = 2):
    rng = np.random.default_rng(3)
    obs = {
        schema.OBS_STATE: jnp.asarray(rng.normal(size=(batch, 2, 5)), jnp.float32),
        schema.OBS_PAD_MASK: jnp.ones((batch, 2), bool),
    }
    x = jnp.asarray(rng.normal(size=(batch, H, A)), jnp.float32)
    t = jnp.asarray(rng.uniform(0, 100, size=(batch,)), jnp.float32)
    return obs, x, t


def test_unet_with_fused_blocks_same_params_same_output():
    obs, x, t = _unet_inputs()
    unfused = models.create_model(TINY)
    fused = models.create_model({**TINY, "fused_blocks": True})

    # The parameter tree is the unfused one: paths, shapes, dtypes, axis names.
    abstract = models.abstract_params(unfused, obs, (H, A))
    assert models.abstract_params(fused, obs, (H, A)) == abstract
    assert models.param_logical_axes(fused, obs, (H, A)) == models.param_logical_axes(
        unfused, obs, (H, A)
    )

    # Parameters of the unfused model (a checkpoint trained unfused) run fused.
    params = _random_params(abstract, seed=5)
    want = jax.jit(models.make_apply_fn(unfused))(params, obs, x, t)
    got = jax.jit(models.make_apply_fn(fused))(params, obs, x, t)
    assert got.shape == want.shape == (2, H, A)
    assert _max_err(got, want, want) <= FP32_TOL


def test_the_kernel_lowers_to_triton_for_a_gpu():
    """DP low-dim sizes: the first block (C_in = A = 2, L = 16) and the bottom (C = 1024,
    L = 4), one kernel and split; lowering checks every op has a Triton rule and every
    tensor a power-of-two size (the PTX compile itself needs a GPU)."""
    for (length, c_in, channels), split in [((16, 2, 256), False), ((4, 1024, 1024), True)]:
        module = unet1d.ConditionalResidualBlock1D(channels, 5, 8)
        x = jax.ShapeDtypeStruct((1, length, c_in), jnp.float32)
        cond = jax.ShapeDtypeStruct((1, 296), jnp.float32)
        init = jax.eval_shape(module.init, jax.random.key(0), x, cond)
        params = nn.meta.unbox(init["params"])

        def gpu_fn(params, x, cond, split=split):
            return fused_block.residual_block(
                params, x, cond, n_groups=8, split=split, interpret=False
            )

        lowered = jax.jit(gpu_fn).trace(params, x, cond).lower(lowering_platforms=("cuda",))
        assert lowered.as_text().count("__gpu$xla.gpu.triton") == (2 if split else 1)


def test_interpret_mode_is_chosen_on_cpu():
    assert jax.default_backend() == "cpu" and fused_block.default_interpret()

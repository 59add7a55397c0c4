"""π0: block-causal mask, forward contract, KV-cached path, masking, real-size param count."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from action_gen import models
from action_gen.data import schema, tokenizer
from action_gen.models import pi0

H, A, S = 4, 3, 5
TINY = {"name": "pi0", "variant": "tiny", "action_dim": A}


def _obs(batch=2, seed=0, cams=("front", "wrist"), image_size=32):
    rng = np.random.default_rng(seed)
    obs = {
        schema.OBS_STATE: jnp.asarray(rng.normal(size=(batch, 2, S)), jnp.float32),
        schema.OBS_PAD_MASK: jnp.ones((batch, 2), bool),
    }
    for cam in cams:
        img = rng.integers(0, 256, size=(batch, 2, image_size, image_size, 3), dtype=np.uint8)
        obs[schema.image_key(cam)] = jnp.asarray(img)
    tokens, mask = tokenizer.tokenize(["pick up the cube", "push"][:batch] * batch, 8)
    obs[schema.PROMPT_TOKENS] = jnp.asarray(tokens[:batch])
    obs[schema.PROMPT_MASK] = jnp.asarray(mask[:batch])
    return obs


def _xt(batch=2, seed=1):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return jax.random.normal(k1, (batch, H, A)), jax.random.uniform(k2, (batch,)) * 100.0


@functools.cache
def _model_and_params(**overrides):
    model = models.create_model({**TINY, **overrides})
    params = models.init_params(model, jax.random.key(0), _obs(), (H, A))
    return model, params


def test_attention_mask_matches_table():
    # 2 image tokens, 2 text tokens (second one padded), 1 state, 3 actions.
    input_mask = jnp.array([[1, 1, 1, 0, 1, 1, 1, 1]], bool)
    ar_mask = jnp.array([0, 0, 0, 0, 1, 1, 0, 0])
    want = np.array(
        [
            # keys: img img txt pad st a  a  a
            [1, 1, 1, 0, 0, 0, 0, 0],  # image 0
            [1, 1, 1, 0, 0, 0, 0, 0],  # image 1
            [1, 1, 1, 0, 0, 0, 0, 0],  # text
            [0, 0, 0, 0, 0, 0, 0, 0],  # padded text: sees nothing
            [1, 1, 1, 0, 1, 0, 0, 0],  # state
            [1, 1, 1, 0, 1, 1, 1, 1],  # action 0
            [1, 1, 1, 0, 1, 1, 1, 1],  # action 1
            [1, 1, 1, 0, 1, 1, 1, 1],  # action 2
        ],
        bool,
    )
    got = jax.jit(pi0.make_attention_mask)(input_mask, ar_mask)
    assert got.shape == (1, 8, 8)
    np.testing.assert_array_equal(np.asarray(got[0]), want)


@pytest.mark.parametrize("time_conditioning", ["mlp", "adarms"])
def test_forward_jit_and_cached_path(time_conditioning):
    model, params = _model_and_params(time_conditioning=time_conditioning)
    # Shift every parameter off its init: adaRMS's zero-initialised modulation would
    # otherwise make the output independent of t.
    params = jax.tree.map(lambda p: p + 0.05, params)
    obs = _obs()
    apply_fn = jax.jit(models.make_apply_fn(model))
    split = models.make_apply_fn(model)
    prepare, step = jax.jit(split.prepare), jax.jit(split.apply)
    joint_fn = jax.jit(functools.partial(model.apply, method="forward_joint"))
    context = prepare(params, obs)
    for seed in (1, 2):
        x, t = _xt(seed=seed)
        out = apply_fn(params, obs, x, t)
        assert out.shape == (2, H, A) and out.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(out)))
        np.testing.assert_allclose(step(params, context, x, t), out, rtol=1e-5, atol=1e-5)
        joint = joint_fn({"params": params}, obs, x, t)
        np.testing.assert_allclose(joint, out, rtol=1e-4, atol=1e-4)
    # The output depends on x and t.
    x, t = _xt(seed=1)
    assert not np.allclose(apply_fn(params, obs, x, t), apply_fn(params, obs, x, t * 0.5))
    assert not np.allclose(apply_fn(params, obs, x, t), apply_fn(params, obs, x + 1.0, t))


def test_missing_camera_and_prompt_padding_are_invisible():
    model, params = _model_and_params()
    apply_fn = jax.jit(models.make_apply_fn(model))
    x, t = _xt()
    obs = _obs()
    obs[schema.image_mask_key("wrist")] = jnp.array([True, False])
    base = apply_fn(params, obs, x, t)

    other = dict(obs)
    wrist = schema.image_key("wrist")
    other[wrist] = 255 - obs[wrist]  # both samples' pixels change; sample 1's wrist is missing
    changed = apply_fn(params, other, x, t)
    np.testing.assert_allclose(changed[1], base[1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(changed[0], base[0])  # sample 0's wrist camera is present

    other = dict(obs)
    mask = obs[schema.PROMPT_MASK]
    other[schema.PROMPT_TOKENS] = jnp.where(mask, obs[schema.PROMPT_TOKENS], 77)
    np.testing.assert_allclose(apply_fn(params, other, x, t), base, rtol=1e-5, atol=1e-6)


def test_bfloat16_runs_and_returns_float32():
    model, params = _model_and_params(dtype="bfloat16")
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    x, t = _xt()
    out = jax.jit(models.make_apply_fn(model))(params, _obs(), x, t)
    assert out.dtype == jnp.float32 and out.shape == (2, H, A)
    assert bool(jnp.all(jnp.isfinite(out)))


def test_state_only_observation():
    model = models.create_model(TINY)
    obs = models.example_observation(2, S, batch_size=2)
    params = models.init_params(model, jax.random.key(0), obs, (H, A))
    x, t = _xt()
    out = jax.jit(models.make_apply_fn(model))(params, obs, x, t)
    assert out.shape == (2, H, A) and bool(jnp.all(jnp.isfinite(out)))


def test_tokenizer_roundtrip():
    tokens, mask = tokenizer.tokenize(["héllo", b"ab"], 5)
    assert tokens.dtype == np.int32 and tokens[0, 0] == tokenizer.BOS_ID
    np.testing.assert_array_equal(mask.sum(1), [5, 3])
    assert tokenizer.detokenize(tokens)[1] == "ab"
    assert tokens.max() < tokenizer.VOCAB_SIZE


def test_pi0_size_param_count():
    model = models.create_model({"name": "pi0", "variant": "pi0"})
    obs = _obs(batch=1, cams=("front",), image_size=224)
    params = jax.eval_shape(
        lambda key: models.init_params(model, key, obs, (50, 32)), jax.random.key(0)
    )
    count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))  # noqa: E731
    total = count(params)
    embedding = count(params["token_embedding"])
    assert embedding == 257_152 * 2048
    body = total - embedding
    vit = count(params["vit"])
    expert = count(params["layers"]["expert"])  # [depth, ...] stacked (scanned layers)
    print(f"pi0 params without token embedding: {body / 1e9:.3f} B "
          f"(ViT {vit / 1e9:.3f} B, expert {expert / 1e9:.3f} B)")  # fmt: skip
    assert abs(body - 2.72e9) / 2.72e9 < 0.05


def test_remat_changes_neither_params_nor_gradients():
    model, params = _model_and_params()
    remat_model = models.create_model({**TINY, "remat": True})
    remat_params = models.init_params(remat_model, jax.random.key(0), _obs(), (H, A))
    assert jax.tree.structure(remat_params) == jax.tree.structure(params)
    x, t = _xt()

    def grads(m):
        apply_fn = models.make_apply_fn(m)
        return jax.jit(jax.grad(lambda p: jnp.sum(apply_fn(p, _obs(), x, t) ** 2)))(params)

    for a, b in zip(
        jax.tree.leaves(grads(model)), jax.tree.leaves(grads(remat_model)), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-5)  # recompute order


def test_cameras_share_one_vit_pass_with_per_camera_tokens():
    """embed_prefix runs the ViT once over all cameras (camera-major batch); each camera's
    tokens equal a ViT pass over that camera alone, in camera order, then the prompt."""
    model, params = _model_and_params()
    obs = _obs(batch=2, cams=("front", "wrist", "side"))
    variables = {"params": params}
    tokens, mask = model.apply(variables, obs, method=model.embed_prefix)

    def one_camera(module, image):
        return module.image_proj(module.vit(module._image(image)))

    start = 0
    for camera in ("front", "side", "wrist"):  # sorted: no camera_order on the tiny model
        alone = model.apply(variables, obs[schema.image_key(camera)][:, -1], method=one_camera)
        n = alone.shape[1]
        np.testing.assert_allclose(tokens[:, start : start + n], alone, rtol=1e-5, atol=1e-5)
        assert mask[:, start : start + n].all()
        start += n
    assert start == tokens.shape[1] - obs[schema.PROMPT_TOKENS].shape[1]


def test_attention_implementations_agree():
    """model.attention="xla" (jax.nn.dot_product_attention) gives the einsum path's output
    with the same parameters, through the prefix cache and the joint pass; "cudnn" needs a
    GPU and is measured by benchmarks/pi0_latency.py --attention=cudnn."""
    model, params = _model_and_params()
    xla_model, xla_params = _model_and_params(attention="xla")
    assert jax.tree.structure(params) == jax.tree.structure(xla_params)
    obs = _obs()
    x, t = _xt()
    want = models.make_apply_fn(model)(params, obs, x, t)
    got = models.make_apply_fn(xla_model)(params, obs, x, t)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    joint = xla_model.apply({"params": params}, obs, x, t, method="forward_joint")
    np.testing.assert_allclose(joint, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="model.attention must be one of"):
        _model_and_params(attention="flash")

"""Diffusion objective: schedules, loss and samplers against numpy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from action_gen.data import schema
from action_gen.objectives import diffusion

B, H, A, K = 3, 8, 2, 100


def _f(t, s=0.008):
    return math.cos((t + s) / (1 + s) * math.pi / 2) ** 2


def _np_cosine_betas(k):
    return np.array([min(1 - _f((i + 1) / k) / _f(i / k), 0.999) for i in range(k)])


def _obs(seed=0):
    state = np.random.default_rng(seed).normal(size=(B, 2, 4)).astype(np.float32)
    return {schema.OBS_STATE: jnp.asarray(state), schema.OBS_PAD_MASK: jnp.ones((B, 2), bool)}


def _apply_fn(params, obs, x, t):
    """A deterministic stand-in for a model: linear in x, t and the observation."""
    cond = jnp.mean(obs[schema.OBS_STATE], axis=(1, 2))[:, None, None]
    return params["w"] * x + 0.01 * t[:, None, None] + params["b"] * cond


def _np_apply(params, obs, x, t):
    cond = np.asarray(obs[schema.OBS_STATE]).mean(axis=(1, 2))[:, None, None]
    return params["w"] * x + 0.01 * np.asarray(t)[:, None, None] + params["b"] * cond


PARAMS = {"w": 0.7, "b": 0.3}


@pytest.mark.parametrize("name", diffusion.SCHEDULES)
def test_schedules_match_closed_form(name):
    sched = diffusion.make_schedule(name, K)
    if name == "linear":
        betas = 1e-4 + (0.02 - 1e-4) * np.arange(K) / (K - 1)
    else:
        betas = _np_cosine_betas(K)
    for field in sched:
        assert field.shape == (K,) and field.dtype == jnp.float32
    np.testing.assert_allclose(sched.betas, betas, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(sched.alphas, 1 - betas, rtol=1e-6)
    np.testing.assert_allclose(sched.alphas_cumprod, np.cumprod(1 - betas), rtol=1e-5, atol=1e-7)
    if name != "linear":
        # Closed form ᾱ_k = f((k+1)/K) / f(0) wherever β was not clipped.
        closed = np.array([_f((k + 1) / K) / _f(0) for k in range(K)])
        np.testing.assert_allclose(sched.alphas_cumprod[:-1], closed[:-1], rtol=1e-4, atol=1e-7)
        assert float(sched.betas[-1]) == pytest.approx(0.999)


def test_cosine_and_squaredcos_cap_v2_agree():
    a = diffusion.make_schedule("cosine", 37)
    b = diffusion.make_schedule("squaredcos_cap_v2", 37)
    np.testing.assert_allclose(a.alphas_cumprod, b.alphas_cumprod, rtol=1e-6)


@pytest.mark.parametrize("prediction_type", diffusion.PREDICTION_TYPES)
def test_loss_matches_numpy(prediction_type):
    rng = np.random.default_rng(1)
    x0 = rng.uniform(-1, 1, size=(B, H, A)).astype(np.float32)
    mask = np.ones((B, H), bool)
    mask[0, 5:] = False
    mask[2, 1:] = False
    batch = {**_obs(), schema.ACTIONS: jnp.asarray(x0), schema.ACTION_PAD_MASK: jnp.asarray(mask)}
    key = jax.random.key(7)
    kw = dict(num_train_steps=K, schedule="squaredcos_cap_v2", prediction_type=prediction_type)
    value, aux = jax.jit(lambda p, b, r: diffusion.loss(_apply_fn, p, b, r, **kw))(
        PARAMS, batch, key
    )

    # Reference: the same draws (k, ε), the rest in float64 numpy.
    k_key, eps_key = jax.random.split(key)
    k = np.asarray(jax.random.randint(k_key, (B,), 0, K))
    eps = np.asarray(jax.random.normal(eps_key, (B, H, A)), np.float64)
    ab = np.cumprod(1 - _np_cosine_betas(K))[k][:, None, None]
    xk = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * eps
    target = {
        "epsilon": eps,
        "sample": x0,
        "v_prediction": np.sqrt(ab) * eps - np.sqrt(1 - ab) * x0,
    }[prediction_type]
    err = (_np_apply(PARAMS, batch, xk, k.astype(np.float64)) - target) ** 2
    want = (err * mask[..., None]).sum() / (mask.sum() * A)
    assert value.shape == () and value.dtype == jnp.float32
    np.testing.assert_allclose(value, want, rtol=1e-5)
    np.testing.assert_allclose(aux["mse"], want, rtol=1e-5)


def test_loss_ignores_padded_actions():
    batch = {**_obs(), schema.ACTIONS: jnp.zeros((B, H, A))}
    batch[schema.ACTION_PAD_MASK] = jnp.ones((B, H), bool).at[:, H // 2 :].set(False)
    other = dict(batch, **{schema.ACTIONS: batch[schema.ACTIONS].at[:, H // 2 :].set(5.0)})
    loss = lambda b: diffusion.loss(_apply_fn, PARAMS, b, jax.random.key(0))[0]
    # Same draws, different padded targets → same loss (for x0-prediction the noised input
    # differs only at padded positions, and the linear stand-in model is per-position).
    kw = {"prediction_type": "sample"}
    l1 = diffusion.loss(_apply_fn, PARAMS, batch, jax.random.key(0), **kw)[0]
    l2 = diffusion.loss(_apply_fn, PARAMS, other, jax.random.key(0), **kw)[0]
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    assert np.isfinite(loss(batch))


def test_sample_timesteps_leading_spacing():
    ts, prev = diffusion.sample_timesteps(100, 10)
    np.testing.assert_array_equal(ts, np.arange(90, -1, -10))
    np.testing.assert_array_equal(prev, ts - 10)
    ts, _ = diffusion.sample_timesteps(100, 100)
    np.testing.assert_array_equal(ts, np.arange(99, -1, -1))
    ts, _ = diffusion.sample_timesteps(100, 3)
    np.testing.assert_array_equal(ts, [66, 33, 0])
    with pytest.raises(ValueError):
        diffusion.sample_timesteps(100, 101)


# --- numpy references written from diffusers' DDPMScheduler.step / DDIMScheduler.step ---


def _np_x0_eps(x, out, a, prediction_type):
    if prediction_type == "epsilon":
        return (x - np.sqrt(1 - a) * out) / np.sqrt(a), out
    if prediction_type == "sample":
        return out, (x - np.sqrt(a) * out) / np.sqrt(1 - a)
    return np.sqrt(a) * x - np.sqrt(1 - a) * out, np.sqrt(a) * out + np.sqrt(1 - a) * x


def _np_ddpm_step(x, out, t, prev_t, ac, noise, prediction_type, clip):
    a_t = ac[t]
    a_prev = ac[prev_t] if prev_t >= 0 else 1.0
    b_t, b_prev = 1 - a_t, 1 - a_prev
    cur_alpha = a_t / a_prev
    cur_beta = 1 - cur_alpha
    x0, _ = _np_x0_eps(x, out, a_t, prediction_type)
    if clip:
        x0 = np.clip(x0, -1, 1)
    mean = (np.sqrt(a_prev) * cur_beta / b_t) * x0 + (np.sqrt(cur_alpha) * b_prev / b_t) * x
    if t > 0:
        mean = mean + np.sqrt(max(b_prev / b_t * cur_beta, 1e-20)) * noise
    return mean


def _np_ddim_step(x, out, t, prev_t, ac, noise, prediction_type, clip, eta):
    a_t = ac[t]
    a_prev = ac[prev_t] if prev_t >= 0 else 1.0
    x0, eps = _np_x0_eps(x, out, a_t, prediction_type)
    if clip:
        x0 = np.clip(x0, -1, 1)
    std = eta * np.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    prev = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev - std**2) * eps
    return prev + std * noise if eta > 0 else prev


def _np_sample(obs, key, num_steps, sampler, prediction_type, clip, eta, schedule):
    ac = np.cumprod(1 - np.asarray(diffusion.make_schedule(schedule, K).betas, np.float64))
    ts, prevs = diffusion.sample_timesteps(K, num_steps)
    x, noise = diffusion.initial_noise(key, B, (H, A), num_steps, True)
    x, noise = np.asarray(x, np.float64), np.asarray(noise, np.float64)
    for i, (t, prev_t) in enumerate(zip(ts, prevs, strict=True)):
        out = _np_apply(PARAMS, obs, x, np.full((B,), float(t)))
        if sampler == "ddpm":
            x = _np_ddpm_step(x, out, t, prev_t, ac, noise[i], prediction_type, clip)
        else:
            x = _np_ddim_step(x, out, t, prev_t, ac, noise[i], prediction_type, clip, eta)
    return x


@pytest.mark.parametrize("prediction_type", diffusion.PREDICTION_TYPES)
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("t,prev_t", [(90, 80), (50, 40), (4, -6), (0, -1)])
def test_single_steps_match_numpy(prediction_type, clip, t, prev_t):
    rng = np.random.default_rng(t)
    x, out, noise = (rng.normal(size=(B, H, A)) for _ in range(3))
    ac = np.cumprod(1 - _np_cosine_betas(K))
    a_t, a_prev = ac[t], (ac[prev_t] if prev_t >= 0 else 1.0)
    f32 = lambda v: jnp.asarray(v, jnp.float32)
    kw = dict(prediction_type=prediction_type, clip_sample=clip)
    got = jax.jit(lambda *a: diffusion.ddpm_step(*a, **kw))(
        f32(x), f32(out), f32(a_t), f32(a_prev), f32(noise)
    )
    want = _np_ddpm_step(x, out, t, prev_t, ac, noise, prediction_type, clip)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
    for eta in (0.0, 0.5):
        got = jax.jit(lambda *a, eta=eta: diffusion.ddim_step(*a, **kw, eta=eta))(
            f32(x), f32(out), f32(a_t), f32(a_prev), f32(noise)
        )
        want = _np_ddim_step(x, out, t, prev_t, ac, noise, prediction_type, clip, eta)
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


SAMPLER_CASES = [
    ("ddpm", 100, "epsilon", True, 0.0, "squaredcos_cap_v2"),
    ("ddpm", 10, "v_prediction", True, 0.0, "linear"),
    ("ddpm", 7, "sample", False, 0.0, "cosine"),
    ("ddim", 10, "epsilon", True, 0.0, "squaredcos_cap_v2"),
    ("ddim", 10, "v_prediction", False, 0.0, "linear"),
    ("ddim", 5, "epsilon", True, 1.0, "squaredcos_cap_v2"),
]


@pytest.mark.parametrize("sampler,num_steps,prediction_type,clip,eta,schedule", SAMPLER_CASES)
def test_sampler_matches_numpy_loop(sampler, num_steps, prediction_type, clip, eta, schedule):
    obs, key = _obs(), jax.random.key(3)
    cfg = dict(
        action_shape=(H, A),
        sampler=sampler,
        num_train_steps=K,
        schedule=schedule,
        prediction_type=prediction_type,
        clip_sample=clip,
        eta=eta,
    )
    got = jax.jit(lambda p, o, r: diffusion.sample(_apply_fn, p, o, r, num_steps, **cfg))(
        PARAMS, obs, key
    )
    want = _np_sample(obs, key, num_steps, sampler, prediction_type, clip, eta, schedule)
    assert got.shape == (B, H, A) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)


def test_ddim_with_oracle_recovers_the_data_point():
    """With the exact ε of a single data point x*, the DDIM-10 chain lands on x*."""
    target = jnp.linspace(-0.8, 0.8, H * A).reshape(1, H, A)
    ac = diffusion.make_schedule("squaredcos_cap_v2", K).alphas_cumprod

    def oracle(params, obs, x, t):
        a = ac[t.astype(jnp.int32)][:, None, None]
        return (x - jnp.sqrt(a) * target) / jnp.sqrt(1 - a)

    for sampler in ("ddim", "ddpm"):
        out = diffusion.sample(
            oracle, None, _obs(), jax.random.key(0), 10, action_shape=(H, A), sampler=sampler
        )
        np.testing.assert_allclose(out, jnp.broadcast_to(target, out.shape), atol=1e-4)


def test_sampler_deterministic_and_compiles_once():
    traces = []

    def counting_apply(params, obs, x, t):
        traces.append(1)  # runs only while tracing
        return _apply_fn(params, obs, x, t)

    sample = jax.jit(
        lambda p, o, r: diffusion.sample(
            counting_apply, p, o, r, 10, action_shape=(H, A), sampler="ddpm"
        )
    )
    obs = _obs()
    a = sample(PARAMS, obs, jax.random.key(0))
    b = sample(PARAMS, obs, jax.random.key(0))
    c = sample(PARAMS, obs, jax.random.key(1))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert len(traces) == 1  # one trace of the scan body, reused for every key
    assert sample._cache_size() == 1


def test_invalid_config_raises():
    with pytest.raises(ValueError, match="schedule"):
        diffusion.make_schedule("nope", 10)
    batch = {**_obs(), schema.ACTIONS: jnp.zeros((B, H, A))}
    with pytest.raises(ValueError, match="prediction_type"):
        diffusion.loss(_apply_fn, PARAMS, batch, jax.random.key(0), prediction_type="x")
    with pytest.raises(ValueError, match="sampler"):
        diffusion.sample(
            _apply_fn, PARAMS, _obs(), jax.random.key(0), 2, action_shape=(H, A), sampler="euler"
        )

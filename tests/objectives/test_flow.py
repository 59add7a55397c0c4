"""Flow matching: time distribution, loss and integrators against numpy / closed forms."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from action_gen import models
from action_gen.data import schema
from action_gen.objectives import flow

B, H, A = 3, 8, 2
SCALE = 100.0  # the default time_scale


def _obs(seed=0, batch=B):
    state = np.random.default_rng(seed).normal(size=(batch, 2, 4)).astype(np.float32)
    return {
        schema.OBS_STATE: jnp.asarray(state),
        schema.OBS_PAD_MASK: jnp.ones((batch, 2), bool),
    }


def _apply_fn(params, obs, x, time):
    """A deterministic stand-in for a model: linear in x, time and the observation."""
    cond = jnp.mean(obs[schema.OBS_STATE], axis=(1, 2))[:, None, None]
    return params["w"] * x + 0.01 * time[:, None, None] + params["b"] * cond


def _np_apply(params, obs, x, time):
    cond = np.asarray(obs[schema.OBS_STATE], np.float64).mean(axis=(1, 2))[:, None, None]
    return params["w"] * x + 0.01 * np.asarray(time)[:, None, None] + params["b"] * cond


PARAMS = {"w": 0.7, "b": 0.3}


# --- training time distribution ---


@pytest.mark.parametrize("distribution", flow.TIME_DISTRIBUTIONS)
def test_time_distribution_matches_analytic(distribution):
    n = 200_000
    t = np.asarray(
        jax.jit(flow.sample_time, static_argnums=(1, 2))(jax.random.key(0), n, distribution)
    )
    assert t.shape == (n,) and t.dtype == np.float32
    c = flow.BETA_CUTOFF
    if distribution == "uniform":
        mean, cdf = 0.5, lambda a: a
        assert 0.0 <= t.min() and t.max() < 1.0
    else:
        # t = c (1 - s), s ~ Beta(1.5, 1): E[t] = c (1 - 3/5), P(t < a) = 1 - (1 - a/c)^1.5.
        mean, cdf = 0.4 * c, lambda a: 1.0 - (1.0 - a / c) ** 1.5
        assert 0.0 <= t.min() and t.max() <= c
    # Mean within ~5 standard errors (std(t) < 0.3).
    assert abs(t.mean() - mean) < 5 * 0.3 / math.sqrt(n)
    edges = np.linspace(0.0, c, 11)
    hist = np.histogram(t, edges)[0] / n
    np.testing.assert_allclose(hist, np.diff([cdf(a) for a in edges]), atol=0.005)
    if distribution == "beta":
        # The noisy end (t = 0) is emphasised: the density decreases in t.
        assert np.all(np.diff(hist) < 0)
        assert hist[0] > 4 * hist[-1]


# --- loss ---


@pytest.mark.parametrize("distribution", flow.TIME_DISTRIBUTIONS)
@pytest.mark.parametrize("time_scale", [SCALE, 1.0])
def test_loss_matches_numpy(distribution, time_scale):
    rng = np.random.default_rng(1)
    x1 = rng.uniform(-1, 1, size=(B, H, A)).astype(np.float32)
    mask = np.ones((B, H), bool)
    mask[0, 5:] = False
    mask[2, 1:] = False
    batch = {**_obs(), schema.ACTIONS: jnp.asarray(x1), schema.ACTION_PAD_MASK: jnp.asarray(mask)}
    key = jax.random.key(7)
    kw = dict(time_distribution=distribution, time_scale=time_scale)
    value, aux = jax.jit(lambda p, b, r: flow.loss(_apply_fn, p, b, r, **kw))(PARAMS, batch, key)

    # Reference: the same raw draws (t, ε), the rest in float64 numpy.
    t_key, eps_key = jax.random.split(key)
    if distribution == "uniform":
        t = np.asarray(jax.random.uniform(t_key, (B,)), np.float64)
    else:
        s = np.asarray(jax.random.beta(t_key, 1.5, 1.0, (B,)), np.float64)
        t = 0.999 * (1.0 - s)
    eps = np.asarray(jax.random.normal(eps_key, (B, H, A)), np.float64)
    tb = t[:, None, None]
    xt = tb * x1 + (1 - tb) * eps
    err = (_np_apply(PARAMS, batch, xt, t * time_scale) - (x1 - eps)) ** 2
    want = (err * mask[..., None]).sum() / (mask.sum() * A)
    assert value.shape == () and value.dtype == jnp.float32
    np.testing.assert_allclose(value, want, rtol=1e-5)
    np.testing.assert_allclose(aux["mse"], want, rtol=1e-5)


def test_loss_ignores_padded_actions():
    batch = {**_obs(), schema.ACTIONS: jnp.zeros((B, H, A))}
    batch[schema.ACTION_PAD_MASK] = jnp.ones((B, H), bool).at[:, H // 2 :].set(False)
    other = dict(batch, **{schema.ACTIONS: batch[schema.ACTIONS].at[:, H // 2 :].set(5.0)})
    # Same draws; the per-position stand-in model only sees different inputs where padded.
    l1 = flow.loss(_apply_fn, PARAMS, batch, jax.random.key(0))[0]
    l2 = flow.loss(_apply_fn, PARAMS, other, jax.random.key(0))[0]
    np.testing.assert_allclose(l1, l2, rtol=1e-6)


# --- integrators on known velocity fields ---


def _sample_field(field, integrator, num_steps, x0_key=0):
    """Integrates `field(x, t)` (t in [0, 1]) with flow.sample; returns (x_0, x_1)."""
    obs = _obs()
    apply_fn = lambda params, obs, x, time: field(x, time[:, None, None] / SCALE)
    key = jax.random.key(x0_key)
    got = jax.jit(
        lambda r: flow.sample(
            apply_fn,
            None,
            obs,
            r,
            num_steps,
            action_shape=(H, A),
            integrator=integrator,
            clip_sample=False,
        )
    )(key)
    x0 = np.asarray(jax.random.normal(key, (B, H, A)), np.float64)
    return x0, np.asarray(got, np.float64)


@pytest.mark.parametrize("integrator", flow.INTEGRATORS)
def test_time_linear_field(integrator):
    """v = 2t (constant in x): x_1 = x_0 + 1. Euler's left Riemann sum gives exactly
    x_0 + (N-1)/N (so the grid starts at t = 0); Heun and midpoint are exact."""
    n = 10
    x0, x1 = _sample_field(lambda x, t: jnp.broadcast_to(2.0 * t, x.shape), integrator, n)
    want = x0 + ((n - 1) / n if integrator == "euler" else 1.0)
    np.testing.assert_allclose(x1, want, atol=1e-5)


@pytest.mark.parametrize("integrator", flow.INTEGRATORS)
def test_linear_field(integrator):
    """v = 2t x: x_1 = e x_0. Euler is the product ∏ (1 + 2 t_i Δ); errors shrink as
    O(Δ) for Euler and O(Δ²) for Heun and midpoint."""
    field = lambda x, t: 2.0 * t * x
    errors = []
    for n in (8, 16):
        x0, x1 = _sample_field(field, integrator, n)
        if integrator == "euler":
            ts = np.arange(n) / n
            np.testing.assert_allclose(x1, x0 * np.prod(1 + 2 * ts / n), rtol=1e-5)
        errors.append(np.max(np.abs(x1 - math.e * x0)) / np.max(np.abs(x0)))
    order = math.log2(errors[0] / errors[1])
    if integrator == "euler":
        assert errors[1] < 0.3 and 0.8 < order < 1.2
    else:
        assert errors[1] < 0.01 and 1.8 < order < 2.2


def test_heun_beats_euler_at_equal_steps():
    field = lambda x, t: jnp.cos(3.0 * t) * x + jnp.sin(5.0 * t)
    # Reference: Heun with many steps (second order, converged to ~1e-7).
    x0, ref = _sample_field(field, "heun", 1000)
    for n in (4, 10, 20):
        _, euler = _sample_field(field, "euler", n)
        _, heun = _sample_field(field, "heun", n)
        err_euler, err_heun = np.abs(euler - ref).max(), np.abs(heun - ref).max()
        assert err_heun < 0.2 * err_euler, (n, err_heun, err_euler)


def test_clip_sample():
    field = lambda x, t: jnp.full_like(x, 5.0)  # x_1 = x_0 + 5
    obs = _obs()
    apply_fn = lambda params, obs, x, time: field(x, time)
    out = flow.sample(apply_fn, None, obs, jax.random.key(0), 3, action_shape=(H, A))
    np.testing.assert_allclose(out, 1.0)
    out = flow.sample(
        apply_fn, None, obs, jax.random.key(0), 3, action_shape=(H, A), clip_sample=False
    )
    assert np.all(np.asarray(out) > 1.5)


def test_sampler_passes_scaled_time():
    seen = []

    def recording_apply(params, obs, x, time):
        jax.debug.callback(lambda t: seen.append(np.asarray(t)), time)
        return jnp.zeros_like(x)

    flow.sample(
        recording_apply, None, _obs(), jax.random.key(0), 4, action_shape=(H, A), integrator="heun"
    )
    seen = np.stack(seen)  # [2N, B]
    assert seen.shape == (8, B)
    np.testing.assert_allclose(
        sorted(set(np.round(seen[:, 0], 4))), [0.0, 25.0, 50.0, 75.0, 100.0], atol=1e-4
    )


# --- sampler contract ---


@pytest.mark.parametrize("integrator", flow.INTEGRATORS)
def test_sampler_deterministic_and_compiles_once(integrator):
    traces = []

    def counting_apply(params, obs, x, time):
        traces.append(1)  # runs only while tracing
        return _apply_fn(params, obs, x, time)

    sample = jax.jit(
        lambda p, o, r: flow.sample(
            counting_apply, p, o, r, 10, action_shape=(H, A), integrator=integrator
        )
    )
    obs = _obs()
    a = sample(PARAMS, obs, jax.random.key(0))
    b = sample(PARAMS, obs, jax.random.key(0))
    c = sample(PARAMS, obs, jax.random.key(1))
    assert a.shape == (B, H, A) and a.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    # One trace of the scan body, reused for every key and every step.
    assert len(traces) == flow.EVALS_PER_STEP[integrator]
    assert sample._cache_size() == 1


@pytest.mark.parametrize("integrator", flow.INTEGRATORS)
def test_context_apply_matches_plain_and_prepares_once(integrator):
    prepare_traces, apply_traces = [], []

    def prepare(params, obs):
        prepare_traces.append(1)
        return {"cond": jnp.mean(obs[schema.OBS_STATE], axis=(1, 2))[:, None, None]}

    def apply(params, context, x, time):
        apply_traces.append(1)
        return params["w"] * x + 0.01 * time[:, None, None] + params["b"] * context["cond"]

    context_apply = models.ContextApply(prepare=prepare, apply=apply)
    kw = dict(action_shape=(H, A), integrator=integrator, clip_sample=False)
    obs, key = _obs(), jax.random.key(4)
    sample = jax.jit(lambda p, o, r: flow.sample(context_apply, p, o, r, 6, **kw))
    got = sample(PARAMS, obs, key)
    sample(PARAMS, obs, jax.random.key(5))
    want = flow.sample(_apply_fn, PARAMS, obs, key, 6, **kw)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert len(prepare_traces) == 1  # once per sample call, outside the scan
    assert len(apply_traces) == flow.EVALS_PER_STEP[integrator]
    # Called like a plain apply_fn (as losses do), it prepares and applies.
    value = flow.loss(context_apply, PARAMS, {**obs, schema.ACTIONS: want}, key)[0]
    np.testing.assert_allclose(
        value, flow.loss(_apply_fn, PARAMS, {**obs, schema.ACTIONS: want}, key)[0], rtol=1e-6
    )


# --- end to end: a bimodal 1-D distribution ---


def _mlp_init(key, width=64):
    k1, k2, k3 = jax.random.split(key, 3)
    glorot = jax.nn.initializers.glorot_normal()
    return {
        "w1": glorot(k1, (3, width)),
        "b1": jnp.zeros(width),
        "w2": glorot(k2, (width, width)),
        "b2": jnp.zeros(width),
        "w3": glorot(k3, (width, 1)) * 0.1,
        "b3": jnp.zeros(1),
    }


def _mlp_apply(params, obs, x, time):
    """v_θ(x, t) for x [B, 1, 1]; features (x, t, sin-ish) with t = time / 100."""
    del obs
    t = time[:, None] / SCALE
    h = jnp.concatenate([x[:, :, 0], t, jnp.cos(math.pi * t)], axis=-1)
    h = jax.nn.silu(h @ params["w1"] + params["b1"])
    h = jax.nn.silu(h @ params["w2"] + params["b2"])
    return (h @ params["w3"] + params["b3"])[:, :, None]


def test_two_gaussian_mixture_mode_weights():
    """Trained to convergence on 0.3 N(-2, 0.2²) + 0.7 N(2, 0.2²), samples keep the weights."""
    batch_size, num_train = 512, 3000
    obs = {schema.OBS_STATE: jnp.zeros((batch_size, 1, 1))}
    opt = optax.adam(optax.cosine_decay_schedule(3e-3, num_train, alpha=0.05))

    def draw(key):
        k1, k2 = jax.random.split(key)
        side = jnp.where(jax.random.uniform(k1, (batch_size,)) < 0.3, -2.0, 2.0)
        return (side + 0.2 * jax.random.normal(k2, (batch_size,)))[:, None, None]

    def train_step(carry, key):
        params, opt_state = carry
        data_key, loss_key = jax.random.split(key)
        batch = {**obs, schema.ACTIONS: draw(data_key)}
        grads = jax.grad(lambda p: flow.loss(_mlp_apply, p, batch, loss_key)[0])(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    @jax.jit
    def train(key):
        params = _mlp_init(key)
        keys = jax.random.split(jax.random.fold_in(key, 1), num_train)
        (params, _), _ = jax.lax.scan(train_step, (params, opt.init(params)), keys)
        return params

    params = train(jax.random.key(0))
    n = 4000
    sample = jax.jit(
        functools.partial(
            flow.sample,
            _mlp_apply,
            action_shape=(1, 1),
            integrator="heun",
            clip_sample=False,
            num_steps=20,
        )
    )
    x = np.asarray(sample(params, {schema.OBS_STATE: jnp.zeros((n, 1, 1))}, jax.random.key(1)))
    x = x.ravel()
    left = np.mean(x < 0)
    assert abs(left - 0.3) < 0.05, left
    # Both modes are sharp and in the right place (not the mixture's mean).
    assert abs(np.median(x[x < 0]) + 2) < 0.2 and abs(np.median(x[x > 0]) - 2) < 0.2
    assert np.mean(np.abs(np.abs(x) - 2) < 0.6) > 0.9


def test_invalid_config_raises():
    batch = {**_obs(), schema.ACTIONS: jnp.zeros((B, H, A))}
    with pytest.raises(ValueError, match="time_distribution"):
        flow.loss(_apply_fn, PARAMS, batch, jax.random.key(0), time_distribution="logit")
    with pytest.raises(ValueError, match="integrator"):
        flow.sample(
            _apply_fn, PARAMS, _obs(), jax.random.key(0), 2, action_shape=(H, A), integrator="rk4"
        )
    with pytest.raises(ValueError, match="num_steps"):
        flow.sample(_apply_fn, PARAMS, _obs(), jax.random.key(0), 0, action_shape=(H, A))

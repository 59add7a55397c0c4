"""Flow matching (linear / rectified-flow path) for action chunks, as in π0.

Time convention: continuous t ∈ [0, 1] with t = 0 pure Gaussian noise and t = 1 the data
(the π0 paper's; openpi's code uses the opposite). Sampling integrates t upwards, 0 → 1.

Path and target:  x_t = t x_1 + (1 - t) ε,  ε ~ N(0, I),  u = dx_t/dt = x_1 - ε.
Sampling:         dx/dt = v_θ(o, x, t) from x_0 ~ N(0, I) at t = 0 to the chunk at t = 1.

The model receives `time = t · time_scale` (default 100), so a sinusoidal time embedding
(the U-Net's) sees the same range [0, 100] as diffusion's step index k ∈ {0, ..., 99};
t itself is used everywhere else. Note the direction is reversed w.r.t. diffusion: there
large time means noisy, here large time means clean.

The sampler is one `lax.scan` over the N steps of a uniform grid t_i = i / N
(Euler, Heun or midpoint): the whole chunk is one XLA program.

`time_convention` names which end of the model's time is noise (all of the above is
"noise_at_0"). "noise_at_1" is openpi's (its π0 / π0.5 checkpoints were trained so):
the model sees τ = 1 - t, x_τ = τ ε + (1 - τ) x_1, and predicts u = ε - x_1; training
draws τ = 0.001 + 0.999 s, s ~ Beta(1.5, 1) (the same law as `sample_time`'s t, mirrored);
sampling starts at τ = 1 and steps Δ = -1/N, the grid built by repeated float32 addition
as openpi's loop does (1.0, 0.9, 0.79999995, ...), so an imported model gets the exact
times it was trained on. The integrators, the data estimate and the guidance of
`sample_guided` are the same maths in the mirrored time.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from action_gen import models
from action_gen.data import schema
from action_gen.objectives import from_noise, ode
from action_gen.objectives.regression import batch_masked_mse

TIME_DISTRIBUTIONS = ("uniform", "beta")
INTEGRATORS = ("euler", "heun", "midpoint")
# Model evaluations per integration step.
EVALS_PER_STEP = {"euler": 1, "heun": 2, "midpoint": 2}
# Which end of the model's time is noise: the π0 paper's (and ours), or openpi's.
TIME_CONVENTIONS = ("noise_at_0", "noise_at_1")
# π0's Beta(1.5, 1) time distribution and its cutoff s (so t never reaches the data end).
BETA_A, BETA_B, BETA_CUTOFF = 1.5, 1.0, 0.999
# The settings that define a trained flow model's ODE (what a distilled student reads from
# its teacher's config; defaults: `sample_from_noise`'s).
FAMILY_SETTINGS = ("time_scale", "time_convention")
# The ODE solvers a distillation teacher may take (consistency.py).
TEACHER_SOLVERS = ("euler", "heun")


def interpolate(x: jax.Array, eps: jax.Array, t: jax.Array) -> jax.Array:
    """The path x_t = t x + (1 - t) ε (t the data fraction, broadcast against x)."""
    return t * x + (1.0 - t) * eps


def path_velocity(x: jax.Array, eps: jax.Array) -> jax.Array:
    """u = dx_t/dt = x − ε, the path's (t-independent) velocity."""
    return x - eps


def _check(
    time_distribution: str | None = None,
    integrator: str | None = None,
    time_convention: str = "noise_at_0",
) -> None:
    if time_convention not in TIME_CONVENTIONS:
        raise ValueError(f"unknown time_convention {time_convention!r}; known: {TIME_CONVENTIONS}")
    if time_distribution is not None and time_distribution not in TIME_DISTRIBUTIONS:
        raise ValueError(
            f"unknown time_distribution {time_distribution!r}; known: {TIME_DISTRIBUTIONS}"
        )
    if integrator is not None and integrator not in INTEGRATORS:
        raise ValueError(f"unknown integrator {integrator!r}; known: {INTEGRATORS}")


def sample_time(rng: jax.Array, batch_size: int, distribution: str = "beta") -> jax.Array:
    """Training times t [B] float32 (t = 0 noise, t = 1 data).

    uniform: t ~ U[0, 1).
    beta:    t = c (1 - s),  s ~ Beta(1.5, 1),  c = 0.999  (π0, Sec. IV-B, rewritten for
             t = 0 noise). The density p(t) = (1.5 / c) (1 - t/c)^{1/2} on [0, c] is
             largest at t = 0 and decreases to 0 at t = c: it emphasises the noisy end.
             E[t] = c (1 - 1.5 / 2.5) = 0.4 c;  P(t < a) = 1 - (1 - a/c)^{3/2}.

    Args:
      rng: PRNG key.
      batch_size: B.
      distribution: one of TIME_DISTRIBUTIONS.
    Returns:
      t [B] float32.
    References:
      Black et al., "π0: A Vision-Language-Action Flow Model for General Robot Control"
      (2024), Sec. IV-B (p(τ) = Beta((s - τ)/s; 1.5, 1), s = 0.999).
    """
    _check(time_distribution=distribution)
    if distribution == "uniform":
        return jax.random.uniform(rng, (batch_size,), jnp.float32)
    s = jax.random.beta(rng, BETA_A, BETA_B, (batch_size,), jnp.float32)
    return BETA_CUTOFF * (1.0 - s)


def loss(
    apply_fn: Callable,
    params,
    batch: dict,
    rng: jax.Array,
    *,
    time_distribution: str = "beta",
    time_scale: float = 100.0,
    time_convention: str = "noise_at_0",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Conditional flow matching on the linear path: regress the velocity x_1 - ε.

    L(θ) = E_{t ~ p(t), ε ~ N(0,I)} || v_θ(o, t x_1 + (1-t) ε, t) - (x_1 - ε) ||²,
    averaged over the real (unpadded) actions; p(t) from `sample_time`.

    Args:
      apply_fn: `apply_fn(params, obs, x, time) -> [B, H, A]`, called with
        time = t · time_scale.
      params: model parameters.
      batch: `schema.ACTIONS` x_1 [B, H, A], optional `schema.ACTION_PAD_MASK` [B, H] bool,
        and the observation keys.
      rng: PRNG key, split into (t, ε) keys in that order.
      time_distribution: one of TIME_DISTRIBUTIONS.
      time_scale: the model sees t · time_scale.
      time_convention: one of TIME_CONVENTIONS; "noise_at_1": the model sees
        (1 - t) · time_scale and regresses ε - x_1 (openpi's; module docstring).
    Returns:
      (scalar loss, aux dict of scalars).
    References:
      Lipman et al., "Flow Matching for Generative Modeling" (2023); Liu et al., "Flow
      Straight and Fast" (rectified flow, 2023); Black et al. (π0, 2024), Eq. 1.
    """
    _check(time_distribution=time_distribution, time_convention=time_convention)
    x1 = batch[schema.ACTIONS].astype(jnp.float32)
    obs = schema.observation_of(batch)
    t_rng, eps_rng = jax.random.split(rng)
    t = sample_time(t_rng, x1.shape[0], time_distribution)
    eps = jax.random.normal(eps_rng, x1.shape, jnp.float32)
    x_t = interpolate(x1, eps, t[:, None, None])
    target = path_velocity(x1, eps)
    model_t = t
    if time_convention == "noise_at_1":  # the same path in mirrored time
        model_t, target = 1.0 - t, eps - x1
    pred = apply_fn(params, obs, x_t, model_t * time_scale)
    value = batch_masked_mse(pred, target, batch)
    return value, {"mse": value}


def sample_from_noise(
    apply_fn: Callable,
    params,
    obs: dict,
    rng: jax.Array,
    num_steps: int,
    noise: jax.Array,
    *,
    action_shape,
    integrator: str = "euler",
    time_scale: float = 100.0,
    clip_sample: bool = True,
    scan_unroll: int = 1,
    time_convention: str = "noise_at_0",
) -> jax.Array:
    """Integrates dx/dt = v_θ(o, x, t) from a given x_0 = `noise` [B, H, A] at t = 0 to t = 1
    (also the capability `Objective.sample_from_noise`: reference comparisons, teachers).

    On the grid t_i = i/N, Δ = 1/N (N = num_steps), with v(x, t) = v_θ(o, x, t):
      euler:     x ← x + Δ v(x, t_i)
      midpoint:  x ← x + Δ v(x + Δ/2 v(x, t_i), t_i + Δ/2)
      heun:      x̃ = x + Δ v(x, t_i);  x ← x + Δ/2 (v(x, t_i) + v(x̃, t_i + Δ))
    (euler: N model calls; heun and midpoint: 2N.) The observation-only work of a
    `models.ContextApply` runs once, before the scan.

    Args:
      apply_fn: `apply_fn(params, obs, x, time) -> [B, H, A]` (or a ContextApply), called
        with time = t · time_scale.
      params: model parameters.
      obs: `schema.OBS_STATE` [B, T, S] (+ optional keys); B is read from it.
      rng: unused: the ODE is deterministic (the capability's common signature).
      num_steps: N ≥ 1, static.
      noise: x_0 [B, H, A].
      action_shape: (H, A), static.
      integrator: one of INTEGRATORS.
      time_scale: the model sees t · time_scale.
      clip_sample: clip the final chunk to [-1, 1] (actions are min-max normalized).
      scan_unroll: integration steps per iteration of the scan's loop (`lax.scan(unroll=)`;
        >= N unrolls it into straight-line code); a speed setting, same chunk for any value.
      time_convention: one of TIME_CONVENTIONS (module docstring); "noise_at_1" integrates
        the model's time from 1 down to 0 on openpi's float32 grid.
    Returns:
      x_1 [B, H, A] float32.
    References:
      Lipman et al. (2023); Black et al. (π0, 2024), Eq. 2 (Euler, Δ = 0.1).
    """
    del rng
    _check(integrator=integrator, time_convention=time_convention)
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps} must be >= 1")
    x = from_noise.checked_noise(noise, obs, action_shape)
    batch_size = x.shape[0]
    step_fn, context = models.split_apply_fn(apply_fn, params, obs)

    def velocity(x, t):  # in the model's time and convention
        time = jnp.full((batch_size,), t * time_scale, jnp.float32)
        return step_fn(params, context, x, time).astype(jnp.float32)

    return _integrate(velocity, x, num_steps, integrator, clip_sample, scan_unroll, time_convention)


sample = from_noise.sampler(sample_from_noise, split_key=False)


def time_grid(num_steps: int, time_convention: str = "noise_at_0") -> tuple[np.ndarray, float]:
    """(model times [N] float32 at which the N steps start, the signed step Δ).

    noise_at_0: t_i = i / N (in float64, then float32), Δ = 1/N.
    noise_at_1: τ_0 = 1, τ_{i+1} = fl32(τ_i + fl32(-1/N)) (openpi's `time + dt` in its
    while loop: 1.0, 0.9, 0.79999995, ... for N = 10), Δ = -1/N.
    """
    if time_convention == "noise_at_0":
        return (np.arange(num_steps, dtype=np.float64) / num_steps).astype(np.float32), (
            1.0 / num_steps
        )
    step, tau, grid = np.float32(-1.0 / num_steps), np.float32(1.0), []
    for _ in range(num_steps):
        grid.append(tau)
        tau = np.float32(tau + step)
    return np.asarray(grid, np.float32), -1.0 / num_steps


def probability_flow(
    num_points: int,
    *,
    time_scale: float = 100.0,
    time_convention: str = "noise_at_0",
    solver: str = "euler",
) -> ode.ProbabilityFlow:
    """The flow ODE dx/dt = v(x, t) on N = `num_points` uniform steps, as distillation reads
    it (objectives/ode.py).

    Positions i = 0 .. N at the data fraction t_i = i / N: a_i = t_i, b_i = 1 - t_i (the
    path x_t = t x + (1 - t) ε); the network's time m_i = t_i · time_scale ("noise_at_0") or
    (1 - t_i) · time_scale ("noise_at_1", where it predicts ε − x, i.e. −v). With
    v = ±out in the model's convention:
      D(x, out, i) = x + (1 - t_i) v           (the data end of the straight path)
      Φ(x, i → i+1) = x + Δ_i v                 (euler; Δ_i = t_{i+1} - t_i)
                    = x + Δ_i / 2 (v + v(x + Δ_i v, t_{i+1}))   (heun)
    """
    _check(time_convention=time_convention)
    if solver not in TEACHER_SOLVERS:
        raise ValueError(f"flow teacher solver {solver!r} is not one of {TEACHER_SOLVERS}")
    n = int(num_points)
    if n < 1:
        raise ValueError(f"num_points={n} must be >= 1")
    t = np.arange(n + 1, dtype=np.float64) / n
    model_t = t if time_convention == "noise_at_0" else 1.0 - t
    grid = ode.as_grid(model_t * float(time_scale), t, 1.0 - t, t**2)
    sign = 1.0 if time_convention == "noise_at_0" else -1.0

    def denoise(x, out, index):
        t_i = jnp.asarray(grid.signal)[index][:, None, None]
        return x + (1.0 - t_i) * (sign * out)

    def step(step_fn, params, context, x, index):
        times, ts = jnp.asarray(grid.model_time), jnp.asarray(grid.signal)
        v = sign * step_fn(params, context, x, times[index]).astype(jnp.float32)
        dt = (ts[index + 1] - ts[index])[:, None, None]
        x_next = x + dt * v
        if solver == "heun":
            v_next = sign * step_fn(params, context, x_next, times[index + 1]).astype(jnp.float32)
            x_next = x + 0.5 * dt * (v + v_next)
        return x_next

    return ode.ProbabilityFlow(grid, denoise, step)


def _integrate(
    velocity,
    x,
    num_steps: int,
    integrator: str,
    clip_sample: bool,
    scan_unroll: int = 1,
    time_convention: str = "noise_at_0",
) -> jax.Array:
    """Noise → data along `velocity(x, t)` (model time and convention) on `time_grid` as ONE
    `lax.scan` (the update rules are in `sample_from_noise`'s docstring, Δ signed), `scan_unroll`
    steps per loop iteration; optionally clipped to [-1, 1]."""
    unroll = from_noise.scan_unroll(scan_unroll, num_steps)
    ts, dt = time_grid(num_steps, time_convention)

    def body(x, t):
        v = velocity(x, t)
        if integrator == "euler":
            return x + dt * v, None
        if integrator == "midpoint":
            return x + dt * velocity(x + 0.5 * dt * v, t + 0.5 * dt), None
        v_next = velocity(x + dt * v, t + dt)
        return x + 0.5 * dt * (v + v_next), None

    x, _ = jax.lax.scan(body, x, jnp.asarray(ts), unroll=unroll)
    if clip_sample:
        x = jnp.clip(x, -1.0, 1.0)
    return x


def rtc_guidance_weight(t: jax.Array, max_guidance: float) -> jax.Array:
    """ΠGDM guidance weight of real-time chunking at flow time t (t = 0 noise, t = 1 data).

      r_t² = (1 - t)² / (t² + (1 - t)²),   w(t) = min(β, (1 - t) / (t r_t²))

    w → ∞ as t → 0 (the one-step estimate of the data is then worthless, so unclipped
    guidance would dominate); β clips it (the paper's β = 5).
    """
    t = jnp.asarray(t, jnp.float32)
    r2 = (1.0 - t) ** 2 / (t**2 + (1.0 - t) ** 2)
    denom = t * r2
    # t = 0 gives (1 - t) / 0 = inf, which the clip turns into β; `where` keeps it NaN-free.
    raw = jnp.where(denom > 0, (1.0 - t) / jnp.where(denom > 0, denom, 1.0), jnp.inf)
    return jnp.minimum(max_guidance, raw)


def sample_guided(
    apply_fn: Callable,
    params,
    obs: dict,
    rng: jax.Array,
    num_steps: int,
    prefix: jax.Array,
    prefix_weights: jax.Array,
    *,
    action_shape,
    max_guidance: float = 5.0,
    integrator: str = "euler",
    time_scale: float = 100.0,
    clip_sample: bool = True,
    scan_unroll: int = 1,
    time_convention: str = "noise_at_0",
) -> jax.Array:
    """Inpaints a chunk towards a target prefix: real-time chunking's guided flow sampler.

    Same integration as `sample` (t = 0 noise → t = 1 data, grid t_i = i/N), with the
    velocity replaced by the ΠGDM-guided one (Black, Galliker & Levine 2025, Alg. 1):

      x̂_1(x, t) = x + (1 - t) v(x, t)                         (one-step data estimate)
      e        = W ⊙ (Y - x̂_1)                                 (weighted prefix error)
      g        = eᵀ ∂x̂_1/∂x                                    (one `jax.vjp` of x̂_1)
      ṽ(x, t)  = v(x, t) + min(β, (1 - t) / (t r_t²)) g,  r_t² = (1-t)² / (t² + (1-t)²)

    Y is the target chunk (the previous chunk's not-yet-executed actions, re-indexed to
    start at the new chunk's first step) and W [B, H] its per-step weights: 1 for the d
    actions that will execute while this chunk is computed, exponentially decaying to 0
    over the rest of the overlap, 0 where there is no previous plan (`rtc_prefix_weights`
    in sample/executor.py). W = 0 gives exactly `sample`'s chunk for the same rng. The
    model's time input is t · time_scale; the whole chunk is one `lax.scan`.

    Args:
      apply_fn: `apply_fn(params, obs, x, time) -> [B, H, A]` (or a ContextApply).
      params: model parameters.
      obs: `schema.OBS_STATE` [B, T, S] (+ optional keys); B is read from it.
      rng: PRNG key for x_0 ~ N(0, I).
      num_steps: N ≥ 1, static.
      prefix: Y [B, H, A] in the model's (normalized) action space.
      prefix_weights: W [B, H] (or [H], broadcast over the batch) in [0, 1].
      action_shape: (H, A), static.
      max_guidance: β, the clip of the guidance weight.
      integrator: one of INTEGRATORS (every velocity evaluation is guided).
      time_scale: the model sees t · time_scale.
      clip_sample: clip the final chunk to [-1, 1].
      scan_unroll, time_convention: as in `sample` (with "noise_at_1" the guidance is
        computed in t = 1 - τ with v = -v_model, and applied to the model's velocity).
    Returns:
      x_1 [B, H, A] float32.
    References:
      Black, Galliker & Levine, "Real-Time Execution of Action Chunking Flow Policies"
      (2025), Eq. 5-6 and Alg. 1; Song et al., "Pseudoinverse-Guided Diffusion Models for
      Inverse Problems" (ΠGDM, 2023).
    """
    _check(integrator=integrator, time_convention=time_convention)
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps} must be >= 1")
    shape = from_noise.chunk_shape(obs, action_shape)
    batch_size = shape[0]
    if tuple(prefix.shape) != shape:
        raise ValueError(f"prefix shape {tuple(prefix.shape)} != chunk shape {shape}")
    weights = jnp.broadcast_to(jnp.asarray(prefix_weights, jnp.float32), shape[:2])[..., None]
    target = prefix.astype(jnp.float32)
    x = jax.random.normal(rng, shape, jnp.float32)
    step_fn, context = models.split_apply_fn(apply_fn, params, obs)

    # noise_at_1: the model's τ and velocity are t = 1 - τ and v = -v_model in our terms.
    sign = 1.0 if time_convention == "noise_at_0" else -1.0

    def guided_velocity(x, model_t):
        time = jnp.full((batch_size,), model_t * time_scale, jnp.float32)
        t = model_t if sign > 0 else 1.0 - model_t

        def denoise(x):  # x ↦ (x̂_1, v): the data estimate and the velocity it came from
            v = sign * step_fn(params, context, x, time).astype(jnp.float32)
            return x + (1.0 - t) * v, v

        x1_hat, vjp_fn, v = jax.vjp(denoise, x, has_aux=True)
        (g,) = vjp_fn(weights * (target - x1_hat))
        return sign * (v + rtc_guidance_weight(t, max_guidance) * g)

    return _integrate(
        guided_velocity, x, num_steps, integrator, clip_sample, scan_unroll, time_convention
    )


def sampler_label(*, integrator: str = "euler", **_) -> str:
    """The sampler's name in results and tables: the integrator ("euler", "heun", ...)."""
    return integrator

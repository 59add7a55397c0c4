"""Denoising diffusion (DDPM training; DDPM and DDIM sampling) for action chunks.

Time convention: a discrete step index k ∈ {0, ..., K-1} (K = `num_train_steps`), with
k = 0 the *least* noisy level (x_0 is the data, x_k for k ≥ 0 is noised by ᾱ_k < 1) and
k = K-1 the noisiest; sampling runs k downwards. The model receives `time = float(k)`.
This matches diffusers / Diffusion Policy (Chi et al. 2023), so their schedules, spacing
and checkpointed behaviour carry over.

Forward process:  x_k = sqrt(ᾱ_k) x_0 + sqrt(1 - ᾱ_k) ε,  ε ~ N(0, I),  ᾱ_k = ∏_{i≤k} (1 - β_i).

Samplers are one `lax.scan` over the (respaced) steps: the whole chunk is one XLA program;
all per-step schedule constants are computed in float64 numpy at trace time.
"""

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from action_gen import models
from action_gen.data import schema
from action_gen.objectives import from_noise, ode
from action_gen.objectives.regression import batch_masked_mse

SCHEDULES = ("linear", "cosine", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
SAMPLERS = ("ddim", "ddpm")


class Schedule(NamedTuple):
    """A noise schedule; every array is [K] float32, indexed by the step k."""

    betas: jax.Array
    alphas: jax.Array
    alphas_cumprod: jax.Array


def _cos2_alpha_bar(t: np.ndarray, s: float = 0.008) -> np.ndarray:
    return np.cos((t + s) / (1 + s) * math.pi / 2) ** 2


@functools.lru_cache(maxsize=32)
def _betas_np(name: str, num_train_steps: int, beta_start: float, beta_end: float) -> np.ndarray:
    """β_k in float64 (cached: numpy only, so no tracer can leak through the cache)."""
    k = num_train_steps
    if name == "linear":
        return np.linspace(beta_start, beta_end, k, dtype=np.float64)
    if name == "cosine":
        # Nichol & Dhariwal's closed form: ᾱ(t) = f(t)/f(0), f(t) = cos²((t+s)/(1+s)·π/2),
        # β_k = 1 - ᾱ((k+1)/K)/ᾱ(k/K), clipped to 0.999 (their Sec. 3.2).
        alpha_bar = _cos2_alpha_bar(np.arange(k + 1, dtype=np.float64) / k)
        alpha_bar = alpha_bar / alpha_bar[0]
        return np.clip(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.0, 0.999)
    if name == "squaredcos_cap_v2":
        # diffusers' betas_for_alpha_bar(K, max_beta=0.999, alpha_transform_type="cosine"):
        # the same curve built term by term; equal to "cosine" up to float rounding.
        return np.array(
            [
                min(1.0 - _cos2_alpha_bar((i + 1) / k) / _cos2_alpha_bar(i / k), 0.999)
                for i in range(k)
            ],
            dtype=np.float64,
        )
    raise ValueError(f"unknown schedule {name!r}; known: {SCHEDULES}")


def _alphas_cumprod_np(name, num_train_steps, beta_start, beta_end) -> np.ndarray:
    return np.cumprod(1.0 - _betas_np(name, num_train_steps, beta_start, beta_end))


def make_schedule(
    name: str, num_train_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> Schedule:
    """A noise schedule of K = `num_train_steps` steps.

    linear:             β_k = beta_start + (beta_end - beta_start) k / (K - 1)   (Ho et al.)
    cosine:             ᾱ(t) = f(t)/f(0), f(t) = cos²((t + 0.008)/1.008 · π/2),
                        β_k = min(1 - ᾱ((k+1)/K)/ᾱ(k/K), 0.999)   (Nichol & Dhariwal)
    squaredcos_cap_v2:  diffusers' betas_for_alpha_bar (same curve, max_beta 0.999; DP's
                        default).
    Then α_k = 1 - β_k and ᾱ_k = ∏_{i≤k} α_i.

    Args:
      name: one of SCHEDULES.
      num_train_steps: K.
      beta_start, beta_end: endpoints of the linear schedule (ignored otherwise).
    Returns:
      Schedule(betas, alphas, alphas_cumprod), each [K] float32.
    References:
      Ho et al., "Denoising Diffusion Probabilistic Models" (2020);
      Nichol & Dhariwal, "Improved Denoising Diffusion Probabilistic Models" (2021).
    """
    betas = _betas_np(name, int(num_train_steps), float(beta_start), float(beta_end))
    return Schedule(
        betas=jnp.asarray(betas, jnp.float32),
        alphas=jnp.asarray(1.0 - betas, jnp.float32),
        alphas_cumprod=jnp.asarray(np.cumprod(1.0 - betas), jnp.float32),
    )


def _check(prediction_type: str, sampler: str | None = None) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; {PREDICTION_TYPES}")
    if sampler is not None and sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; known: {SAMPLERS}")


def loss(
    apply_fn: Callable,
    params,
    batch: dict,
    rng: jax.Array,
    *,
    num_train_steps: int = 100,
    schedule: str = "squaredcos_cap_v2",
    prediction_type: str = "epsilon",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The simple DDPM loss: regress the noise (or x_0, or v) of a randomly noised chunk.

    L(θ) = E_{k ~ U{0..K-1}, ε ~ N(0,I)} || f_θ(o, sqrt(ᾱ_k) x_0 + sqrt(1-ᾱ_k) ε, k) - y ||²,
    y = ε (epsilon), x_0 (sample) or v = sqrt(ᾱ_k) ε - sqrt(1-ᾱ_k) x_0 (v_prediction),
    averaged over the real (unpadded) actions.

    Args:
      apply_fn: `apply_fn(params, obs, x, t) -> [B, H, A]`, called with t = float(k).
      params: model parameters.
      batch: `schema.ACTIONS` x_0 [B, H, A], optional `schema.ACTION_PAD_MASK` [B, H] bool,
        and the observation keys.
      rng: PRNG key for k and ε.
      num_train_steps: K.
      schedule: one of SCHEDULES.
      prediction_type: one of PREDICTION_TYPES.
      beta_start, beta_end: for the linear schedule.
    Returns:
      (scalar loss, aux dict of scalars).
    References:
      Ho et al. (2020), Eq. 14; Salimans & Ho, "Progressive Distillation" (2022) for v;
      Chi et al., "Diffusion Policy" (2023).
    """
    _check(prediction_type)
    x0 = batch[schema.ACTIONS].astype(jnp.float32)
    obs = schema.observation_of(batch)
    alphas_cumprod = make_schedule(schedule, num_train_steps, beta_start, beta_end).alphas_cumprod
    k_rng, eps_rng = jax.random.split(rng)
    k = jax.random.randint(k_rng, (x0.shape[0],), 0, num_train_steps)
    eps = jax.random.normal(eps_rng, x0.shape, jnp.float32)
    alpha_bar = alphas_cumprod[k][:, None, None]
    sqrt_ab, sqrt_1mab = jnp.sqrt(alpha_bar), jnp.sqrt(1.0 - alpha_bar)
    x_k = sqrt_ab * x0 + sqrt_1mab * eps
    if prediction_type == "epsilon":
        target = eps
    elif prediction_type == "sample":
        target = x0
    else:
        target = sqrt_ab * eps - sqrt_1mab * x0
    pred = apply_fn(params, obs, x_k, k.astype(jnp.float32))
    value = batch_masked_mse(pred, target, batch)
    return value, {"mse": value}


def sample_timesteps(num_train_steps: int, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The respaced chain k_N > ... > k_1 = 0 and each step's predecessor.

    diffusers' "leading" spacing (DDPMScheduler / DDIMScheduler.set_timesteps):
    r = K // N, k_i = r (N - i) for i = 1..N (so [90, 80, ..., 0] for K=100, N=10), and the
    step from k goes to k - r (-1 or less means "x_0": ᾱ = 1).

    Returns:
      (timesteps [N] int64 descending, prev_timesteps [N] int64).
    """
    if not 1 <= num_steps <= num_train_steps:
        raise ValueError(f"num_steps={num_steps} must be in [1, num_train_steps={num_train_steps}]")
    ratio = num_train_steps // num_steps
    timesteps = (np.arange(num_steps, dtype=np.int64) * ratio)[::-1].copy()
    return timesteps, timesteps - ratio


def predict_x0_and_eps(
    x: jax.Array, model_output: jax.Array, alpha_bar: jax.Array, prediction_type: str
) -> tuple[jax.Array, jax.Array]:
    """(x̂_0, ε̂) from the model output at noise level ᾱ.

    epsilon:      x̂_0 = (x - sqrt(1-ᾱ) ε̂) / sqrt(ᾱ)
    sample:       ε̂ = (x - sqrt(ᾱ) x̂_0) / sqrt(1-ᾱ)
    v_prediction: x̂_0 = sqrt(ᾱ) x - sqrt(1-ᾱ) v,  ε̂ = sqrt(ᾱ) v + sqrt(1-ᾱ) x
    """
    sqrt_ab, sqrt_1mab = jnp.sqrt(alpha_bar), jnp.sqrt(1.0 - alpha_bar)
    if prediction_type == "epsilon":
        return (x - sqrt_1mab * model_output) / sqrt_ab, model_output
    if prediction_type == "sample":
        return model_output, (x - sqrt_ab * model_output) / sqrt_1mab
    if prediction_type == "v_prediction":
        return sqrt_ab * x - sqrt_1mab * model_output, sqrt_ab * model_output + sqrt_1mab * x
    raise ValueError(f"unknown prediction_type {prediction_type!r}; {PREDICTION_TYPES}")


def ddpm_step(
    x: jax.Array,
    model_output: jax.Array,
    alpha_bar: jax.Array,
    alpha_bar_prev: jax.Array,
    noise: jax.Array,
    *,
    prediction_type: str = "epsilon",
    clip_sample: bool = True,
) -> jax.Array:
    """One ancestral step x_k → x_{k'} (k' = k - r) of the respaced chain.

    x_{k'} = c_0 x̂_0 + c_k x_k + σ z,  with a = ᾱ_k, a' = ᾱ_{k'}, β = 1 - a/a' and
    c_0 = sqrt(a') β / (1-a),  c_k = sqrt(a/a') (1-a') / (1-a),  σ² = β (1-a') / (1-a)
    (the posterior q(x_{k'} | x_k, x_0) of the respaced chain, "fixed_small" variance;
    σ = 0 at the last step, where a' = 1).

    Args:
      x: x_k [B, H, A].
      model_output: f_θ(o, x_k, k) [B, H, A].
      alpha_bar, alpha_bar_prev: ᾱ_k and ᾱ_{k'} (1 at the last step), scalars.
      noise: z ~ N(0, I) [B, H, A].
      prediction_type: one of PREDICTION_TYPES.
      clip_sample: clip x̂_0 to [-1, 1] (actions are normalized to that range).
    Returns:
      x_{k'} [B, H, A].
    References:
      Ho et al. (2020), Eq. 7; diffusers DDPMScheduler.step.
    """
    x0, _ = predict_x0_and_eps(x, model_output, alpha_bar, prediction_type)
    if clip_sample:
        x0 = jnp.clip(x0, -1.0, 1.0)
    beta_prod, beta_prod_prev = 1.0 - alpha_bar, 1.0 - alpha_bar_prev
    alpha_step = alpha_bar / alpha_bar_prev
    beta_step = 1.0 - alpha_step
    mean = (jnp.sqrt(alpha_bar_prev) * beta_step / beta_prod) * x0 + (
        jnp.sqrt(alpha_step) * beta_prod_prev / beta_prod
    ) * x
    variance = jnp.maximum(beta_prod_prev / beta_prod * beta_step, 0.0)
    return mean + jnp.sqrt(variance) * noise


def ddim_step(
    x: jax.Array,
    model_output: jax.Array,
    alpha_bar: jax.Array,
    alpha_bar_prev: jax.Array,
    noise: jax.Array | None,
    *,
    prediction_type: str = "epsilon",
    clip_sample: bool = True,
    eta: float = 0.0,
) -> jax.Array:
    """One DDIM step x_k → x_{k'} (deterministic for eta = 0).

    x_{k'} = sqrt(a') x̂_0 + sqrt(1 - a' - σ²) ε̂ + σ z,
    σ = eta sqrt((1-a')/(1-a)) sqrt(1 - a/a'),  a = ᾱ_k, a' = ᾱ_{k'}  (Song et al. Eq. 12, 16).
    x̂_0 is clipped to [-1, 1] when clip_sample; ε̂ is not re-derived from the clipped x̂_0
    (diffusers' default, use_clipped_model_output=False).

    Args:
      x: x_k [B, H, A].
      model_output: f_θ(o, x_k, k) [B, H, A].
      alpha_bar, alpha_bar_prev: ᾱ_k and ᾱ_{k'} (1 at the last step), scalars.
      noise: z ~ N(0, I) [B, H, A]; may be None when eta == 0.
      prediction_type: one of PREDICTION_TYPES.
      clip_sample: clip x̂_0 to [-1, 1].
      eta: 0 gives DDIM, 1 the DDPM posterior variance.
    Returns:
      x_{k'} [B, H, A].
    References:
      Song et al., "Denoising Diffusion Implicit Models" (2021); diffusers DDIMScheduler.
    """
    x0, eps = predict_x0_and_eps(x, model_output, alpha_bar, prediction_type)
    if clip_sample:
        x0 = jnp.clip(x0, -1.0, 1.0)
    variance = (1.0 - alpha_bar_prev) / (1.0 - alpha_bar) * (1.0 - alpha_bar / alpha_bar_prev)
    std = eta * jnp.sqrt(jnp.maximum(variance, 0.0))
    direction = jnp.sqrt(jnp.maximum(1.0 - alpha_bar_prev - std**2, 0.0)) * eps
    x_prev = jnp.sqrt(alpha_bar_prev) * x0 + direction
    if eta > 0:
        x_prev = x_prev + std * noise
    return x_prev


# The settings that define a trained diffusion model's ODE (what a distilled student reads
# from its teacher's config; defaults: `sample_from_noise`'s).
FAMILY_SETTINGS = ("num_train_steps", "schedule", "prediction_type", "beta_start", "beta_end")
# The ODE solvers a distillation teacher may take (consistency.py).
TEACHER_SOLVERS = ("ddim",)


def probability_flow(
    num_points: int,
    *,
    num_train_steps: int = 100,
    schedule: str = "squaredcos_cap_v2",
    prediction_type: str = "epsilon",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    solver: str = "ddim",
    clip: bool = True,
) -> ode.ProbabilityFlow:
    """The probability-flow ODE of a trained diffusion model on N = `num_points` DDIM steps
    (η = 0), as distillation reads it (objectives/ode.py).

    Positions i = 0 .. N-1 are the respaced chain k_i of `sample_timesteps(K, N)` ([90, 80,
    ..., 0] for K = 100, N = 10) and i = N the data: ᾱ_i = ᾱ_{k_i} (ᾱ_N = 1), a_i = √ᾱ_i,
    b_i = √(1 - ᾱ_i), the network's time m_i = k_i (m_N = 0);
      D(x, out, i) = x̂_0 of `predict_x0_and_eps(x, out, ᾱ_i, prediction_type)`,
      Φ(x, i → i+1) = `ddim_step(x, out, ᾱ_i, ᾱ_{i+1})` (x̂_0 clipped to [-1, 1] with `clip`).
    """
    _check(prediction_type)
    if solver not in TEACHER_SOLVERS:
        raise ValueError(f"diffusion teacher solver {solver!r} is not one of {TEACHER_SOLVERS}")
    ks, _ = sample_timesteps(int(num_train_steps), int(num_points))
    cumprod = _alphas_cumprod_np(schedule, int(num_train_steps), beta_start, beta_end)
    alpha_bar = np.concatenate([cumprod[ks], [1.0]])
    grid = ode.as_grid(
        np.concatenate([ks.astype(np.float64), [0.0]]),
        np.sqrt(alpha_bar),
        np.sqrt(1.0 - alpha_bar),
        alpha_bar,
    )

    def denoise(x, out, index):
        ab = jnp.asarray(grid.alpha_bar)[index][:, None, None]
        return predict_x0_and_eps(x, out, ab, prediction_type)[0]

    def step(step_fn, params, context, x, index):
        out = step_fn(params, context, x, jnp.asarray(grid.model_time)[index])
        ab = jnp.asarray(grid.alpha_bar)
        return ddim_step(
            x,
            out.astype(jnp.float32),
            ab[index][:, None, None],
            ab[index + 1][:, None, None],
            None,
            prediction_type=prediction_type,
            clip_sample=clip,
        )

    return ode.ProbabilityFlow(grid, denoise, step)


def sampler_constants(
    num_train_steps: int,
    num_steps: int,
    schedule: str = "squaredcos_cap_v2",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-step constants of the respaced chain: (k as float32, ᾱ_k, ᾱ_{k'}), each [N].

    ᾱ_{k'} = 1 where k' < 0 (the last step lands on x_0; diffusers' set_alpha_to_one).
    """
    timesteps, prev = sample_timesteps(num_train_steps, num_steps)
    alphas_cumprod = _alphas_cumprod_np(schedule, num_train_steps, beta_start, beta_end)
    alpha_bar = alphas_cumprod[timesteps]
    alpha_bar_prev = np.where(prev >= 0, alphas_cumprod[np.maximum(prev, 0)], 1.0)
    f32 = np.float32
    return timesteps.astype(f32), alpha_bar.astype(f32), alpha_bar_prev.astype(f32)


def step_noise(rng: jax.Array, num_steps: int, chunk_shape) -> jax.Array:
    """z [N, B, H, A] ~ N(0, I): the per-step noise of the stochastic samplers (DDPM, DDIM
    with η > 0), drawn from the key `sample_from_noise` is given."""
    return jax.random.normal(rng, (int(num_steps), *chunk_shape), jnp.float32)


def initial_noise(
    rng: jax.Array, batch_size: int, action_shape, num_steps: int, stochastic: bool
) -> tuple[jax.Array, jax.Array | None]:
    """x_K ~ N(0, I) [B, H, A] and the per-step noise [N, B, H, A] (None if deterministic),
    exactly as `sample` draws them from its key (for reference samplers outside JAX)."""
    x, steps_rng = from_noise.draw_noise(rng, (batch_size, *action_shape), split_key=True)
    return x, (step_noise(steps_rng, num_steps, x.shape) if stochastic else None)


def sample_from_noise(
    apply_fn: Callable,
    params,
    obs: dict,
    rng: jax.Array,
    num_steps: int,
    noise: jax.Array,
    *,
    action_shape,
    sampler: str = "ddim",
    num_train_steps: int = 100,
    schedule: str = "squaredcos_cap_v2",
    prediction_type: str = "epsilon",
    clip_sample: bool = True,
    eta: float = 0.0,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    scan_unroll: int = 1,
) -> jax.Array:
    """The reverse chain from a given x_K = `noise` [B, H, A] to x_0 (also the capability
    `Objective.sample_from_noise`: reference comparisons, distillation teachers).

    x_{k_{i-1}} = step(x_{k_i}, f_θ(o, x_{k_i}, k_i)),  i = N..1, on the respaced chain of
    `sample_timesteps` (N = num_steps ≤ K); step is `ddpm_step` or `ddim_step`.

    One `lax.scan` over the N steps (jit the caller once; num_steps, action_shape and the
    config are static, the key is not).

    Args:
      apply_fn: `apply_fn(params, obs, x, t) -> [B, H, A]`, called with t = float(k).
      params: model parameters.
      obs: `schema.OBS_STATE` [B, T, S] (+ optional keys); B is read from it.
      rng: PRNG key of the per-step noise of stochastic samplers (DDPM, DDIM with η > 0);
        DDIM with η = 0 is a deterministic function of `noise`.
      num_steps: N, static.
      noise: x_K [B, H, A].
      action_shape: (H, A), static.
      sampler: "ddim" or "ddpm".
      num_train_steps, schedule, prediction_type, beta_start, beta_end: as in `loss`.
      clip_sample: clip x̂_0 to [-1, 1] at every step.
      eta: DDIM stochasticity (ignored by ddpm).
      scan_unroll: steps per iteration of the scan's loop (`lax.scan(unroll=)`; >= N
        unrolls the whole chain into straight-line code). Same chunk for any value; a
        speed setting only (benchmarks/gpu_suite.py measures it).
    Returns:
      x_0 [B, H, A] float32.
    References:
      Ho et al. (2020), Alg. 2; Song et al. (2021); Chi et al. (2023).
    """
    _check(prediction_type, sampler)
    ks, alpha_bars, alpha_bars_prev = sampler_constants(
        num_train_steps, num_steps, schedule, beta_start, beta_end
    )
    x = from_noise.checked_noise(noise, obs, action_shape)
    batch_size = x.shape[0]
    per_step_noise = None  # z [N, B, H, A] of the stochastic samplers
    if sampler == "ddpm" or eta > 0:
        per_step_noise = step_noise(rng, num_steps, x.shape)
    if sampler == "ddpm":
        step = functools.partial(
            ddpm_step, prediction_type=prediction_type, clip_sample=clip_sample
        )
    else:
        step = functools.partial(
            ddim_step, prediction_type=prediction_type, clip_sample=clip_sample, eta=eta
        )

    # Observation-only work (e.g. a prefix KV cache) runs once, outside the scan.
    step_fn, context = models.split_apply_fn(apply_fn, params, obs)

    def body(x, per_step):
        k, alpha_bar, alpha_bar_prev, z = per_step
        model_output = step_fn(params, context, x, jnp.full((batch_size,), k, jnp.float32))
        return step(x, model_output, alpha_bar, alpha_bar_prev, z), None

    xs = (jnp.asarray(ks), jnp.asarray(alpha_bars), jnp.asarray(alpha_bars_prev), per_step_noise)
    x, _ = jax.lax.scan(body, x, xs, unroll=from_noise.scan_unroll(scan_unroll, num_steps))
    return x


sample = from_noise.sampler(sample_from_noise, split_key=True)


def sampler_label(*, sampler: str = "ddim", **_) -> str:
    """The sampler's name in results and tables: "ddim" or "ddpm"."""
    return sampler

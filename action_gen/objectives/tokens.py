"""Discrete binned action tokens, decoded autoregressively (RT-2 / OpenVLA baseline).

Binning: every normalized action value a ∈ [-1, 1] maps to one of V uniform bins of width
w = 2 / V (RT-2 and OpenVLA: V = 256 per dimension),

  q(a) = clip(floor((a + 1) / w), 0, V - 1),    dq(i) = -1 + (i + 1/2) w,

so |a - dq(q(a))| <= w / 2 (= 1/256 for V = 256), about w / 4 on average for values
spread evenly inside their bins. Values outside [-1, 1] are clipped first.

Model: `models/token_head.py` — a causal transformer over the N = H·A tokens of the chunk
in time-major order (a_{0,0}, a_{0,1}, ..., a_{H-1,A-1}), conditioned on the observation.
It is called as `apply_fn(params, obs, x, t)` with x = the bin indices as float32
[B, H, A] and returns logits [B, H, A, V]; logits at (h, a) see only earlier tokens.

Training (teacher forcing, one forward pass for all N tokens):
  L(θ) = - sum_{b,h,a} m_{b,h} d_{b,a} log p_θ(q(a_{b,h,a}) | o_b, earlier tokens)
         / sum_{b,h,a} m_{b,h} d_{b,a}
with m the `action_pad_mask` [B, H] and d the `action_dim_mask` [B, A] (when present).

Sampling: N sequential model calls inside ONE jitted `lax.scan`; step n fills token n
(greedy argmax when temperature = 0, else a draw from softmax(logits / temperature)).
No KV cache: each step re-runs the model on the whole (partly filled) buffer, so a chunk
costs N forward passes of length N. `num_steps` is ignored — the number of decoding steps
is fixed at H·A by the chunk shape.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from action_gen import models
from action_gen.data import normalize, schema

DEFAULT_NUM_BINS = 256


def quantize(actions: jax.Array, num_bins: int = DEFAULT_NUM_BINS) -> jax.Array:
    """Bin indices q(a) = clip(floor((a + 1) V / 2), 0, V - 1), int32, same shape as a.

    Args:
      actions: normalized actions (any shape), nominally in [-1, 1].
      num_bins: V.
    """
    a = jnp.clip(jnp.asarray(actions, jnp.float32), -1.0, 1.0)
    return jnp.clip(jnp.floor((a + 1.0) * (num_bins / 2.0)), 0, num_bins - 1).astype(jnp.int32)


def dequantize(ids: jax.Array, num_bins: int = DEFAULT_NUM_BINS) -> jax.Array:
    """Bin centres dq(i) = -1 + (i + 1/2) 2 / V, float32, same shape as `ids`."""
    return -1.0 + (jnp.asarray(ids, jnp.float32) + 0.5) * (2.0 / num_bins)


def _weights(batch: dict, shape) -> jax.Array:
    """m_{b,h} d_{b,a} broadcast to [B, H, A] float32 (ones where a mask is absent)."""
    weights = jnp.ones(shape, jnp.float32)
    pad_mask = batch.get(schema.ACTION_PAD_MASK)
    if pad_mask is not None:
        weights = weights * jnp.asarray(pad_mask, jnp.float32)[:, :, None]
    dim_mask = batch.get(schema.ACTION_DIM_MASK)
    if dim_mask is not None:
        weights = weights * jnp.asarray(dim_mask, jnp.float32)[:, None, :]
    return weights


def loss(
    apply_fn: Callable,
    params,
    batch: dict,
    rng: jax.Array,
    *,
    num_bins: int = DEFAULT_NUM_BINS,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Teacher-forced next-token cross-entropy over the binned chunk.

    L(θ) = E[ - sum m d log softmax(f_θ(o, q(a)))[q(a)] / sum m d ]  (module docstring).

    Args:
      apply_fn: `apply_fn(params, obs, x, t) -> logits [B, H, A, V]` (models/token_head.py).
      params: model parameters.
      batch: `schema.ACTIONS` [B, H, A] normalized to [-1, 1], optional
        `schema.ACTION_PAD_MASK` [B, H] and `schema.ACTION_DIM_MASK` [B, A] bool, and the
        observation keys.
      rng: unused (teacher forcing is deterministic); kept for the common interface.
      num_bins: V, bins per action dimension.
    Returns:
      (scalar loss, aux) with aux `cross_entropy`, `token_accuracy` (argmax == target
      over the real tokens) and `quantization_error` (masked mean |a - dq(q(a))| in
      normalized units).
    References:
      Brohan et al., "RT-2" (2023), Sec. 3.2 (256 uniform bins per dimension); Kim et al.,
      "OpenVLA" (2024).
    """
    del rng
    actions = jnp.asarray(batch[schema.ACTIONS], jnp.float32)
    obs = schema.observation_of(batch)
    targets = quantize(actions, num_bins)  # [B, H, A]
    batch_size = actions.shape[0]
    logits = apply_fn(params, obs, targets.astype(jnp.float32), jnp.zeros((batch_size,)))
    _check_logits(logits, actions.shape, num_bins)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]  # [B, H, A]
    weights = _weights(batch, actions.shape)
    total = jnp.maximum(jnp.sum(weights), 1.0)
    value = jnp.sum(weights * nll) / total
    accuracy = jnp.sum(weights * (jnp.argmax(logits, axis=-1) == targets)) / total
    quant_err = jnp.sum(weights * jnp.abs(jnp.clip(actions, -1, 1) - dequantize(targets, num_bins)))
    return value, {
        "cross_entropy": value,
        "token_accuracy": accuracy,
        "quantization_error": quant_err / total,
    }


def _check_logits(logits: jax.Array, action_shape, num_bins: int) -> None:
    expected = (*action_shape, num_bins)
    if tuple(logits.shape) != tuple(expected):
        raise ValueError(
            f"tokens objective: the model returned shape {tuple(logits.shape)}, expected "
            f"logits {expected} ([B, H, A, num_bins]); use model.name='token_head' with "
            f"num_bins={num_bins}"
        )


def sample(
    apply_fn: Callable,
    params,
    obs: dict,
    rng: jax.Array,
    num_steps: int,
    *,
    action_shape,
    num_bins: int = DEFAULT_NUM_BINS,
    temperature: float = 0.0,
) -> jax.Array:
    """Decodes the N = H·A tokens one by one in a `lax.scan` and returns their bin centres.

    tok_n = argmax_v logits_n[v]                       (temperature = 0, greedy)
    tok_n ~ Categorical(softmax(logits_n / temperature))  (temperature > 0)
    with logits_n = f_θ(o, [tok_0 .. tok_{n-1}, 0, ..., 0])[n].

    Args:
      apply_fn: `apply_fn(params, obs, x, t) -> logits [B, H, A, V]`.
      params: model parameters.
      obs: `schema.OBS_STATE` [B, T, S] (+ optional keys).
      rng: PRNG key (unused when greedy).
      num_steps: ignored (the chunk always takes H·A decoding steps).
      action_shape: (H, A), bound by `create_objective`.
      num_bins: V.
      temperature: 0 for greedy decoding (OpenVLA's default), > 0 to sample.
    Returns:
      [B, H, A] float32 normalized actions (bin centres, within [-1 + 1/V, 1 - 1/V]).
    """
    del num_steps
    if temperature < 0:
        raise ValueError(f"tokens objective: temperature must be >= 0, got {temperature}")
    horizon, action_dim = (int(d) for d in action_shape)
    length = horizon * action_dim
    batch_size = obs[schema.OBS_STATE].shape[0]
    step_fn, context = models.split_apply_fn(apply_fn, params, obs)
    zero_t = jnp.zeros((batch_size,), jnp.float32)
    keys = jax.random.split(rng, length)

    def decode(buffer, inputs):
        n, key = inputs
        tokens = buffer.reshape(batch_size, horizon, action_dim).astype(jnp.float32)
        logits = step_fn(params, context, tokens, zero_t)
        _check_logits(logits, (batch_size, horizon, action_dim), num_bins)
        logits = logits.reshape(batch_size, length, num_bins)
        logits_n = jax.lax.dynamic_index_in_dim(logits, n, axis=1, keepdims=False)  # [B, V]
        if temperature == 0:
            token = jnp.argmax(logits_n, axis=-1)
        else:
            token = jax.random.categorical(key, logits_n / temperature, axis=-1)
        buffer = jax.lax.dynamic_update_index_in_dim(buffer, token.astype(jnp.int32), n, axis=1)
        return buffer, None

    buffer = jnp.zeros((batch_size, length), jnp.int32)
    buffer, _ = jax.lax.scan(decode, buffer, (jnp.arange(length), keys))
    return dequantize(buffer.reshape(batch_size, horizon, action_dim), num_bins)


def quantization_error(
    raw_actions: np.ndarray,
    action_stats: dict,
    action_norm: str,
    num_bins: int = DEFAULT_NUM_BINS,
) -> dict[str, float]:
    """How far binning moves the demonstrated actions, in normalized and raw units.

    e_norm = mean |ā - dq(q(ā))|,  e_raw = mean |a - unnormalize(dq(q(ā)))|,
    ā = normalize(a), means over every value of every action.

    Args:
      raw_actions: [..., A] raw (unnormalized) actions, e.g. every step of the dataset.
      action_stats: the dataset's action normalization stats (`norm_stats["actions"]`).
      action_norm: the normalization mode (`config.data.action_norm`).
      num_bins: V.
    Returns:
      {"quantization_error_normalized", "quantization_error_raw",
       "quantization_error_raw_max"} as Python floats.
    """
    raw = np.asarray(raw_actions, np.float64)
    normed = np.asarray(normalize.normalize(raw, action_stats, action_norm), np.float32)
    restored_norm = np.asarray(dequantize(quantize(normed, num_bins), num_bins))
    restored = np.asarray(normalize.unnormalize(restored_norm, action_stats, action_norm))
    err_raw = np.abs(raw - restored)
    return {
        "quantization_error_normalized": float(
            np.mean(np.abs(np.clip(normed, -1, 1) - restored_norm))
        ),
        "quantization_error_raw": float(np.mean(err_raw)),
        "quantization_error_raw_max": float(np.max(err_raw)),
    }


def sampler_label(*, temperature: float = 0.0, **_) -> str:
    """The sampler's name in results and tables: "greedy" or "temperature 0.7"."""
    return "greedy" if temperature == 0 else f"temperature {temperature:g}"


def representation_error(
    raw_actions: np.ndarray, action_stats: dict, action_norm: str, *, num_bins: int
) -> dict[str, float]:
    """The objective's capability: `quantization_error` of the bins it was trained with."""
    return quantization_error(raw_actions, action_stats, action_norm, num_bins)

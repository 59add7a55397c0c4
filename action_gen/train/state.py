"""Training state and the exponential moving average of the weights."""

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from action_gen.models import lora


class TrainState(struct.PyTreeNode):
    """Everything a training run carries from step to step; a pure pytree.

    Attributes:
      step: int32 scalar, number of optimizer updates applied so far.
      params: the model parameters being optimized.
      ema_params: exponential moving average of `params` (what a policy serves); of its
        trainable leaves only when some are frozen (`create_train_state`).
      opt_state: the optax optimizer state.
    """

    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any


def create_train_state(
    params: Any, tx: optax.GradientTransformation, trainable: Any = None
) -> TrainState:
    """A fresh state at step 0; the EMA starts equal to the initial parameters.

    `trainable`: None, or a tree of Python bools over `params` (`models.lora.
    trainable_mask`): the EMA then holds only the trainable leaves
    (`lora.trainable_subset`); a frozen leaf's average is the leaf itself.
    """
    ema = params if trainable is None else lora.trainable_subset(params, trainable)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.tree.map(jnp.copy, ema),
        opt_state=tx.init(params),
    )


def ema_decay(
    num_updates: jax.Array,
    *,
    power: float = 0.75,
    max_decay: float = 0.9999,
    min_decay: float = 0.0,
    inv_gamma: float = 1.0,
    update_after_step: int = 0,
) -> jax.Array:
    """Diffusion Policy's EMA warm-up: decay grows with the number of updates.

      n = max(0, num_updates - update_after_step - 1)
      decay = 0                                          if n == 0
      decay = clip(1 - (1 + n / inv_gamma) ** -power, min_decay, max_decay)  otherwise

    With power 0.75 the decay reaches 0.999 at ~10k updates and 0.9999 at ~215k, so
    early EMA weights follow the fast-moving parameters instead of the random init.

    Args:
      num_updates: EMA updates performed before this one (the train step, int scalar).
    Returns:
      float32 scalar decay for this update: ema <- decay * ema + (1 - decay) * params.
    References:
      Chi et al. 2023, Diffusion Policy, `diffusion_policy/model/diffusion/ema_model.py`.
    """
    n = jnp.maximum(0, num_updates - update_after_step - 1).astype(jnp.float32)
    value = 1.0 - (1.0 + n / inv_gamma) ** (-power)
    value = jnp.clip(value, min_decay, max_decay)
    return jnp.where(n <= 0, 0.0, value)


def update_ema(ema_params: Any, params: Any, decay: jax.Array) -> Any:
    """ema <- decay * ema + (1 - decay) * params, leaf-wise in each leaf's dtype."""
    return jax.tree.map(
        lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype), ema_params, params
    )

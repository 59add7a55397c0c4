"""The pure training step: one objective-agnostic update of the train state."""

from collections.abc import Callable
from typing import Any

import jax
import optax

from action_gen.train.state import TrainState, ema_decay, update_ema


def train_step(
    state: TrainState,
    batch: dict,
    rng: jax.Array,
    *,
    apply_fn: Callable,
    loss_fn: Callable,
    tx: optax.GradientTransformation,
    lr_schedule: Callable | None = None,
    ema_power: float = 0.75,
    ema_max_decay: float = 0.9999,
) -> tuple[TrainState, dict[str, Any]]:
    """One optimizer update and EMA update; objective and model are bound by the caller.

    Args:
      state: the current TrainState.
      batch: dict of global arrays keyed by data/schema.py (`actions` [B, H, A], ...).
      rng: the run's base key; this step's randomness is `fold_in(rng, state.step)`, so
        a resumed run draws exactly the noise an uninterrupted one would.
      apply_fn: `apply_fn(params, obs, x, t) -> [B, H, A]`.
      loss_fn: an objective's `loss(apply_fn, params, batch, rng) -> (scalar, aux)`.
      tx: the optax optimizer.
    Returns:
      (new state, metrics dict of scalars).
    """
    step_rng = jax.random.fold_in(rng, state.step)

    def objective(params):
        return loss_fn(apply_fn, params, batch, step_rng)

    (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = ema_decay(state.step, power=ema_power, max_decay=ema_max_decay)
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        ema_params=update_ema(state.ema_params, params, decay),
        opt_state=opt_state,
    )
    metrics = {
        "loss": loss,
        "grad_norm": optax.global_norm(grads),
        "param_norm": optax.global_norm(params),
        "ema_decay": decay,
        **aux,
    }
    if lr_schedule is not None:
        metrics["learning_rate"] = lr_schedule(state.step)
    return new_state, metrics

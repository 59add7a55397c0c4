"""The pure training step: one objective-agnostic update of the train state.

Precision and memory knobs, all inside the one jitted step:
- `compute_dtype="bfloat16"`: the model runs on bf16 copies of the float32 master
  parameters and float observations/actions; its output is cast back to float32 so the
  loss is reduced in float32. The cast is part of the differentiated function, so
  gradients arrive in float32 and the optimizer updates float32 weights.
- `grad_accum_steps=K`: the global batch [B, ...] is split into K micro-batches of B / K
  rows (a `lax.scan`, so activations of one micro-batch live at a time) and
      g = 1/K sum_k grad L_k(θ),   loss = 1/K sum_k L_k(θ),
  which equals one step on the whole batch when L is a mean over equally sized rows
  (masked losses: equal when every micro-batch has the same number of real entries).
- `remat`: rematerialise the model's forward pass in the backward pass (`jax.checkpoint`);
  "full" saves nothing but the inputs, "dots" keeps matmul/conv outputs. Per-block remat
  is the model's own knob (π0: `model.remat`).
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from action_gen import models
from action_gen.models import lora
from action_gen.train.state import TrainState, ema_decay, update_ema

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def cast_floats(tree: Any, dtype) -> Any:
    """Every floating leaf of `tree` cast to `dtype`; integer/bool leaves untouched."""
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x,
        tree,
    )


def wrap_apply_fn(apply_fn: Callable, *, compute_dtype=None, remat: str = "none") -> Callable:
    """`apply_fn` computing in `compute_dtype` (output float32) and/or rematerialised.

    Args:
      apply_fn: `apply_fn(params, obs, x [B, H, A], t [B]) -> [B, H, A]`, or a
        `models.ContextApply` (its prepare/apply split is kept).
      compute_dtype: None or "float32" (unchanged), or e.g. "bfloat16".
      remat: "none", "full" or "dots" (see REMAT_POLICIES).
    """
    if remat not in ("none", *REMAT_POLICIES):
        raise ValueError(f"train.remat: unknown policy {remat!r}; use none|full|dots")
    dtype = None if compute_dtype in (None, "float32") else jnp.dtype(compute_dtype)
    if dtype is None and remat == "none":
        return apply_fn

    def maybe_remat(fn):
        return fn if remat == "none" else jax.checkpoint(fn, policy=REMAT_POLICIES[remat])

    def cast(tree):
        return tree if dtype is None else cast_floats(tree, dtype)

    def to_f32(y):
        return y if dtype is None else y.astype(jnp.float32)

    if isinstance(apply_fn, models.ContextApply):
        prepare = maybe_remat(lambda p, o: apply_fn.prepare(cast(p), cast(o)))
        apply = maybe_remat(lambda p, c, x, t: to_f32(apply_fn.apply(cast(p), c, cast(x), t)))
        return models.ContextApply(prepare=prepare, apply=apply)
    return maybe_remat(lambda p, o, x, t: to_f32(apply_fn(cast(p), cast(o), cast(x), t)))


def split_micro_batches(batch: dict, num_micro: int) -> dict:
    """[B, ...] → [K, B / K, ...]; micro-batch k holds rows k, K + k, 2K + k, ...

    Strided rather than contiguous rows: the batch is split over devices in contiguous
    blocks, so each device keeps its own rows in every micro-batch (no communication).
    """

    def split(x):
        if x.shape[0] % num_micro:
            raise ValueError(
                f"train.grad_accum_steps={num_micro} does not divide the batch size {x.shape[0]}"
            )
        x = x.reshape(x.shape[0] // num_micro, num_micro, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return jax.tree.map(split, batch)


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
    grad_accum_steps: int = 1,
    compute_dtype: str | None = None,
    remat: str = "none",
    pass_ema_params: bool = False,
    trainable: Any = None,
) -> tuple[TrainState, dict[str, Any]]:
    """One optimizer update and EMA update; objective and model are bound by the caller.

    Args:
      state: the current TrainState (float32 master parameters).
      batch: dict of global arrays keyed by data/schema.py (`actions` [B, H, A], ...).
      rng: the run's base key; this step's randomness is `fold_in(rng, state.step)` (and
        micro-batch k's `fold_in(that, k)` when accumulating), so a resumed run draws
        exactly the noise an uninterrupted one would.
      apply_fn: `apply_fn(params, obs, x, t) -> [B, H, A]`.
      loss_fn: an objective's `loss(apply_fn, params, batch, rng) -> (scalar, aux)`.
      tx: the optax optimizer.
      grad_accum_steps: K micro-batches per update (B must be divisible by K).
      compute_dtype: the model's compute dtype (None/"float32", or "bfloat16").
      remat: "none" | "full" | "dots", see `wrap_apply_fn`.
      pass_ema_params: call `loss_fn(..., ema_params=state.ema_params)` (a distillation
        target; `objectives.Objective.uses_ema_params`). The EMA is not differentiated.
      trainable: None (every leaf trains), or a tree of Python bools over `state.params`
        (`models.lora.trainable_mask`): gradients are taken for the trainable leaves only
        (frozen leaves are constants of the loss: no gradient memory), the optimizer
        updates those (`tx` masks the rest), and the EMA covers them
        (`state.ema_params` is `lora.trainable_subset(params)`).
    Returns:
      (new state, metrics dict of scalars).
    """
    step_rng = jax.random.fold_in(rng, state.step)
    model_fn = wrap_apply_fn(apply_fn, compute_dtype=compute_dtype, remat=remat)
    extra = {"ema_params": state.ema_params} if pass_ema_params else {}
    if trainable is None:
        train_params, frozen = state.params, None
    else:
        train_params, frozen = lora.split_trainable(state.params, trainable)

    def full(params):
        return params if frozen is None else lora.combine(params, frozen)

    grad_fn = jax.value_and_grad(
        lambda params, b, key: loss_fn(model_fn, full(params), b, key, **extra), has_aux=True
    )

    if grad_accum_steps == 1:
        (loss, aux), grads = grad_fn(train_params, batch, step_rng)
    else:
        micro = split_micro_batches(batch, grad_accum_steps)

        def accumulate(grad_sum, inputs):
            index, micro_batch = inputs
            (value, aux), g = grad_fn(
                train_params, micro_batch, jax.random.fold_in(step_rng, index)
            )
            return jax.tree.map(jnp.add, grad_sum, g), (value, aux)

        zeros = jax.tree.map(jnp.zeros_like, train_params)
        grad_sum, (losses, auxes) = jax.lax.scan(
            accumulate, zeros, (jnp.arange(grad_accum_steps), micro)
        )
        grads = jax.tree.map(lambda g: g / grad_accum_steps, grad_sum)
        loss = jnp.mean(losses)
        aux = jax.tree.map(lambda a: jnp.mean(a, axis=0), auxes)

    if frozen is None:
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema_target = params
    else:
        # The masked optimizer takes the whole tree; the frozen leaves' zero "gradients"
        # are ignored by its set_to_zero branch (dead code for XLA).
        all_grads = lora.combine(grads, jax.tree.map(jnp.zeros_like, frozen))
        updates, opt_state = tx.update(all_grads, state.opt_state, state.params)
        updates = lora.trainable_subset(updates, trainable)
        ema_target = optax.apply_updates(train_params, updates)
        params = lora.combine(ema_target, frozen)
    decay = ema_decay(state.step, power=ema_power, max_decay=ema_max_decay)
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        ema_params=update_ema(state.ema_params, ema_target, decay),
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


def step_options(train_config) -> dict:
    """The `train_step` keyword options set by `config.train`."""
    return {
        "grad_accum_steps": int(train_config.grad_accum_steps),
        "compute_dtype": train_config.compute_dtype,
        "remat": train_config.remat,
    }

"""The optimizer: AdamW with linear warm-up then cosine decay, after global-norm clipping;
with a trainable mask (frozen leaves, LoRA), only the trainable leaves carry its state."""

from typing import Any

import jax
import ml_collections
import optax

TRAINABLE, FROZEN = "trainable", "frozen"


def create_learning_rate_schedule(config: ml_collections.ConfigDict, num_train_steps: int):
    """Linear warm-up from 0 to `config.lr` over `config.warmup_steps`, cosine to
    `config.lr * config.final_lr_fraction` at `num_train_steps` (DP's 'cosine' schedule)."""
    warmup = min(int(config.warmup_steps), max(num_train_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.lr,
        warmup_steps=warmup,
        decay_steps=max(num_train_steps, warmup + 1),
        end_value=config.lr * config.final_lr_fraction,
    )


def create_optimizer(
    config: ml_collections.ConfigDict, num_train_steps: int, trainable: Any = None
):
    """Returns `(tx, lr_schedule)`.

    `trainable`: None (every leaf trains), or a tree of Python bools over the parameters
    (`models.lora.trainable_mask`): the optimizer is then `optax.multi_transform` of the
    chain below on the trainable leaves and `optax.set_to_zero` on the frozen ones, so
    Adam's moments exist for trainable leaves only (masked leaves hold `optax.MaskedNode`,
    no array) and gradient clipping sees only trainable gradients.

    `config` fields: lr, warmup_steps, b1, b2, eps, weight_decay, grad_clip_norm
    (<= 0 disables clipping), final_lr_fraction (optional), flatten (optional, default
    False: the optimizer runs on one flat vector of all parameters (`optax.flatten`), a
    few large kernels instead of several per parameter leaf; same update, another layout
    of the optimizer state, so a checkpoint resumes only under the same setting).
    """
    schedule = create_learning_rate_schedule(config, num_train_steps)
    transforms = []
    if config.grad_clip_norm and config.grad_clip_norm > 0:
        transforms.append(optax.clip_by_global_norm(config.grad_clip_norm))
    transforms.append(
        optax.adamw(
            learning_rate=schedule,
            b1=config.b1,
            b2=config.b2,
            eps=config.eps,
            weight_decay=config.weight_decay,
        )
    )
    tx = optax.chain(*transforms)
    if config.flatten:
        tx = optax.flatten(tx)
    if trainable is not None:
        labels = jax.tree.map(lambda t: TRAINABLE if t else FROZEN, trainable)
        tx = optax.multi_transform({TRAINABLE: tx, FROZEN: optax.set_to_zero()}, labels)
    return tx, schedule

"""The optimizer: AdamW with linear warm-up then cosine decay, after global-norm clipping."""

import ml_collections
import optax


def create_learning_rate_schedule(config: ml_collections.ConfigDict, num_train_steps: int):
    """Linear warm-up from 0 to `config.lr` over `config.warmup_steps`, cosine to
    `config.lr * config.final_lr_fraction` at `num_train_steps` (DP's 'cosine' schedule)."""
    warmup = min(int(config.warmup_steps), max(num_train_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.lr,
        warmup_steps=warmup,
        decay_steps=max(num_train_steps, warmup + 1),
        end_value=config.lr * config.get("final_lr_fraction", 0.0),
    )


def create_optimizer(config: ml_collections.ConfigDict, num_train_steps: int):
    """Returns `(tx, lr_schedule)`.

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
    if config.get("flatten", False):
        tx = optax.flatten(tx)
    return tx, schedule

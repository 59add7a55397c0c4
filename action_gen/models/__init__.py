"""Action models, chosen by name from the config (`config.model.name = "unet1d"`).

Every model is a Linen module called as
`model.apply({"params": params}, obs, noisy_actions, time) -> [B, H, A]`.
"""

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from action_gen.data import normalize, schema, spec
from action_gen.models import pi0, token_head, transformer, unet1d

# name -> module class; the remaining config fields are its constructor kwargs.
MODELS: dict[str, type[nn.Module]] = {
    "unet1d": unet1d.ConditionalUnet1D,
    "pi0": pi0.Pi0,
    "token_head": token_head.TokenHead,
    "transformer": transformer.TransformerForDiffusion,
}


def _plain(value):
    # ConfigDict / FieldReference values (lists from JSON-restored configs) → hashable.
    if isinstance(value, list | tuple):
        return tuple(_plain(v) for v in value)
    return value


def create_model(config) -> nn.Module:
    """The module named `config.name`, built with the config's other fields as kwargs.

    Args:
      config: a ConfigDict (or mapping) with `name` and the module's attributes, e.g.
        `name="unet1d", down_dims=(256, 512, 1024), kernel_size=5, time_embed_dim=256`.
    """
    fields = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    name = fields.pop("name")
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    return MODELS[name](**{k: _plain(v) for k, v in fields.items()})


def example_observation(obs_horizon: int, state_dim: int, batch_size: int = 1) -> dict:
    """A zero observation with the batch schema's shapes, for init and compilation."""
    return {
        schema.OBS_STATE: jnp.zeros((batch_size, obs_horizon, state_dim), jnp.float32),
        schema.OBS_PAD_MASK: jnp.ones((batch_size, obs_horizon), bool),
    }


def init_params(model: nn.Module, rng: jax.Array, example_obs: dict, action_shape) -> dict:
    """Initial parameters (plain arrays, axis-name annotations stripped).

    Args:
      model: a module from `create_model`.
      rng: PRNG key.
      example_obs: an observation dict with a batch dimension (any batch size).
      action_shape: (H, A).
    Returns:
      The `params` collection.
    """
    batch = example_obs[schema.OBS_STATE].shape[0]
    actions = jnp.zeros((batch, *action_shape), jnp.float32)
    time = jnp.zeros((batch,), jnp.float32)
    # jit: eager init compiles every initializer op by op (~8 s even for the tiny U-Net).
    variables = jax.jit(model.init)(rng, example_obs, actions, time)
    return nn.meta.unbox(variables["params"])


def abstract_params(model: nn.Module, example_obs: dict, action_shape) -> dict:
    """`init_params`'s tree with `jax.ShapeDtypeStruct` leaves: traced only
    (`jax.eval_shape`), nothing compiled or allocated."""
    return jax.eval_shape(
        lambda key: init_params(model, key, example_obs, action_shape), jax.random.key(0)
    )


def abstract_checkpoint_params(config, norm_stats: dict) -> tuple[nn.Module, dict]:
    """The model a run's stored `config` builds and its abstract parameters, the state and
    action dims read from the run's `norm_stats` (what restoring a checkpoint needs).

    Returns:
      (model, abstract params as in `abstract_params`).
    """
    state_dim, data_action_dim = normalize.feature_dims(norm_stats)
    action_dim = spec.model_action_dim(config.model, data_action_dim)
    model = create_model(config.model)
    example_obs = spec.example_observation(spec.observation_spec(config.data, state_dim))
    return model, abstract_params(model, example_obs, (config.data.action_horizon, action_dim))


def student_head_from_teacher(student_params: dict, teacher_params: dict, key: jax.Array) -> dict:
    """`student_params` with a head only the student has started from the teacher's output
    layer: the U-Net's multiple-choice `hypotheses_conv` from its `final_conv`
    (`unet1d.hypotheses_from_output_layer`). Unchanged when there is no such head."""
    head, output = unet1d.HYPOTHESES_HEAD, unet1d.OUTPUT_LAYER
    if head not in student_params or output not in teacher_params or output in student_params:
        return student_params
    action_dim = teacher_params[output]["bias"].shape[-1]
    num_hypotheses = student_params[head]["bias"].shape[-1] // (action_dim + 1)
    tiled = unet1d.hypotheses_from_output_layer(teacher_params[output], num_hypotheses, key)
    if jax.tree.map(jnp.shape, tiled) != jax.tree.map(jnp.shape, dict(student_params[head])):
        raise ValueError(
            f"the student's {head} does not fit {num_hypotheses} copies of the teacher's {output}"
        )
    return {**student_params, head: tiled}


def param_logical_axes(model: nn.Module, example_obs: dict, action_shape) -> dict:
    """The logical axis names of every parameter (a PartitionSpec pytree), for sharding."""
    batch = example_obs[schema.OBS_STATE].shape[0]
    actions = jnp.zeros((batch, *action_shape), jnp.float32)
    time = jnp.zeros((batch,), jnp.float32)
    abstract = jax.eval_shape(model.init, jax.random.key(0), example_obs, actions, time)
    return nn.get_partition_spec(abstract)["params"]


def make_apply_fn(model: nn.Module) -> "ContextApply":
    """The `apply_fn(params, obs, x, t) -> [B, H, A]` every objective takes, as a
    ContextApply: a model with `prepare(obs)` and `apply_with_context(context, x, t)`
    methods (π0: the prefix KV cache) has its observation-only work split off, so samplers
    run it once per chunk; other models get the observation itself as context."""
    if not (hasattr(model, "prepare") and hasattr(model, "apply_with_context")):
        apply_fn = make_uncached_apply_fn(model)
        return ContextApply(prepare=lambda params, obs: obs, apply=apply_fn)

    def prepare(params, obs):
        return model.apply({"params": params}, obs, method="prepare")

    def apply(params, context, noisy_actions, time):
        return model.apply(
            {"params": params}, context, noisy_actions, time, method="apply_with_context"
        )

    return ContextApply(prepare=prepare, apply=apply)


def make_uncached_apply_fn(model: nn.Module) -> Callable:
    """A plain `apply_fn(params, obs, x, t) -> [B, H, A]` that samplers cannot split: the
    whole model runs at every step. The reference that tests and benchmarks compare the
    cached path against; production code uses `make_apply_fn`."""

    def apply_fn(params, obs, noisy_actions, time):
        return model.apply({"params": params}, obs, noisy_actions, time)

    return apply_fn


@dataclasses.dataclass(frozen=True)
class ContextApply:
    """An `apply_fn` whose observation-only work runs once per chunk, not once per step.

    Samplers call `context = prepare(params, obs)` before their `lax.scan` and
    `apply(params, context, x, t)` inside it (π0: the prefix KV cache; U-Net: nothing to
    hoist). Calling it like a plain apply_fn does both, so losses need not care.
    """

    prepare: Callable  # (params, obs) -> context pytree
    apply: Callable  # (params, context, x [B, H, A], t [B]) -> [B, H, A]

    def __call__(self, params, obs, noisy_actions, time):
        return self.apply(params, self.prepare(params, obs), noisy_actions, time)


def split_apply_fn(apply_fn: Callable, params, obs) -> tuple[Callable, object]:
    """(step_fn, context) with `step_fn(params, context, x, t)`, for samplers: a
    ContextApply is split; a plain apply_fn gets the observation as its context."""
    if isinstance(apply_fn, ContextApply):
        return apply_fn.apply, apply_fn.prepare(params, obs)
    return apply_fn, obs

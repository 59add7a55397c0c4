"""Training objectives, chosen by name from the config (`config.objective.name`).

Every objective module exports pure functions
  `loss(apply_fn, params, batch, rng, **cfg) -> (scalar, aux)` and
  `sample(apply_fn, params, obs, rng, num_steps, **cfg) -> actions [B, H, A]`,
with `apply_fn(params, obs, x, t) -> [B, H, A]`. `create_objective` binds the config, so
train/ and sample/ never branch on the method.
"""

import functools
import inspect
from collections.abc import Callable
from types import ModuleType
from typing import NamedTuple

from action_gen.objectives import diffusion, flow, regression, tokens

OBJECTIVES: dict[str, ModuleType] = {
    "diffusion": diffusion,
    "flow": flow,
    "regression": regression,
    "tokens": tokens,
}

# Config fields that belong to callers, not to the objective's functions.
_CALLER_FIELDS = {"name", "num_sample_steps"}


class Objective(NamedTuple):
    """`loss(apply_fn, params, batch, rng)` and `sample(apply_fn, params, obs, rng, num_steps)`."""

    loss: Callable
    sample: Callable


def _keyword_params(fn: Callable) -> set[str]:
    return {
        name
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def _sampling_fields() -> frozenset[str]:
    loss_fields = set().union(*(_keyword_params(m.loss) for m in OBJECTIVES.values()))
    sample_fields = set().union(*(_keyword_params(m.sample) for m in OBJECTIVES.values()))
    # action_shape is bound by create_objective, not read from the config.
    return frozenset((sample_fields - loss_fields - {"action_shape"}) | {"num_sample_steps"})


# Objective config fields that only change how a trained model is sampled, never what it
# learns (e.g. sampler, eta, integrator, clip_sample, temperature, num_sample_steps): a
# keyword argument of some objective's `sample` that no objective's `loss` takes. A
# checkpoint may be resumed, or evaluated, under other values of these.
SAMPLING_FIELDS: frozenset[str] = _sampling_fields()


def create_objective(config, action_shape) -> Objective:
    """The objective named `config.name` with the config's other fields bound.

    Each field goes to whichever of loss / sample takes it as a keyword-only argument
    (`schedule` to both, `sampler` to sample only); `name` and `num_sample_steps` are for
    the caller; any other unknown field is an error, so typos don't pass silently.

    Args:
      config: ConfigDict (or mapping), e.g. name="diffusion", sampler="ddim", ...
      action_shape: (H, A), bound into `sample` (the shape of the drawn chunk).
    Returns:
      Objective(loss, sample).
    """
    fields = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    name = fields.get("name")
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; known: {sorted(OBJECTIVES)}")
    module = OBJECTIVES[name]
    fields = {k: v for k, v in fields.items() if k not in _CALLER_FIELDS}
    loss_keys, sample_keys = _keyword_params(module.loss), _keyword_params(module.sample)
    unknown = set(fields) - loss_keys - sample_keys
    if unknown:
        raise ValueError(f"objective {name!r} does not take config field(s) {sorted(unknown)}")
    loss_kwargs = {k: v for k, v in fields.items() if k in loss_keys}
    sample_kwargs = {k: v for k, v in fields.items() if k in sample_keys}
    sample_kwargs["action_shape"] = tuple(int(d) for d in action_shape)
    return Objective(
        loss=functools.partial(module.loss, **loss_kwargs),
        sample=functools.partial(module.sample, **sample_kwargs),
    )

"""Training objectives, chosen by name from the config (`config.objective.name`).

Every objective module exports pure functions
  `loss(apply_fn, params, batch, rng, **cfg) -> (scalar, aux)`,
  `sample(apply_fn, params, obs, rng, num_steps, **cfg) -> actions [B, H, A]` and
  `sampler_label(**sample_cfg) -> str` (the sampler's name in results and tables),
with `apply_fn(params, obs, x, t) -> [B, H, A]` (a `models.ContextApply`). A module may
also export what only some objectives can do; `create_objective` binds the config into
each and the returned `Objective` carries them as capabilities, so no caller outside
objectives/ asks which objective it holds:
  `sample_guided(apply_fn, params, obs, rng, num_steps, prefix, prefix_weights, **cfg)`
      inpainting towards a given prefix (real-time chunking; flow),
  `sample_from_noise(apply_fn, params, obs, rng, num_steps, noise, **cfg)`
      the sampler from a given initial noise [B, H, A] (diffusion, flow, consistency,
      shortcut: their `sample` is built from it by objectives/from_noise.py),
  `representation_error(raw_actions, action_stats, action_norm, **cfg) -> dict`
      what the objective's action representation loses on given actions (tokens).
A `loss` may also take, as keyword arguments that are not config fields:
  `teacher_apply_fn`, `teacher_params`: a trained teacher (consistency distillation),
      bound by `create_objective(..., teacher=Teacher(apply_fn, params))`; the config
      names the teacher's run in `teacher_workdir` (`Objective.teacher_workdir`);
  `ema_params`: the train state's EMA parameters (a distillation target), passed by the
      train step when `Objective.uses_ema_params`.
"""

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any, NamedTuple

from action_gen.objectives import consistency, diffusion, flow, regression, shortcut, tokens

OBJECTIVES: dict[str, ModuleType] = {
    "consistency": consistency,
    "diffusion": diffusion,
    "flow": flow,
    "regression": regression,
    "shortcut": shortcut,
    "tokens": tokens,
}

# Config fields that belong to callers, not to the objective's functions.
_CALLER_FIELDS = {"name", "num_sample_steps", "teacher_workdir"}
# Optional module functions: capability name -> the module function that provides it.
_CAPABILITIES = ("sample_guided", "sample_from_noise", "representation_error")
# Loss arguments that callers pass at run time, never config fields.
_RUNTIME_LOSS_ARGS = {"teacher_apply_fn", "teacher_params", "ema_params"}


class Teacher(NamedTuple):
    """A trained model a distillation objective learns from.

    Attributes:
      apply_fn: its `apply_fn(params, obs, x, t) -> [B, H, A]` (a `models.ContextApply`).
      params: its (EMA) parameters.
    """

    apply_fn: Callable
    params: Any


@dataclasses.dataclass(frozen=True)
class Objective:
    """An objective with its config bound.

    Attributes:
      name: the config's `objective.name` (for logs and results; callers never branch on it).
      loss: `loss(apply_fn, params, batch, rng) -> (scalar, aux)`.
      sample: `sample(apply_fn, params, obs, rng, num_steps) -> [B, H, A]`.
      sample_guided: `sample_guided(apply_fn, params, obs, rng, num_steps, prefix [B, H, A],
        prefix_weights [B, H], *, max_guidance) -> [B, H, A]` bound with the same sampler
        settings as `sample`, or None where the objective cannot inpaint.
      sample_from_noise: `sample_from_noise(apply_fn, params, obs, rng, num_steps,
        noise [B, H, A]) -> [B, H, A]`: the sampler started from given noise (`rng` only
        for stochastic samplers' per-step noise), or None where there is no initial noise.
      representation_error: `fn(raw_actions [..., A], action_stats, action_norm) -> dict`
        of floats, or None where the representation is lossless.
      sampling_settings: every sampling-only setting in force (the config's values, the
        sampler's defaults for the rest), e.g. {"sampler": "ddim", "eta": 0.0, ...}.
      sampler_label: the sampler as results and tables name it ("ddim", "euler", "greedy").
      teacher_workdir: the config's `teacher_workdir` (a teacher run's workdir, relative
        to the student's), or None for objectives that learn from data alone.
      teacher_params: the bound teacher's parameters, or None. `loss` closes over them;
        the train program passes them as an explicit argument instead
        (`loss(..., teacher_params=...)`), so they are not compiled in as constants.
      uses_ema_params: whether `loss` takes `ema_params=` (the train state's EMA).
    """

    name: str
    loss: Callable
    sample: Callable
    sample_guided: Callable | None
    sample_from_noise: Callable | None
    representation_error: Callable | None
    sampling_settings: Mapping[str, Any]
    sampler_label: str
    teacher_workdir: str | None = None
    teacher_params: Any = None
    uses_ema_params: bool = False

    @property
    def needs_teacher(self) -> bool:
        """Whether training needs a teacher (`teacher_workdir`: the teacher's run)."""
        return self.teacher_workdir is not None

    @property
    def supports_guided_sampling(self) -> bool:
        """Whether `sample_guided` (real-time chunking's inpainting sampler) exists."""
        return self.sample_guided is not None

    def summary(self) -> dict[str, Any]:
        """The objective and its sampler, for results.json and tables."""
        return {"objective": self.name, "sampler": self.sampler_label, **self.sampling_settings}


def _keyword_params(fn: Callable) -> dict[str, Any]:
    """{name: default (inspect.Parameter.empty if none)} of fn's keyword-only parameters."""
    return {
        name: p.default
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


def family_settings(family: str, objective_config: Mapping) -> dict[str, Any]:
    """{setting: value} of the probability-flow ODE of objective `family` ("flow",
    "diffusion": its module's FAMILY_SETTINGS) as `objective_config` states them, the
    family's defaults (its `sample_from_noise`'s) where it does not: what a distillation
    student must read of its teacher (compat.check_distillation)."""
    module = OBJECTIVES.get(family)
    if module is None or not hasattr(module, "FAMILY_SETTINGS"):
        raise ValueError(f"objective {family!r} has no probability-flow ODE to distill")
    defaults = _keyword_params(module.sample_from_noise)
    return {
        k: objective_config[k] if k in objective_config else defaults[k]
        for k in module.FAMILY_SETTINGS
    }


def _bind(fn: Callable, fields: dict) -> Callable:
    """fn with those of `fields` that it takes as keyword-only arguments bound."""
    accepted = _keyword_params(fn)
    return functools.partial(fn, **{k: v for k, v in fields.items() if k in accepted})


def create_objective(config, action_shape, teacher: Teacher | None = None) -> Objective:
    """The objective named `config.name` with the config's other fields bound.

    Each field goes to whichever of loss / sample (and the optional capabilities) takes it
    as a keyword-only argument (`schedule` to both, `sampler` to sample only); `name` and
    `num_sample_steps` are for the caller; any other unknown field is an error, so typos
    don't pass silently.

    Args:
      config: ConfigDict (or mapping), e.g. name="diffusion", sampler="ddim", ...
      action_shape: (H, A), bound into `sample` (the shape of the drawn chunk).
      teacher: the trained teacher of a distillation objective (its `loss` takes
        `teacher_apply_fn`); without one such a loss raises, while sampling works.
    Returns:
      An `Objective`.
    """
    fields = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    name = fields.get("name")
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; known: {sorted(OBJECTIVES)}")
    module = OBJECTIVES[name]
    teacher_workdir = fields.get("teacher_workdir") or None
    fields = {k: v for k, v in fields.items() if k not in _CALLER_FIELDS}
    loss_keys, sample_keys = _keyword_params(module.loss), _keyword_params(module.sample)
    if teacher is not None:
        if "teacher_apply_fn" not in loss_keys:
            raise ValueError(f"objective {name!r} does not learn from a teacher")
        loss_fields = {
            **fields,
            "teacher_apply_fn": teacher.apply_fn,
            "teacher_params": teacher.params,
        }
    else:
        loss_fields = fields
    unknown = set(fields) - (set(loss_keys) - _RUNTIME_LOSS_ARGS) - set(sample_keys)
    if unknown:
        raise ValueError(f"objective {name!r} does not take config field(s) {sorted(unknown)}")
    if teacher_workdir and "teacher_apply_fn" not in loss_keys:
        raise ValueError(f"objective {name!r} does not learn from a teacher (teacher_workdir)")
    sample_fields = {**fields, "action_shape": tuple(int(d) for d in action_shape)}
    settings = {
        k: fields.get(k, default)
        for k, default in sample_keys.items()
        if k in SAMPLING_FIELDS and default is not inspect.Parameter.empty
    }
    capabilities = {
        cap: _bind(getattr(module, cap), sample_fields) if hasattr(module, cap) else None
        for cap in _CAPABILITIES
    }
    return Objective(
        name=name,
        loss=_bind(module.loss, loss_fields),
        sample=_bind(module.sample, sample_fields),
        sampling_settings=settings,
        sampler_label=module.sampler_label(**settings),
        teacher_workdir=teacher_workdir,
        teacher_params=None if teacher is None else teacher.params,
        uses_ema_params="ema_params" in loss_keys,
        **capabilities,
    )

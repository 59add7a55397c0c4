"""The ordered transform pipeline between a robot (or a dataset) and the model, declared once.

    INPUTS   robot → delta_actions → normalize → prompt → tokenize → pad
    OUTPUTS  unpad → unnormalize → absolute_actions → robot

(openpi's `transforms.Group`: repack, robot inputs, DeltaActions, Normalize, prompt,
TokenizePrompt, PadStatesAndActions, and back.) One `TransformPipeline` is built per run from
its config and normalization stats (`create_pipeline`); the training stream
(`train/loop.py`: every batch) and the Policy (`sample/policy.py`: every observation and every
chunk) both call it, so they cannot disagree on order, statistics or conventions.

Stages, on batched numpy dicts in our schema (data/schema.py; B leading):
  robot             the robot adapter's joint convention (data/robots.py): the state [B, T, S]
                    and, when present, the actions [B, H, A] into the model's space. (Where
                    each part sits in the robot's own dict or dataset is the adapter's repack,
                    done before: `RobotAdapter.from_client` per request, the adapter's dataset
                    mapping inside tf.data.) Identity without an adapter.
  delta_actions     actions[..., d] −= state[:, −1, d] on the adapter's delta dims d (the
                    current state, as openpi's DeltaActions).
  normalize         state and actions with the run's stats (`normalize.py` maps; a mixture's
                    windows each with their own dataset's, by `schema.DATASET_INDEX`); stats
                    wider than the data are cut to its width (openpi's Normalize).
  prompt            a missing or empty instruction gets the default prompt; a format that
                    writes the state (openpi_pi05) takes the *normalized* state of the current
                    step at the robot's width.
  tokenize          `prompt` [B] → `prompt_tokens` / `prompt_mask` [B, L] (data/tokenizer.py).
  pad               the state zero-padded to the model's state dim; actions to the model's
                    action dim, with `action_dim_mask` [B, A].
and back, on the model's normalized chunk [B, H, A_model]:
  unpad             cut to the robot's (the dataset's) action dim.
  unnormalize       with the same stats.
  absolute_actions  actions[..., d] += the current model-space state on the delta dims.
  robot             the adapter's convention back to the robot's joints.

Arithmetic: each affine map runs in the dtype it is given (float32 batches from tf.data,
float64 states from a robot client, as openpi normalizes them), with float64 tables; what the
model receives is float32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from action_gen.data import normalize, robots, schema, spec, tokenizer

INPUT_STAGES = ("robot", "delta_actions", "normalize", "prompt", "tokenize", "pad")
OUTPUT_STAGES = ("unpad", "unnormalize", "absolute_actions", "robot")
# The current (model-space, unnormalized) state [B, S] kept for the output stages.
CURRENT_STATE = "current_state"


def prompt_format(config) -> str:
    """`data.prompt_format`, checked."""
    fmt = tokenizer.check_prompt_format(config.data.prompt_format or "plain")
    if fmt != "plain" and not spec.prompt_max_len(config.data):
        raise ValueError(
            f"data.prompt_format={fmt!r} formats a prompt, but data.prompt_max_len is 0 "
            "(the model reads no language)"
        )
    return fmt


def create_prompt_tokenizer(config):
    """The tokenizer `config` asks for (None when the model reads no language), checked
    against the model's embedding table (`model.vocab_size`) when the model has one."""
    if not spec.prompt_max_len(config.data):
        return None
    tok = tokenizer.create_tokenizer(config.data.tokenizer)
    # A field of the models with a token embedding (the model section is open).
    table = config.model.vocab_size if "vocab_size" in config.model else None
    if table is not None and tok.vocab_size > int(table):
        raise ValueError(
            f"data.tokenizer={config.data.tokenizer!r} has {tok.vocab_size} "
            f"ids but model.vocab_size={table}; set model.vocab_size >= {tok.vocab_size}"
        )
    return tok


@dataclasses.dataclass(frozen=True)
class Normalization:
    """Per-dataset affine tables (float64): normalize x·scale + offset, unnormalize x·iscale +
    ioffset, for the D datasets of a run (D = 1 for one dataset or a served robot).

    Attributes:
      state_scale, state_offset: [D, S] (dims a dataset lacks: 0, i.e. normalized to 0).
      action_scale, action_offset, action_iscale, action_ioffset: [D, A].
      action_dims: [D] each dataset's own action dim (the rest is padding).
    """

    state_scale: np.ndarray
    state_offset: np.ndarray
    action_scale: np.ndarray
    action_offset: np.ndarray
    action_iscale: np.ndarray
    action_ioffset: np.ndarray
    action_dims: np.ndarray

    @classmethod
    def from_stats(
        cls,
        per_dataset: Sequence[Mapping],
        state_dim: int,
        action_dim: int,
        state_norm: str,
        action_norm: str,
    ) -> Normalization:
        """Tables for datasets with stats `per_dataset` (each {"state", "actions"}), in a run of
        state width `state_dim` and action width `action_dim`: stats wider than the run are
        cut, narrower ones padded (normalized to 0 there)."""
        count = len(per_dataset)
        tables = [np.zeros((count, state_dim)) for _ in range(2)]
        tables += [np.zeros((count, action_dim)) for _ in range(4)]
        dims = np.zeros(count, np.int64)
        for i, stats in enumerate(per_dataset):
            s = min(len(stats[normalize.STATE]["min"]), state_dim)
            a = min(len(stats[normalize.ACTIONS]["min"]), action_dim)
            state = _cut(stats[normalize.STATE], s)
            actions = _cut(stats[normalize.ACTIONS], a)
            tables[0][i, :s], tables[1][i, :s] = _affine64(state, state_norm, inverse=False)
            tables[2][i, :a], tables[3][i, :a] = _affine64(actions, action_norm, inverse=False)
            tables[4][i, :a], tables[5][i, :a] = _affine64(actions, action_norm, inverse=True)
            dims[i] = a
        return cls(*tables, dims)


def _cut(stats: Mapping, dim: int) -> dict:
    return {k: (v[:dim] if k != "count" else v) for k, v in stats.items()}


def _affine64(stats: Mapping, mode: str, *, inverse: bool):
    """normalize.py's (scale, offset) in float64 (the float32 values it serves are these,
    rounded)."""
    if mode == "none":
        dim = len(stats["min"])
        return np.ones(dim), np.zeros(dim)
    return normalize.affine_params(stats, mode, inverse=inverse, dtype=np.float64)


def _apply(x: np.ndarray, scale: np.ndarray, offset: np.ndarray, rows: np.ndarray, axis_t: bool):
    """x [B, (T|H), D] · scale[rows] + offset[rows] in x's float dtype (≥ float32)."""
    x = np.asarray(x)
    dtype = x.dtype if x.dtype == np.float64 else np.float32
    x = x.astype(dtype, copy=False)
    scale, offset = scale[rows].astype(dtype), offset[rows].astype(dtype)
    if axis_t:
        scale, offset = scale[:, None, :], offset[:, None, :]
    return x * scale + offset


@dataclasses.dataclass(frozen=True)
class TransformPipeline:
    """The run's pipeline (module docstring). Build with `create_pipeline`.

    Attributes:
      robot: the robot adapter (None: our own layout, no conventions).
      delta_mask: [A_data] bool, the delta dims (all False: none).
      norm: the Normalization tables.
      state_norm, action_norm: the modes (normalize.MODES).
      tokenizer: the prompt tokenizer (None: the model reads no language).
      prompt_format: data.prompt_format.
      prompt_max_len: L.
      default_prompt: the instruction of a row without one ("" = none).
      data_action_dim: the actions' width before padding (the robot's / the dataset's).
      model_action_dim: the model's action width (padding up to it).
      model_state_dim: the model's state width (a narrower robot's state is zero-padded to
        it after normalization, as in training on a mixture).
    """

    robot: robots.RobotAdapter | None
    delta_mask: np.ndarray
    norm: Normalization
    state_norm: str
    action_norm: str
    tokenizer: object
    prompt_format: str
    prompt_max_len: int
    default_prompt: str
    data_action_dim: int
    model_action_dim: int
    model_state_dim: int

    # -- inputs ---------------------------------------------------------------------------

    def inputs(self, batch: Mapping) -> tuple[dict, dict]:
        """INPUT_STAGES on one batch (training windows, or observations with or without
        actions: the RTC prefix travels as `actions`).

        Args:
          batch: our schema in the robot's units: OBS_STATE [B, T, S] (or [B, S]), optional
            ACTIONS [B, H, A], PROMPT [B], images, masks, and DATASET_INDEX [B] for a
            mixture (default: dataset 0).
        Returns:
          (the model's inputs: the same dict with the state / actions normalized float32,
           tokens, padding, DATASET_INDEX removed; the context the output stages need:
           {CURRENT_STATE: [B, S] model-space, unnormalized, DATASET_INDEX: [B]}).
        """
        out = dict(batch)
        state = np.asarray(out[schema.OBS_STATE])
        if state.ndim == 2:
            state = state[:, None]
        if state.ndim != 3:
            raise ValueError(
                f"batch[{schema.OBS_STATE!r}] has shape {state.shape}; expected [B, T, S]"
            )
        rows = np.asarray(out.pop(schema.DATASET_INDEX, np.zeros(len(state), np.int64)))
        rows = rows.astype(np.int64).reshape(-1)
        if len(self.norm.action_dims) == 1:  # one set of stats for every dataset
            rows = np.zeros_like(rows)
        actions = out.get(schema.ACTIONS)
        # robot
        if self.robot is not None:
            state = self.robot.state_to_model(state)
            if actions is not None:
                actions = self.robot.actions_to_model(actions)
        current = state[:, -1]
        # delta_actions
        if actions is not None and self.delta_mask.any():
            actions = np.array(actions, dtype=np.result_type(actions, current), copy=True)
            width = min(actions.shape[-1], len(self.delta_mask), current.shape[-1])
            mask = self.delta_mask[:width]
            actions[..., :width] -= np.where(mask, current[:, :width], 0)[:, None, :]
        # normalize
        s = state.shape[-1]
        n = self.norm
        normalized_state = _apply(state, n.state_scale[:, :s], n.state_offset[:, :s], rows, True)
        out[schema.OBS_STATE] = normalized_state.astype(np.float32)
        if s < self.model_state_dim:  # pad (the state; actions below)
            pad = [(0, 0), (0, 0), (0, self.model_state_dim - s)]
            out[schema.OBS_STATE] = np.pad(out[schema.OBS_STATE], pad)
        if actions is not None:
            a = np.asarray(actions).shape[-1]
            actions = _apply(actions, n.action_scale[:, :a], n.action_offset[:, :a], rows, True)
            out[schema.ACTIONS] = actions.astype(np.float32)
        # prompt, tokenize
        if self.tokenizer is not None:
            texts = self._prompts(out, len(state))
            states = normalized_state[:, -1] if tokenizer.needs_state(self.prompt_format) else None
            tokens, mask = tokenizer.tokenize_prompts(
                self.tokenizer,
                texts,
                self.prompt_max_len,
                prompt_format=self.prompt_format,
                states=states,
            )
            out[schema.PROMPT_TOKENS], out[schema.PROMPT_MASK] = tokens, mask
        # pad
        if actions is not None:
            out = self._pad_actions(out, rows)
        return out, {CURRENT_STATE: current, schema.DATASET_INDEX: rows}

    def _prompts(self, batch: Mapping, size: int) -> list:
        if schema.PROMPT not in batch:
            if not self.default_prompt:
                raise KeyError(
                    f"the model reads a language instruction (data.prompt_max_len="
                    f"{self.prompt_max_len}) but the batch has no {schema.PROMPT!r} key and "
                    f"there is no default prompt; its keys: {sorted(batch)}"
                )
            return [self.default_prompt] * size
        texts = list(np.asarray(batch[schema.PROMPT], dtype=object).reshape(-1))
        if self.default_prompt:
            texts = [t if len(_as_str(t).strip()) else self.default_prompt for t in texts]
        return texts

    def _pad_actions(self, batch: dict, rows: np.ndarray) -> dict:
        actions = batch[schema.ACTIONS]
        data_dim = actions.shape[-1]
        if data_dim > self.model_action_dim:
            raise ValueError(
                f"actions have {data_dim} dims, more than the model's {self.model_action_dim}"
            )
        if data_dim == self.model_action_dim and len(set(self.norm.action_dims.tolist())) == 1:
            if int(self.norm.action_dims[0]) >= data_dim:
                return batch  # no padding, no dataset with fewer dims: no mask needed
        pad = [(0, 0)] * (actions.ndim - 1) + [(0, self.model_action_dim - data_dim)]
        batch[schema.ACTIONS] = np.pad(actions, pad)
        own = self.norm.action_dims[rows]
        dim_mask = np.arange(self.model_action_dim)[None, :] < np.minimum(own, data_dim)[:, None]
        batch[schema.ACTION_DIM_MASK] = dim_mask
        return batch

    # -- outputs --------------------------------------------------------------------------

    def outputs(self, actions: np.ndarray, context: Mapping) -> np.ndarray:
        """OUTPUT_STAGES: the model's normalized chunk [B, H, A_model] → the robot's actions
        [B, H, A_data] (float32), with the context `inputs` returned."""
        actions = np.asarray(actions)[..., : self.data_action_dim]  # unpad
        rows = np.asarray(context[schema.DATASET_INDEX])
        a = actions.shape[-1]
        n = self.norm
        actions = _apply(actions, n.action_iscale[:, :a], n.action_ioffset[:, :a], rows, True)
        if self.delta_mask.any():  # absolute_actions
            current = np.asarray(context[CURRENT_STATE])
            actions = actions.astype(np.result_type(actions, current))
            width = min(a, len(self.delta_mask), current.shape[-1])
            mask = self.delta_mask[:width]
            actions[..., :width] += np.where(mask, current[:, :width], 0)[:, None, :]
        if self.robot is not None:
            actions = self.robot.actions_from_model(actions)
        return np.asarray(actions, np.float32)

    # -- statistics in the model's space --------------------------------------------------

    @property
    def changes_statistics(self) -> bool:
        """Whether the stats must be computed after the robot / delta stages (else the raw
        per-step stats of the dataset are the model's)."""
        return (self.robot is not None and self.robot.joints != "none") or bool(
            self.delta_mask.any()
        )


def _as_str(text) -> str:
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)


def model_space_rows(
    robot: robots.RobotAdapter | None, delta_mask: np.ndarray, action_horizon: int
):
    """The function (state [L, S], actions [L, A]) of one episode → (state rows, action
    rows) whose statistics normalize the model's inputs: the robot stage applied, and with
    delta actions every window's chunk relative to its current state ([L·H, A]: openpi
    computes its stats over the chunks after DeltaActions), else the per-step actions."""
    delta_mask = np.asarray(delta_mask, bool)

    def rows(state: np.ndarray, actions: np.ndarray):
        state = np.asarray(state, np.float64)
        actions = np.asarray(actions, np.float64)
        if robot is not None:
            state, actions = robot.state_to_model(state), robot.actions_to_model(actions)
        if not delta_mask.any():
            return state, actions
        length = len(actions)
        index = np.minimum(np.arange(length)[:, None] + np.arange(action_horizon)[None], length - 1)
        chunks = actions[index].copy()  # [L, H, A], the last action repeated past the end
        width = min(actions.shape[-1], len(delta_mask), state.shape[-1])
        chunks[..., :width] -= np.where(delta_mask[:width], state[:, :width], 0)[:, None, :]
        return state, chunks.reshape(-1, actions.shape[-1])

    return rows


def stats_fingerprint(
    robot: robots.RobotAdapter | None, delta_mask: np.ndarray, action_horizon: int
) -> str:
    """A short tag of what `model_space_rows` computes ('' when it is the identity), for the
    name of cached stats."""
    if robot is None or robot.joints == "none":
        if not np.asarray(delta_mask).any():
            return ""
    joints = robot.joints if robot is not None else "none"
    dims = "".join("1" if m else "0" for m in np.asarray(delta_mask, bool))
    return f"{joints}_d{dims}_h{action_horizon}" if "1" in dims else joints


def robot_of(config) -> robots.RobotAdapter | None:
    """The run's robot adapter (`config.robot`; None: our own layout)."""
    return robots.from_config(config.robot)


def delta_mask_of(robot: robots.RobotAdapter | None, action_dim: int) -> np.ndarray:
    """[action_dim] bool: the adapter's delta dims."""
    if robot is None:
        return np.zeros(action_dim, bool)
    return robots.delta_action_mask(robot.delta_action_dims, action_dim, f"robot {robot.name!r}")


def create_pipeline(
    config,
    norm_stats: Mapping,
    *,
    dataset: str | None = None,
    dataset_names: Sequence[str] | None = None,
) -> TransformPipeline:
    """The pipeline of a run (`config`, its checkpoint's or dataset's `norm_stats`).

    Args:
      config: the run's config (data.*, model.action_dim, robot.*).
      norm_stats: the run's stats (normalize.py layout; per-dataset entries for mixtures).
      dataset: serve one dataset's robot of a multi-dataset run (its stats alone).
      dataset_names: training: the run's datasets in `DATASET_INDEX` order (their own stats
        when `norm_stats` has per-dataset entries).
    """
    robot = robot_of(config)
    state_dim, data_action_dim = normalize.feature_dims(norm_stats)
    # The model's widths: the run's (every dataset padded to the widest), or the robot's.
    model_state_dim = robot.state_dim if robot is not None else state_dim
    model_data_action_dim = robot.action_dim if robot is not None else data_action_dim
    named = normalize.dataset_names(norm_stats)
    if dataset_names is not None and named:
        per_dataset = [normalize.dataset_stats(norm_stats, n) for n in dataset_names]
    elif named:
        per_dataset = [normalize.dataset_stats(norm_stats, dataset)]
        state_dim, data_action_dim = normalize.feature_dims(per_dataset[0])
    else:
        per_dataset = [norm_stats]
    if robot is not None:
        if robot.action_dim > data_action_dim:
            raise ValueError(
                f"robot {robot.name!r} has {robot.action_dim}-d actions but the norm stats "
                f"have {data_action_dim} dims"
            )
        state_dim, data_action_dim = robot.state_dim, robot.action_dim
    model_action_dim = spec.model_action_dim(config.model, model_data_action_dim)
    default = str(config.robot.default_prompt or "")
    if not default and robot is not None:
        default = robot.default_prompt
    return TransformPipeline(
        robot=robot,
        delta_mask=delta_mask_of(robot, data_action_dim),
        norm=Normalization.from_stats(
            per_dataset,
            state_dim,
            data_action_dim,
            config.data.state_norm,
            config.data.action_norm,
        ),
        state_norm=config.data.state_norm,
        action_norm=config.data.action_norm,
        tokenizer=create_prompt_tokenizer(config),
        prompt_format=prompt_format(config),
        prompt_max_len=spec.prompt_max_len(config.data),
        default_prompt=default,
        data_action_dim=data_action_dim,
        model_action_dim=model_action_dim,
        model_state_dim=model_state_dim,
    )

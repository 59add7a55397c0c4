"""Host-side batch preparation shared by training and inference (numpy, no TF, no JAX).

Applied to each numpy batch after `pipeline.iterate_numpy_batches` and to each observation
in `sample/policy.py`, so a model sees identical inputs in both:

  * `prompt` [B] strings -> `prompt_tokens` [B, L] int32 + `prompt_mask` [B, L] bool
    (data/tokenizer.py), when the config asks for language input (`data.prompt_max_len`),
    in the format `data.prompt_format` ("plain" default, "openpi_pi0", "openpi_pi05"; the
    last writes the current normalized state `observation/state`[:, -1] into the prompt);
  * `actions` [B, H, A_data] -> zero-padded to the model's action dim [B, H, A_model], with
    `action_dim_mask` [B, A_model] True on the real dims (objectives mask the rest out).

Tokenizing here rather than in tf.data keeps one code path for user-supplied SentencePiece
models and for the policy server (which receives raw strings); it costs microseconds per
batch for instruction-length text.
"""

from collections.abc import Callable

import numpy as np

from action_gen.data import normalize, schema, spec, tokenizer


def prompt_format(config) -> str:
    """`data.prompt_format` ("plain" when absent: checkpoints written before it existed)."""
    fmt = tokenizer.check_prompt_format(config.data.get("prompt_format", "plain") or "plain")
    if fmt != "plain" and not spec.prompt_max_len(config.data):
        raise ValueError(
            f"data.prompt_format={fmt!r} formats a prompt, but data.prompt_max_len is 0 "
            "(the model reads no language)"
        )
    return fmt


def prompt_states(batch: dict, state_stats=None, state_norm: str = "none") -> np.ndarray:
    """The states a prompt format writes: the current step of `observation/state`
    [B, T, S] (or [B, S]) → [B, S], normalized with `state_stats` / `state_norm` when given
    (raw observations at inference; training batches arrive normalized)."""
    if schema.OBS_STATE not in batch:
        raise KeyError(
            f"data.prompt_format='openpi_pi05' writes the state into the prompt but the batch "
            f"has no {schema.OBS_STATE!r} key; its keys: {sorted(batch)}"
        )
    state = np.asarray(batch[schema.OBS_STATE])
    if state.ndim == 3:  # [B, T, S]: the current (last) step, as openpi's single state
        state = state[:, -1]
    if state.ndim != 2:
        raise ValueError(
            f"batch[{schema.OBS_STATE!r}] has shape {state.shape}; expected [B, T, S] or [B, S]"
        )
    if state_stats is not None:
        state = np.asarray(normalize.normalize(state, state_stats, state_norm))
    return state


def tokenize_prompts(
    batch: dict, tok, max_len: int, fmt: str = "plain", states: np.ndarray | None = None
) -> dict:
    """Adds `prompt_tokens` / `prompt_mask` [B, L] from `batch["prompt"]` [B] (str or bytes)
    in prompt format `fmt` (tokenizer.PROMPT_FORMATS; `states` [B, S] for "openpi_pi05")."""
    if schema.PROMPT not in batch:
        raise KeyError(
            f"the model reads a language instruction (data.prompt_max_len={max_len}) but the "
            f"batch has no {schema.PROMPT!r} key; its keys: {sorted(batch)}"
        )
    prompts = np.asarray(batch[schema.PROMPT], dtype=object).reshape(-1)
    tokens, mask = tokenizer.tokenize_prompts(
        tok, list(prompts), max_len, prompt_format=fmt, states=states
    )
    out = dict(batch)
    out[schema.PROMPT_TOKENS], out[schema.PROMPT_MASK] = tokens, mask
    return out


def pad_action_dim(batch: dict, action_dim: int) -> dict:
    """Zero-pads `actions` [B, H, A] to [B, H, action_dim] and adds `action_dim_mask`."""
    actions = np.asarray(batch[schema.ACTIONS])
    data_dim = actions.shape[-1]
    if data_dim > action_dim:
        raise ValueError(f"actions have {data_dim} dims, more than the model's {action_dim}")
    out = dict(batch)
    if data_dim < action_dim:
        pad = [(0, 0)] * (actions.ndim - 1) + [(0, action_dim - data_dim)]
        out[schema.ACTIONS] = np.pad(actions, pad)
    dim_mask = np.zeros((actions.shape[0], action_dim), bool)
    # A mixture's windows already mark their robot's own dims among the data's.
    dim_mask[:, :data_dim] = batch.get(schema.ACTION_DIM_MASK, True)
    out[schema.ACTION_DIM_MASK] = dim_mask
    return out


def create_prompt_tokenizer(config):
    """The tokenizer `config` asks for (None when the model reads no language), checked
    against the model's embedding table (`model.vocab_size`) when the model has one."""
    if not spec.prompt_max_len(config.data):
        return None
    tok = tokenizer.create_tokenizer(config.data.get("tokenizer", "bytes"))
    table = config.model.get("vocab_size", None)
    if table is not None and tok.vocab_size > int(table):
        raise ValueError(
            f"data.tokenizer={config.data.get('tokenizer', 'bytes')!r} has {tok.vocab_size} "
            f"ids but model.vocab_size={table}; set model.vocab_size >= {tok.vocab_size}"
        )
    return tok


def make_batch_preparer(config, data_action_dim: int) -> Callable[[dict], dict]:
    """The training-batch transform for `config` (language input, action-dim padding);
    batches arrive normalized (data/pipeline.py), so a state-writing prompt format reads
    their state as it is."""
    max_len = spec.prompt_max_len(config.data)
    tok = create_prompt_tokenizer(config)
    fmt = prompt_format(config)
    action_dim = spec.model_action_dim(config.model, data_action_dim)

    def prepare(batch: dict) -> dict:
        if tok is not None:
            states = prompt_states(batch) if tokenizer.needs_state(fmt) else None
            batch = tokenize_prompts(batch, tok, max_len, fmt, states)
        if action_dim != data_action_dim:
            batch = pad_action_dim(batch, action_dim)
        return batch

    return prepare


def make_observation_preparer(config, state_stats=None) -> Callable[[dict], dict]:
    """The inference-time counterpart: tokenizes the observation's `prompt` if needed.

    Observations arrive raw (the policy normalizes inside its jitted sampler), so a prompt
    format that writes the state ("openpi_pi05") needs `state_stats`, the state's norm
    stats ([S] fields, normalize.py), applied with `data.state_norm` to the prompt's copy
    of the state only; the returned observation keeps its raw state.
    """
    max_len = spec.prompt_max_len(config.data)
    tok = create_prompt_tokenizer(config)
    fmt = prompt_format(config)
    if tok is not None and tokenizer.needs_state(fmt) and state_stats is None:
        raise ValueError(
            f"data.prompt_format={fmt!r} writes the normalized state into the prompt: "
            "make_observation_preparer needs the state's norm stats (state_stats)"
        )
    state_norm = config.data.get("state_norm", "none")

    def prepare(observation: dict) -> dict:
        if tok is None:
            return observation
        states = None
        if tokenizer.needs_state(fmt):
            states = prompt_states(observation, state_stats, state_norm)
        return tokenize_prompts(observation, tok, max_len, fmt, states)

    return prepare

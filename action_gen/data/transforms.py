"""Host-side batch preparation shared by training and inference (numpy, no TF, no JAX).

Applied to each numpy batch after `pipeline.iterate_numpy_batches` and to each observation
in `sample/policy.py`, so a model sees identical inputs in both:

  * `prompt` [B] strings -> `prompt_tokens` [B, L] int32 + `prompt_mask` [B, L] bool
    (data/tokenizer.py), when the config asks for language input (`data.prompt_max_len`);
  * `actions` [B, H, A_data] -> zero-padded to the model's action dim [B, H, A_model], with
    `action_dim_mask` [B, A_model] True on the real dims (objectives mask the rest out).

Tokenizing here rather than in tf.data keeps one code path for user-supplied SentencePiece
models and for the policy server (which receives raw strings); it costs microseconds per
batch for instruction-length text.
"""

from collections.abc import Callable

import numpy as np

from action_gen.data import schema, spec, tokenizer


def tokenize_prompts(batch: dict, tok, max_len: int) -> dict:
    """Adds `prompt_tokens` / `prompt_mask` [B, L] from `batch["prompt"]` [B] (str or bytes)."""
    if schema.PROMPT not in batch:
        raise KeyError(
            f"the model reads a language instruction (data.prompt_max_len={max_len}) but the "
            f"batch has no {schema.PROMPT!r} key; its keys: {sorted(batch)}"
        )
    prompts = np.asarray(batch[schema.PROMPT], dtype=object).reshape(-1)
    tokens, mask = tok.tokenize(list(prompts), max_len)
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
    dim_mask[:, :data_dim] = True
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
    """The training-batch transform for `config` (language input, action-dim padding)."""
    max_len = spec.prompt_max_len(config.data)
    tok = create_prompt_tokenizer(config)
    action_dim = spec.model_action_dim(config.model, data_action_dim)

    def prepare(batch: dict) -> dict:
        if tok is not None:
            batch = tokenize_prompts(batch, tok, max_len)
        if action_dim != data_action_dim:
            batch = pad_action_dim(batch, action_dim)
        return batch

    return prepare


def make_observation_preparer(config) -> Callable[[dict], dict]:
    """The inference-time counterpart: tokenizes the observation's `prompt` if needed."""
    max_len = spec.prompt_max_len(config.data)
    tok = create_prompt_tokenizer(config)

    def prepare(observation: dict) -> dict:
        if tok is None:
            return observation
        return tokenize_prompts(observation, tok, max_len)

    return prepare

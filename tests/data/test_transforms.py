"""Observation spec, tokenizers and host-side batch preparation (language, action padding)."""

import ml_collections
import numpy as np
import pytest

from action_gen import config_schema
from action_gen.data import normalize, schema, spec, tokenizer, transforms


def _config(prompt_max_len=0, action_dim=None, cameras=None, tok="bytes"):
    config = ml_collections.ConfigDict()
    config.data = ml_collections.ConfigDict(
        {
            "obs_horizon": 2,
            "prompt_max_len": prompt_max_len,
            "tokenizer": tok,
            "state_norm": "minmax",
            "action_norm": "minmax",
        }
    )
    if cameras is not None:
        config.data.cameras = cameras
    config.model = ml_collections.ConfigDict({"name": "pi0"})
    if action_dim is not None:
        config.model.action_dim = action_dim
    return config_schema.complete(config)


def test_observation_spec_shapes():
    config = _config(prompt_max_len=12, cameras={"wrist": [32, 48]})
    got = spec.observation_spec(config.data, state_dim=9)
    assert got == {
        schema.OBS_STATE: ((2, 9), "float32"),
        schema.OBS_PAD_MASK: ((2,), "bool"),
        schema.image_key("wrist"): ((2, 32, 48, 3), "uint8"),
        schema.PROMPT_TOKENS: ((12,), "int32"),
        schema.PROMPT_MASK: ((12,), "bool"),
    }
    example = spec.example_observation(got, batch_size=3)
    assert example[schema.image_key("wrist")].shape == (3, 2, 32, 48, 3)
    assert example[schema.OBS_PAD_MASK].all() and example[schema.PROMPT_TOKENS].dtype == np.int32


def test_spec_rejects_bad_fields():
    with pytest.raises(ValueError, match="data.cameras.top"):
        spec.observation_spec(_config(cameras={"top": [32]}).data, 3)
    with pytest.raises(ValueError, match="model.action_dim=1"):
        spec.model_action_dim(_config(action_dim=1).model, 2)
    assert spec.model_action_dim(_config().model, 7) == 7
    assert spec.model_action_dim(_config(action_dim=32).model, 7) == 32


def test_byte_tokenizer_bos_padding_truncation():
    tokens, mask = tokenizer.tokenize(["ab", "abcdef"], 4)
    np.testing.assert_array_equal(tokens[0], [tokenizer.BOS_ID, ord("a") + 3, ord("b") + 3, 0])
    np.testing.assert_array_equal(mask[0], [True, True, True, False])
    assert mask[1].all() and tokenizer.detokenize(tokens)[1] == "abc"


def test_sentencepiece_model_file(tmp_path):
    import sentencepiece

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["go around the left of the obstacle"] * 20
                                + ["go around the right of the obstacle"] * 20))  # fmt: skip
    prefix = str(tmp_path / "sp")
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=prefix, vocab_size=30, model_type="bpe",
        minloglevel=2, bos_id=1, eos_id=2, pad_id=0, unk_id=3,
    )  # fmt: skip
    tok = tokenizer.create_tokenizer(prefix + ".model")
    tokens, mask = tok.tokenize(["go around the left of the obstacle", "right"], 16)
    assert tokens.shape == (2, 16) and tokens[0, 0] == 1 and mask[0, 0]
    assert not np.array_equal(tokens[0], tokens[1]) and tokens.max() < tok.vocab_size
    assert mask[1].sum() < mask[0].sum()
    with pytest.raises(FileNotFoundError, match="nope.model"):
        tokenizer.create_tokenizer(str(tmp_path / "nope.model"))


def _stats(state_dim, action_dim, seed=0):
    rng = np.random.default_rng(seed)
    rows = lambda d: rng.normal(size=(50, d)) * 3 + 1  # noqa: E731
    return {
        "state": normalize.compute_norm_stats([rows(state_dim)]),
        "actions": normalize.compute_norm_stats([rows(action_dim)]),
    }


def test_pipeline_normalizes_tokenizes_and_pads_actions():
    config = _config(prompt_max_len=8, action_dim=5)
    stats = _stats(3, 2)
    pipe = transforms.create_pipeline(config, stats)
    state = np.random.default_rng(1).normal(size=(2, 2, 3)).astype(np.float32)
    batch = {
        schema.OBS_STATE: state,
        schema.PROMPT: np.array([b"left", b"right"], dtype=object),
        schema.ACTIONS: np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2),
    }
    out, context = pipe.inputs(batch)
    expected_tokens, expected_mask = tokenizer.tokenize(["left", "right"], 8)
    np.testing.assert_array_equal(out[schema.PROMPT_TOKENS], expected_tokens)
    np.testing.assert_array_equal(out[schema.PROMPT_MASK], expected_mask)
    np.testing.assert_array_equal(
        out[schema.OBS_STATE], normalize.normalize(state, stats["state"], "minmax")
    )
    assert out[schema.ACTIONS].shape == (2, 3, 5)
    np.testing.assert_allclose(
        out[schema.ACTIONS][..., :2],
        normalize.normalize(batch[schema.ACTIONS], stats["actions"], "minmax"),
        rtol=1e-6,
    )
    assert not out[schema.ACTIONS][..., 2:].any()
    np.testing.assert_array_equal(out[schema.ACTION_DIM_MASK][0], [1, 1, 0, 0, 0])
    assert schema.ACTION_DIM_MASK not in schema.observation_of(out)
    # unpad → unnormalize: the model's chunk back in the data's units.
    back = pipe.outputs(out[schema.ACTIONS], context)
    np.testing.assert_allclose(back, batch[schema.ACTIONS], atol=1e-5)


def test_pipeline_adds_nothing_without_language_or_padding():
    pipe = transforms.create_pipeline(_config(), _stats(3, 4))
    batch = {
        schema.OBS_STATE: np.zeros((2, 2, 3), np.float32),
        schema.ACTIONS: np.zeros((2, 3, 4), np.float32),
    }
    out, _ = pipe.inputs(batch)
    assert set(out) == {schema.OBS_STATE, schema.ACTIONS}
    assert out[schema.OBS_STATE].dtype == np.float32


def test_missing_prompt_names_the_key():
    pipe = transforms.create_pipeline(_config(prompt_max_len=8), _stats(3, 2))
    with pytest.raises(KeyError, match="'prompt'"):
        pipe.inputs({schema.OBS_STATE: np.zeros((1, 2, 3), np.float32)})


def test_stage_order_is_declared_once():
    assert transforms.INPUT_STAGES == (
        "robot", "delta_actions", "normalize", "prompt", "tokenize", "pad"
    )  # fmt: skip
    assert transforms.OUTPUT_STAGES == ("unpad", "unnormalize", "absolute_actions", "robot")

"""openpi's prompt formats (data.prompt_format): the exact ids of π0's and π0.5's prompts.

Expected ids are built here from openpi's documented format (`PaligemmaTokenizer.tokenize`
in openpi/models/tokenizer.py): hand-written strings encoded by the raw SentencePiece
processor of a tiny model trained in the test with PaliGemma's conventions (pad 0, eos 1,
bos 2, unk 3, identity normalization, no dummy prefix, "\\n" a piece of its own).
"""

import io

import jax
import ml_collections
import numpy as np
import pytest
import sentencepiece

from action_gen import config_schema, models
from action_gen.data import schema, spec, tokenizer, transforms
from action_gen.sample.policy import Policy
from action_gen.tools import openpi_import
from configs import flow_pi0_openpi
from tests.tools import test_openpi_import as helpers

CORPUS = [
    "Task: pick up the cup, State: 0 12 128 255 -1;",
    "Action: ",
    "go around the left of the obstacle",
    "Pick up the fork and put it in the bowl",
    "0 1 2 3 4 5 6 7 8 9",
]


@pytest.fixture(scope="module")
def sp_file(tmp_path_factory):
    """A 96-piece SentencePiece model file (ids fit the tiny π0's 259-entry table)."""
    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 5), model_writer=proto, vocab_size=96,
        model_type="bpe", minloglevel=2, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        normalization_rule_name="identity", add_dummy_prefix=False,
        remove_extra_whitespaces=False, user_defined_symbols=["\n"], split_digits=True,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("sp") / "paligemma_like.model"
    path.write_bytes(proto.getvalue())
    return str(path)


@pytest.fixture(scope="module")
def sp(sp_file):
    return sentencepiece.SentencePieceProcessor(model_file=sp_file)


def _padded(ids, length):
    tokens = np.zeros(length, np.int32)
    tokens[: len(ids)] = ids[:length]
    return tokens, np.arange(length) < len(ids)


def test_state_discretization_edges():
    """256 bins of width 2/256 over [-1, 1]: left edges inclusive, >= 1 - 2/256 → 255 (1 and
    above too), below -1 → -1 (openpi does not clip the lower side)."""
    edge = np.float64(2 / 256)
    state = np.array([-1.0, 0.0, 1.0, 1.5, -1.5, -1 + edge, np.nextafter(-1 + edge, -2),
                      0.5, 1 - edge, np.nextafter(1 - edge, 0)])  # fmt: skip
    want = [0, 128, 255, 255, -1, 1, 0, 192, 255, 254]
    np.testing.assert_array_equal(tokenizer.discretize_state(state), want)
    assert tokenizer.discretize_state(state[None]).shape == (1, len(want))


def test_openpi_pi0_format(sp_file, sp):
    tok = tokenizer.create_tokenizer(sp_file)
    raw = ["  pick_up the\ncup \n", "go around the left of the obstacle"]
    tokens, mask = tokenizer.tokenize_prompts(tok, raw, 24, prompt_format="openpi_pi0")
    newline = sp.piece_to_id("\n")
    for i, cleaned in enumerate(["pick up the cup", "go around the left of the obstacle"]):
        ids = [2, *sp.encode(cleaned), newline]  # BOS, the cleaned text, then "\n" alone
        want_tokens, want_mask = _padded(ids, 24)
        np.testing.assert_array_equal(tokens[i], want_tokens)
        np.testing.assert_array_equal(mask[i], want_mask)
    # The plain format keeps the text as given and adds no "\n".
    plain, _ = tokenizer.tokenize_prompts(tok, raw[1:], 24)
    np.testing.assert_array_equal(plain[0], _padded([2, *sp.encode(raw[1])], 24)[0])
    # Truncation keeps the first L ids (the "\n" is lost), mask all True, no EOS.
    short, short_mask = tokenizer.tokenize_prompts(tok, raw[1:], 4, prompt_format="openpi_pi0")
    np.testing.assert_array_equal(short[0], [2, *sp.encode(raw[1])[:3]])
    assert short_mask.all()


def test_openpi_pi05_format(sp_file, sp):
    tok = tokenizer.create_tokenizer(sp_file)
    states = np.array([[-1.0, 0.0, 1.0, 1.5, -1.5, 0.5], [0.1, -0.2, 0.3, -0.4, 0.9, -1.0]])
    tokens, mask = tokenizer.tokenize_prompts(
        tok, [b"pick_up the cup\n", "Pick up the fork "], 64, prompt_format="openpi_pi05",
        states=states,
    )  # fmt: skip
    # 0.1 → 128 + floor(0.1·128) = 140; -0.2 → 102; 0.3 → 166; -0.4 → 76; 0.9 → 243.
    texts = [
        "Task: pick up the cup, State: 0 128 255 255 -1 192;\nAction: ",
        "Task: Pick up the fork, State: 140 102 166 76 243 0;\nAction: ",
    ]
    for i, text in enumerate(texts):
        want_tokens, want_mask = _padded(sp.encode(text, add_bos=True), 64)
        np.testing.assert_array_equal(tokens[i], want_tokens)
        np.testing.assert_array_equal(mask[i], want_mask)
        assert sp.decode(tokens[i][mask[i]][1:].tolist()) == text
    short, short_mask = tokenizer.tokenize_prompts(
        tok, ["pick up the cup"], 5, prompt_format="openpi_pi05", states=states[:1]
    )
    np.testing.assert_array_equal(short[0], sp.encode(texts[0], add_bos=True)[:5])
    assert short_mask.all()
    with pytest.raises(ValueError, match="one state per prompt"):
        tokenizer.tokenize_prompts(tok, ["a"], 8, prompt_format="openpi_pi05")


def _config(fmt, tok="bytes", state_norm="minmax"):
    return config_schema.complete(ml_collections.ConfigDict(
        {
            "data": {"obs_horizon": 2, "prompt_max_len": 40, "tokenizer": tok,
                     "prompt_format": fmt, "state_norm": state_norm,
                     "action_norm": "minmax"},
            "model": {"name": "pi0"},
        }
    ))  # fmt: skip


def _stats(state_min, state_max, action_dim=2):
    def one(lo, hi):
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        return {"min": lo.tolist(), "max": hi.tolist(), "mean": ((lo + hi) / 2).tolist(),
                "std": ((hi - lo) / 4).tolist(), "q01": lo.tolist(), "q99": hi.tolist(),
                "count": 10}  # fmt: skip

    return {"state": one(state_min, state_max), "actions": one([-1] * action_dim, [1] * action_dim)}


def test_pipeline_writes_the_normalized_current_state(sp_file, sp):
    """The prompt stage follows normalize: the current step of the state, normalized with
    data.state_norm, is written into a π0.5 prompt, for training batches and observations
    alike (one pipeline)."""
    config = _config("openpi_pi05", sp_file)
    # minmax: [0, 3] → [0, 0.5] → bins 128, 192; the older step [9, 9] is not written.
    pipe = transforms.create_pipeline(config, _stats([-2.0, 0.0], [2.0, 4.0]))
    state = np.array([[[9.0, 9.0], [0.0, 3.0]]], np.float32)  # [B=1, T=2, S=2]
    batch = {schema.PROMPT: np.array([b"pick up the cup"], object), schema.OBS_STATE: state}
    out, _ = pipe.inputs(batch)
    want = sp.encode("Task: pick up the cup, State: 128 192;\nAction: ", add_bos=True)
    np.testing.assert_array_equal(out[schema.PROMPT_TOKENS][0], _padded(want, 40)[0])
    np.testing.assert_allclose(out[schema.OBS_STATE][0, -1], [0.0, 0.5])
    # π0's format reads no state; the byte tokenizer takes every format too.
    pi0 = transforms.create_pipeline(_config("openpi_pi0"), _stats([0.0], [1.0]))
    out, _ = pi0.inputs({schema.PROMPT: ["a_b "], schema.OBS_STATE: np.zeros((1, 1, 1))})
    np.testing.assert_array_equal(
        out[schema.PROMPT_TOKENS][0, :5], [tokenizer.BOS_ID, *(b + 3 for b in b"a b\n"), 0][:5]
    )
    with pytest.raises(ValueError, match="data.prompt_format='openpi'"):
        transforms.create_pipeline(_config("openpi"), _stats([0.0], [1.0]))


def test_imported_pi05_policy_tokenizes_the_request_with_its_state(sp_file, sp, tmp_path):
    """openpi_import → Policy: a request's prompt is π0.5's string with the state normalized
    by openpi's quantile map (computed here from openpi's own stats and formula)."""
    # Random leaves of the tiny π0.5's shapes (eval_shape: nothing compiled; values unused).
    config = flow_pi0_openpi.get_config(f"pi05,variant=tiny,horizon={helpers.H}")
    model = models.create_model(config.model)
    example = spec.example_observation(spec.observation_spec(config.data, helpers.STATE_DIM))
    abstract = jax.eval_shape(
        lambda k: models.init_params(model, k, example, (helpers.H, 32)), jax.random.key(0)
    )
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(x.dtype), abstract)
    stats = helpers._openpi_stats()
    src = helpers.write_openpi_checkpoint(
        tmp_path / "src", params, True, value_level=False, stats=stats
    )
    summary = openpi_import.import_checkpoint(
        str(src), str(tmp_path / "dst"), action_horizon=helpers.H, tokenizer=sp_file
    )
    assert summary["prompt_format"] == "openpi_pi05" and summary["prompt_max_len"] == 200
    assert summary["tokenizer"] == sp_file and "warning" not in summary
    policy = Policy.from_checkpoint(str(tmp_path / "dst"))

    q01, q99 = np.asarray(stats["state"]["q01"]), np.asarray(stats["state"]["q99"])
    state = np.random.default_rng(0).uniform(q01, q99)
    state[0], state[1] = q01[0] - 1.0, q99[1] + 1.0  # below / above the quantile range
    obs = {k: v[:1] for k, v in helpers._observation(1).items()}
    obs[schema.OBS_STATE] = state[None, None].astype(np.float32)
    prepared = policy.prepare_observation(obs)

    normalized = (state - q01) / (q99 - q01 + 1e-6) * 2.0 - 1.0  # openpi's Normalize
    bins = np.digitize(normalized, np.linspace(-1, 1, 257)[:-1]) - 1
    assert bins[0] == -1 and bins[1] == 255
    text = f"Task: pick up the fork, State: {' '.join(map(str, bins))};\nAction: "
    want_tokens, want_mask = _padded(sp.encode(text, add_bos=True), 200)
    np.testing.assert_array_equal(prepared[schema.PROMPT_TOKENS][0], want_tokens)
    np.testing.assert_array_equal(prepared[schema.PROMPT_MASK][0], want_mask)

"""Instruction tokenizers and prompt formats: text (+ state) → ids, BOS first, right padded.

Tokenizers (`create_tokenizer`, `data.tokenizer`):
  "bytes"  (default, no file) UTF-8 bytes: PAD = 0, BOS = 1, EOS = 2 (reserved, not
           emitted), byte b → b + 3; VOCAB_SIZE = 259. The real π0 size keeps Gemma's
           257,152-entry table in its config (any id below that is valid), so byte ids fit both.
  a path   a user-supplied SentencePiece `.model` file (PaliGemma's for openpi checkpoints;
           nothing is downloaded).

Prompt formats (`data.prompt_format`, `PROMPT_FORMATS`), i.e. which ids a prompt becomes:
  "plain"        BOS + ids(text), the text as given (our own models' format).
  "openpi_pi0"   openpi's π0 (`PaligemmaTokenizer.tokenize` without state):
                 BOS + ids(clean(text)) + ids("\n"); the "\n" ids are encoded on their own
                 ("start of answer"), not as part of the text.
  "openpi_pi05"  openpi's π0.5 with discrete state input (the same method with state):
                 BOS + ids("Task: {clean(text)}, State: {d_1} ... {d_S};\nAction: "),
                 one SentencePiece pass over the whole string.
  clean(text) = text.strip(), then "_" → " " and "\n" → " " (no lower-casing).
  d_i = digitize(s_i, linspace(-1, 1, 257)[:-1]) - 1 (`discretize_state`), of the
  *normalized* state at the robot's own dim (openpi tokenizes after `Normalize` and before
  `PadStatesAndActions`), written as decimal ints separated by single spaces.
All formats: the first L ids are kept (no EOS; openpi truncates the same way and only
logs), the rest padded with id 0, mask True on the kept ids.
"""

import os
from collections.abc import Sequence

import numpy as np
from absl import logging

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
NUM_SPECIAL = 3
VOCAB_SIZE = 256 + NUM_SPECIAL

PROMPT_FORMATS = ("plain", "openpi_pi0", "openpi_pi05")
# openpi's state discretization: 256 bins of width 2/256 over [-1, 1].
STATE_BINS = 256


def tokenize(texts: Sequence[str | bytes], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Byte tokens and mask for a batch of instructions, BOS first, truncated and right-padded.

    Args:
      texts: B strings (UTF-8 encoded) or bytes.
      max_len: L, the padded length (BOS included).
    Returns:
      (tokens [B, L] int32, mask [B, L] bool), mask True on real tokens (BOS included).
    """
    return pad_ids([ByteTokenizer().encode(text, add_bos=True) for text in texts], max_len)


def detokenize(tokens: np.ndarray) -> list[str]:
    """The strings of [B, L] byte ids (special ids dropped; invalid UTF-8 replaced)."""
    out = []
    for row in np.asarray(tokens):
        data = bytes(int(t) - NUM_SPECIAL for t in row if NUM_SPECIAL <= t < VOCAB_SIZE)
        out.append(data.decode("utf-8", errors="replace"))
    return out


def pad_ids(rows: Sequence[Sequence[int]], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """B id lists → (tokens [B, L] int32, mask [B, L] bool): the first L ids of each row,
    then PAD_ID (0); mask True on the kept ids. Rows longer than L are truncated (logged)."""
    tokens = np.full((len(rows), max_len), PAD_ID, np.int32)
    mask = np.zeros((len(rows), max_len), bool)
    longest = 0
    for i, ids in enumerate(rows):
        longest = max(longest, len(ids))
        ids = list(ids)[:max_len]
        tokens[i, : len(ids)] = ids
        mask[i, : len(ids)] = True
    if longest > max_len:
        logging.log_every_n_seconds(
            logging.WARNING,
            "a prompt has %d tokens, more than data.prompt_max_len=%d: truncated",
            60,
            longest,
            max_len,
        )
    return tokens, mask


def _as_text(text: str | bytes) -> str:
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)


class ByteTokenizer:
    """The default tokenizer: UTF-8 bytes (see module docstring); nothing to load."""

    name = "bytes"
    vocab_size = VOCAB_SIZE

    def encode(self, text: str | bytes, add_bos: bool = False) -> list[int]:
        """The ids of `text` (bytes taken as they are), BOS first if `add_bos`."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return [BOS_ID] * add_bos + [b + NUM_SPECIAL for b in data]

    def tokenize(self, texts, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        return tokenize(texts, max_len)


class SentencePieceTokenizer:
    """A user-supplied SentencePiece model file (e.g. PaliGemma's `tokenizer.model`).

    Ids come from the model (BOS first, as π0 does; PAD positions are 0 and masked out), so
    `vocab_size` must not exceed the model's embedding table.
    """

    def __init__(self, model_file: str):
        try:
            import sentencepiece  # noqa: PLC0415 (optional dependency)
        except ImportError as e:
            raise ImportError(
                f"tokenizer {model_file!r} is a SentencePiece model; `pip install sentencepiece`"
            ) from e
        if not os.path.isfile(model_file):
            raise FileNotFoundError(f"SentencePiece model file not found: {model_file}")
        self.name = model_file
        self._sp = sentencepiece.SentencePieceProcessor(model_file=model_file)
        self.vocab_size = int(self._sp.get_piece_size())

    def encode(self, text: str | bytes, add_bos: bool = False) -> list[int]:
        """The model's ids of `text` (bytes decoded as UTF-8), its BOS first if `add_bos`
        (none when the model has no BOS piece)."""
        return list(self._sp.encode(_as_text(text), add_bos=add_bos))

    def tokenize(self, texts, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        return pad_ids([self.encode(text, add_bos=True) for text in texts], max_len)


def create_tokenizer(name: str = "bytes"):
    """ "bytes" (default, no file) or the path of a SentencePiece `.model` file."""
    if name in ("", "bytes"):
        return ByteTokenizer()
    return SentencePieceTokenizer(name)


# ----------------------------------------------------------------------------- formats


def check_prompt_format(prompt_format: str) -> str:
    """`prompt_format` itself, or a ValueError naming `data.prompt_format` and the choices."""
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"data.prompt_format={prompt_format!r} is not one of {PROMPT_FORMATS}")
    return prompt_format


def needs_state(prompt_format: str) -> bool:
    """Whether the format writes the (normalized) state into the prompt."""
    return check_prompt_format(prompt_format) == "openpi_pi05"


def clean_openpi_text(text: str | bytes) -> str:
    """openpi's prompt cleaning: strip, then "_" → " " and "\\n" → " " (case kept)."""
    return _as_text(text).strip().replace("_", " ").replace("\n", " ")


def discretize_state(state) -> np.ndarray:
    """openpi's 256-bin state discretization of a normalized state [..., S] → int64 [..., S].

    d = digitize(s, e) - 1 with the 256 left edges e_k = -1 + 2k/256 (k = 0..255): d = k
    for e_k <= s < e_(k+1); so s = -1 → 0, s = 0 → 128, s >= 1 - 2/256 (1 and above) → 255,
    and s < -1 → -1 (openpi writes "-1"; the lower side is not clipped).
    """
    edges = np.linspace(-1, 1, STATE_BINS + 1)[:-1]
    return np.digitize(np.asarray(state), bins=edges) - 1


def openpi_pi05_text(text: str | bytes, state) -> str:
    """The π0.5 prompt string for one instruction and its normalized state [S]."""
    state = np.asarray(state)
    if state.ndim != 1:
        raise ValueError(f"the state written into a π0.5 prompt must be [S], got {state.shape}")
    digits = " ".join(str(int(d)) for d in discretize_state(state))
    return f"Task: {clean_openpi_text(text)}, State: {digits};\nAction: "


def encode_prompt(tok, text: str | bytes, prompt_format: str = "plain", state=None) -> list[int]:
    """The ids of one prompt in `prompt_format` (module docstring), before truncation.

    Args:
      tok: a tokenizer with `encode(text, add_bos)` (ByteTokenizer, SentencePieceTokenizer).
      text: the instruction.
      prompt_format: one of PROMPT_FORMATS.
      state: [S] normalized state, required by (and only read by) "openpi_pi05".
    """
    if check_prompt_format(prompt_format) == "plain":
        return tok.encode(text, add_bos=True)
    if prompt_format == "openpi_pi0":
        return tok.encode(clean_openpi_text(text), add_bos=True) + tok.encode("\n")
    if state is None:
        raise ValueError("data.prompt_format='openpi_pi05' writes the state into the prompt")
    return tok.encode(openpi_pi05_text(text, state), add_bos=True)


def tokenize_prompts(
    tok, texts: Sequence, max_len: int, *, prompt_format: str = "plain", states=None
) -> tuple[np.ndarray, np.ndarray]:
    """A batch of prompts in `prompt_format` → (tokens [B, L] int32, mask [B, L] bool).

    Args:
      tok: the tokenizer (`create_tokenizer`).
      texts: B instructions (str or UTF-8 bytes).
      max_len: L.
      prompt_format: one of PROMPT_FORMATS.
      states: [B, S] normalized states (read only by "openpi_pi05").
    """
    if needs_state(prompt_format):
        if states is None or len(states) != len(texts):
            raise ValueError(
                f"data.prompt_format='openpi_pi05' needs one state per prompt: {len(texts)} "
                f"prompts, states {None if states is None else np.shape(states)}"
            )
        rows = [encode_prompt(tok, t, prompt_format, s) for t, s in zip(texts, states, strict=True)]
    else:
        rows = [encode_prompt(tok, t, prompt_format) for t in texts]
    return pad_ids(rows, max_len)

"""A byte-level tokenizer for instructions: UTF-8 bytes → ids, with BOS and right padding.

ids: PAD = 0, BOS = 1, EOS = 2 (reserved, not emitted), byte b → b + 3; VOCAB_SIZE = 259.
No files are downloaded; the real π0 size keeps Gemma's 257,152-entry table in its config
(any id below that is valid), so byte ids fit both.
"""

import os
from collections.abc import Sequence

import numpy as np

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
NUM_SPECIAL = 3
VOCAB_SIZE = 256 + NUM_SPECIAL


def tokenize(texts: Sequence[str | bytes], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens and mask for a batch of instructions, BOS first, truncated and right-padded.

    Args:
      texts: B strings (UTF-8 encoded) or bytes.
      max_len: L, the padded length (BOS included).
    Returns:
      (tokens [B, L] int32, mask [B, L] bool), mask True on real tokens (BOS included).
    """
    tokens = np.full((len(texts), max_len), PAD_ID, np.int32)
    mask = np.zeros((len(texts), max_len), bool)
    for i, text in enumerate(texts):
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        ids = [BOS_ID, *(b + NUM_SPECIAL for b in data)][:max_len]
        tokens[i, : len(ids)] = ids
        mask[i, : len(ids)] = True
    return tokens, mask


def detokenize(tokens: np.ndarray) -> list[str]:
    """The strings of [B, L] ids (special ids dropped; invalid UTF-8 replaced)."""
    out = []
    for row in np.asarray(tokens):
        data = bytes(int(t) - NUM_SPECIAL for t in row if NUM_SPECIAL <= t < VOCAB_SIZE)
        out.append(data.decode("utf-8", errors="replace"))
    return out


class ByteTokenizer:
    """The default tokenizer: UTF-8 bytes (see module docstring); nothing to load."""

    name = "bytes"
    vocab_size = VOCAB_SIZE

    def tokenize(self, texts, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        return tokenize(texts, max_len)


class SentencePieceTokenizer:
    """A user-supplied SentencePiece model file (e.g. Gemma's `tokenizer.model`).

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

    def tokenize(self, texts, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        tokens = np.zeros((len(texts), max_len), np.int32)
        mask = np.zeros((len(texts), max_len), bool)
        for i, text in enumerate(texts):
            text = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
            bos = [self._sp.bos_id()] if self._sp.bos_id() >= 0 else []
            ids = [*bos, *self._sp.encode(text)][:max_len]
            tokens[i, : len(ids)] = ids
            mask[i, : len(ids)] = True
        return tokens, mask


def create_tokenizer(name: str = "bytes"):
    """ "bytes" (default, no file) or the path of a SentencePiece `.model` file."""
    if name in ("", "bytes"):
        return ByteTokenizer()
    return SentencePieceTokenizer(name)

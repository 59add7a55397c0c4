"""A byte-level tokenizer for instructions: UTF-8 bytes → ids, with BOS and right padding.

ids: PAD = 0, BOS = 1, EOS = 2 (reserved, not emitted), byte b → b + 3; VOCAB_SIZE = 259.
No files are downloaded; the real π0 size keeps Gemma's 257,152-entry table in its config
(any id below that is valid), so byte ids fit both.
"""

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

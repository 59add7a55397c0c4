"""The batch schema: every key that crosses a module boundary is defined here, once.

A training batch is a flat ``dict[str, np.ndarray | jax.Array]``:

  ``observation/state``          [B, T, S] float32  proprio / low-dim state history,
                                  normalized; oldest first, the current step last.
  ``observation/image/<camera>`` [B, T, h, w, 3] uint8  (optional, one key per camera).
  ``obs_pad_mask``               [B, T] bool  True where the observation is real, False
                                  where it repeats the first step (window before the
                                  episode start).
  ``prompt``                     [B] bytes  language instruction (optional).
  ``prompt_tokens``              [B, L] int32  the tokenized instruction (optional;
                                  data/tokenizer.py), with
  ``prompt_mask``                [B, L] bool  True on real tokens, False on padding.
  ``image_mask/<camera>``        [B] bool  False where the camera is missing (optional,
                                  default all present).
  ``actions``                    [B, H, A] float32  future action chunk a_t .. a_{t+H-1},
                                  normalized to [-1, 1].
  ``action_pad_mask``            [B, H] bool  True where the action is real, False where
                                  it repeats the last action (window past the episode end).
  ``action_dim_mask``            [B, A] bool  True on the robot's real action dims, False on
                                  dims padded up to the model's action dim (optional).
  ``dataset_index``              [B] int32  which dataset of a mixture a training window
                                  comes from (the stream's; consumed by normalization in
                                  data/transforms.py, never fed to a model).

An *observation* (what a policy gets at inference) is the same dict without
``actions`` and ``action_pad_mask``.

Letters used in shapes across the package: B batch, T observation history, H action
horizon (chunk length), A action dim, S state dim, C channels, K diffusion steps.
"""

OBS_STATE = "observation/state"
OBS_IMAGE_PREFIX = "observation/image/"
OBS_PAD_MASK = "obs_pad_mask"
PROMPT = "prompt"
PROMPT_TOKENS = "prompt_tokens"
PROMPT_MASK = "prompt_mask"
IMAGE_MASK_PREFIX = "image_mask/"
ACTIONS = "actions"
ACTION_PAD_MASK = "action_pad_mask"
ACTION_DIM_MASK = "action_dim_mask"
DATASET_INDEX = "dataset_index"

# Keys that belong to the target, not to the observation a policy conditions on.
TARGET_KEYS = (ACTIONS, ACTION_PAD_MASK, ACTION_DIM_MASK)

# RLDS step fields (the on-disk format; see data/rlds.py).
RLDS_STEPS = "steps"
RLDS_OBSERVATION = "observation"
RLDS_STATE = "state"
RLDS_ACTION = "action"
RLDS_LANGUAGE = "language_instruction"


def image_key(camera: str) -> str:
    """Batch key of one camera's image history."""
    return OBS_IMAGE_PREFIX + camera


def image_mask_key(camera: str) -> str:
    """Batch key of one camera's presence mask [B] bool."""
    return IMAGE_MASK_PREFIX + camera


def observation_of(batch: dict) -> dict:
    """The observation part of a batch: everything a policy conditions on."""
    return {k: v for k, v in batch.items() if k not in TARGET_KEYS}

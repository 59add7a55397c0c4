"""What a model is fed, derived from the config alone (no data needed).

The train loop initializes parameters, the policy rebuilds them from a checkpoint, and the
server tells clients what to send — all from the same `observation_spec`, so the three can
never disagree. The spec is a function of the data config and the dataset's state dim:

  data.obs_horizon       T
  data.cameras           {camera: [h, w]} of the images the model receives (optional)
  data.prompt_max_len    L > 0 when the model reads the tokenized instruction (optional)
  data.tokenizer         "bytes" or a SentencePiece model file (see data/tokenizer.py)
"""

from collections.abc import Mapping

import numpy as np

from action_gen.data import schema

# key -> (shape of ONE unbatched observation, numpy dtype name)
ObservationSpec = dict[str, tuple[tuple[int, ...], str]]


def cameras_of(data_config) -> dict[str, tuple[int, int]]:
    """{camera: (h, w)} from `data.cameras` (empty when the task has no images)."""
    cameras = data_config.cameras or {}
    out = {}
    for name, size in dict(cameras).items():
        size = tuple(int(s) for s in size)
        if len(size) != 2 or min(size) <= 0:
            raise ValueError(f"data.cameras.{name} must be [height, width], got {size}")
        out[str(name)] = size
    return out


def prompt_max_len(data_config) -> int:
    """L, the padded instruction length fed to the model (0: no language input)."""
    value = int(data_config.prompt_max_len or 0)
    if value < 0:
        raise ValueError(f"data.prompt_max_len must be >= 0, got {value}")
    return value


def observation_spec(data_config, state_dim: int) -> ObservationSpec:
    """Shapes and dtypes of one model-ready observation (after `data/transforms.py`).

    Returns:
      {`observation/state`: ((T, S), "float32"), `obs_pad_mask`: ((T,), "bool"),
       `observation/image/<cam>`: ((T, h, w, 3), "uint8") per camera,
       `prompt_tokens`: ((L,), "int32"), `prompt_mask`: ((L,), "bool") when L > 0}.
    """
    horizon = int(data_config.obs_horizon)
    spec: ObservationSpec = {
        schema.OBS_STATE: ((horizon, int(state_dim)), "float32"),
        schema.OBS_PAD_MASK: ((horizon,), "bool"),
    }
    for camera, (height, width) in sorted(cameras_of(data_config).items()):
        spec[schema.image_key(camera)] = ((horizon, height, width, 3), "uint8")
    length = prompt_max_len(data_config)
    if length:
        spec[schema.PROMPT_TOKENS] = ((length,), "int32")
        spec[schema.PROMPT_MASK] = ((length,), "bool")
    return spec


def example_observation(spec: Mapping, batch_size: int = 1) -> dict[str, np.ndarray]:
    """An all-valid observation of `spec`'s shapes with a batch dim, for init and tracing."""
    out = {}
    for key, (shape, dtype) in spec.items():
        fill = np.ones if dtype == "bool" else np.zeros
        out[key] = fill((batch_size, *shape), dtype)
    return out


def model_action_dim(model_config, data_action_dim: int) -> int:
    """The model's action dim: `model.action_dim` when set (π0 pads to 32), else the data's."""
    # A field of the models with their own action width (the model section is open).
    value = model_config.action_dim if "action_dim" in model_config else None
    if value is None:
        return int(data_action_dim)
    if int(value) < data_action_dim:
        raise ValueError(
            f"model.action_dim={value} is smaller than the dataset's action dim "
            f"{data_action_dim}; it must be >= (padded dims are masked out of the loss)"
        )
    return int(value)

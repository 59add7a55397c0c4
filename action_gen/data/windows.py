"""Training windows: observation history + future action chunk + pad masks.

The window at step t of an episode of length L holds

  observations  o_{t-T+1} .. o_t      (oldest first; indices < 0 clamp to 0 and are
                                        marked False in ``obs_pad_mask``)
  actions       a_t .. a_{t+H-1}      (indices > L-1 clamp to L-1 and are marked False
                                        in ``action_pad_mask``)

and there is one window per step t in [0, L). Clamping repeats the first observation
and the last action (Diffusion Policy's padding); the masks let a loss ignore the
repeats. An episode shorter than H still yields L windows, each padded at the end.

``window_indices`` is the numpy reference (the in-memory stream, data/memory.py, gathers
with it); ``make_windows`` computes the same indices with tf ops so it runs inside a tf.data
graph. TensorFlow is imported by the tf functions alone: the numpy part loads without it.
"""

import numpy as np

from action_gen.data import schema

# Observation keys of an RLDS trajectory ("image/<camera>") that become batch image keys
# (schema.image_key(camera) == "observation/image/<camera>").
RLDS_IMAGE_PREFIX = schema.OBS_IMAGE_PREFIX.removeprefix(schema.RLDS_OBSERVATION + "/")


def window_indices(
    length: int, obs_horizon: int, action_horizon: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Gather indices and pad masks of every window of an episode.

    Args:
      length: L, number of steps in the episode.
      obs_horizon: T, observations per window.
      action_horizon: H, actions per window.

    Returns:
      obs_idx [L, T] int64, obs_pad_mask [L, T] bool, action_idx [L, H] int64,
      action_pad_mask [L, H] bool.
    """
    _check_horizons(obs_horizon, action_horizon)
    t = np.arange(length)[:, None]
    obs = t - (obs_horizon - 1) + np.arange(obs_horizon)[None, :]
    act = t + np.arange(action_horizon)[None, :]
    return np.maximum(obs, 0), obs >= 0, np.minimum(act, length - 1), act <= length - 1


def _check_horizons(obs_horizon: int, action_horizon: int) -> None:
    if obs_horizon < 1 or action_horizon < 1:
        raise ValueError(
            f"horizons must be >= 1, got obs_horizon={obs_horizon}, action_horizon={action_horizon}"
        )


def _tf_window_indices(length, obs_horizon: int, action_horizon: int):
    """tf version of ``window_indices`` (same math); ``length`` may be a scalar tensor."""
    import tensorflow as tf  # the tf.data stream alone needs it

    length = tf.cast(length, tf.int32)
    t = tf.range(length)[:, None]
    obs = t - (obs_horizon - 1) + tf.range(obs_horizon)[None, :]
    act = t + tf.range(action_horizon)[None, :]
    return tf.maximum(obs, 0), obs >= 0, tf.minimum(act, length - 1), act <= length - 1


def make_windows(traj: dict, obs_horizon: int, action_horizon: int) -> dict:
    """All windows of one trajectory, stacked over the window's step t.

    Args:
      traj: one RLDS trajectory as from ``rlds.load_rlds_episodes``:
        ``observation/state`` as ``traj["observation"]["state"]`` [L, S],
        optional ``traj["observation"]["image/<camera>"]`` [L, h, w, 3],
        ``traj["action"]`` [L, A], optional ``traj["language_instruction"]`` [L].
      obs_horizon: T.
      action_horizon: H.

    Returns:
      A dict keyed by the batch schema, leading axis L: ``OBS_STATE`` [L, T, S],
      ``image_key(cam)`` [L, T, h, w, 3], ``OBS_PAD_MASK`` [L, T], ``ACTIONS`` [L, H, A],
      ``ACTION_PAD_MASK`` [L, H], ``PROMPT`` [L] (the step's instruction, when present).
    """
    import tensorflow as tf

    _check_horizons(obs_horizon, action_horizon)
    observation = traj[schema.RLDS_OBSERVATION]
    actions = traj[schema.RLDS_ACTION]
    obs_idx, obs_mask, act_idx, act_mask = _tf_window_indices(
        tf.shape(actions)[0], obs_horizon, action_horizon
    )
    out = {
        schema.OBS_STATE: tf.gather(observation[schema.RLDS_STATE], obs_idx),
        schema.OBS_PAD_MASK: obs_mask,
        schema.ACTIONS: tf.gather(actions, act_idx),
        schema.ACTION_PAD_MASK: act_mask,
    }
    for key, value in observation.items():
        if key.startswith(RLDS_IMAGE_PREFIX):
            camera = key.removeprefix(RLDS_IMAGE_PREFIX)
            out[schema.image_key(camera)] = tf.gather(value, obs_idx)
    if schema.RLDS_LANGUAGE in traj:
        out[schema.PROMPT] = traj[schema.RLDS_LANGUAGE]
    return out


def window_trajectory(traj: dict, obs_horizon: int, action_horizon: int):
    """One dataset element per step of ``traj``: the windows of ``make_windows``.

    Use as ``episodes.flat_map(lambda tr: window_trajectory(tr, T, H))``; elements are
    ``OBS_STATE`` [T, S], ``OBS_PAD_MASK`` [T], ``ACTIONS`` [H, A], ``ACTION_PAD_MASK``
    [H], ``PROMPT`` scalar string, ``image_key(cam)`` [T, h, w, 3].
    """
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices(make_windows(traj, obs_horizon, action_horizon))

"""Windows vs hand-written indices, and the tf windows vs the numpy reference."""

import numpy as np
import pytest
import tensorflow as tf

from action_gen.data import schema, windows


def test_window_indices_by_hand():
    obs_idx, obs_mask, act_idx, act_mask = windows.window_indices(5, 2, 3)
    np.testing.assert_array_equal(obs_idx, [[0, 0], [0, 1], [1, 2], [2, 3], [3, 4]])
    np.testing.assert_array_equal(
        obs_mask, [[False, True], [True, True], [True, True], [True, True], [True, True]]
    )
    np.testing.assert_array_equal(act_idx, [[0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 4], [4, 4, 4]])
    np.testing.assert_array_equal(
        act_mask,
        [
            [True, True, True],
            [True, True, True],
            [True, True, True],
            [True, True, False],
            [True, False, False],
        ],
    )


def test_episode_shorter_than_horizon():
    obs_idx, obs_mask, act_idx, act_mask = windows.window_indices(2, 3, 4)
    np.testing.assert_array_equal(obs_idx, [[0, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(obs_mask, [[False, False, True], [False, True, True]])
    np.testing.assert_array_equal(act_idx, [[0, 1, 1, 1], [1, 1, 1, 1]])
    np.testing.assert_array_equal(
        act_mask, [[True, True, False, False], [True, False, False, False]]
    )


def test_bad_horizon():
    with pytest.raises(ValueError, match="horizon"):
        windows.window_indices(5, 0, 3)


def _traj(length, state_dim=3, action_dim=2, with_image=True):
    rng = np.random.default_rng(length)
    obs = {schema.RLDS_STATE: rng.normal(size=(length, state_dim)).astype(np.float32)}
    if with_image:
        obs["image/wrist"] = rng.integers(0, 255, (length, 4, 4, 3), dtype=np.uint8)
    return {
        schema.RLDS_OBSERVATION: obs,
        schema.RLDS_ACTION: rng.normal(size=(length, action_dim)).astype(np.float32),
        schema.RLDS_LANGUAGE: np.array([f"step {i}".encode() for i in range(length)]),
    }


@pytest.mark.parametrize("length", [1, 2, 7])
def test_tf_windows_match_numpy(length):
    obs_h, act_h = 3, 4
    traj = _traj(length)
    tf_traj = tf.nest.map_structure(tf.constant, traj)
    elements = list(windows.window_trajectory(tf_traj, obs_h, act_h).as_numpy_iterator())
    assert len(elements) == length
    obs_idx, obs_mask, act_idx, act_mask = windows.window_indices(length, obs_h, act_h)
    state = traj[schema.RLDS_OBSERVATION][schema.RLDS_STATE]
    image = traj[schema.RLDS_OBSERVATION]["image/wrist"]
    for t, el in enumerate(elements):
        np.testing.assert_array_equal(el[schema.OBS_STATE], state[obs_idx[t]])
        np.testing.assert_array_equal(el[schema.image_key("wrist")], image[obs_idx[t]])
        np.testing.assert_array_equal(el[schema.OBS_PAD_MASK], obs_mask[t])
        np.testing.assert_array_equal(el[schema.ACTIONS], traj[schema.RLDS_ACTION][act_idx[t]])
        np.testing.assert_array_equal(el[schema.ACTION_PAD_MASK], act_mask[t])
        assert el[schema.PROMPT] == f"step {t}".encode()
        assert el[schema.OBS_STATE].shape == (obs_h, 3)
        assert el[schema.ACTIONS].shape == (act_h, 2)


def test_tf_windows_in_graph():
    """Runs inside flat_map (graph mode, unknown episode length)."""
    trajs = [_traj(n, with_image=False) for n in (2, 5)]
    ds = tf.data.Dataset.from_generator(
        lambda: iter(trajs),
        output_signature={
            schema.RLDS_OBSERVATION: {schema.RLDS_STATE: tf.TensorSpec([None, 3], tf.float32)},
            schema.RLDS_ACTION: tf.TensorSpec([None, 2], tf.float32),
            schema.RLDS_LANGUAGE: tf.TensorSpec([None], tf.string),
        },
    )
    out = list(ds.flat_map(lambda tr: windows.window_trajectory(tr, 2, 3)).as_numpy_iterator())
    assert len(out) == 7
    np.testing.assert_array_equal(out[2][schema.ACTION_PAD_MASK], [True, True, True])
    np.testing.assert_array_equal(out[6][schema.ACTION_PAD_MASK], [True, False, False])
    np.testing.assert_array_equal(out[2][schema.OBS_PAD_MASK], [False, True])

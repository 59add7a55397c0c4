"""Rollout media: frame strip layout and the animated GIF."""

import numpy as np
from PIL import Image

from action_gen.eval import media


def _episodes():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (n, 10, 12, 3), dtype=np.uint8) for n in (5, 9)]


def test_frame_strip_layout_and_outcome_borders():
    strip = media.frame_strip(_episodes(), [True, False], frames_per_episode=4)
    b = media._BORDER
    assert strip.shape == (2 * (10 + 2 * b), 4 * (12 + 2 * b), 3)
    assert tuple(strip[0, 0]) == media._SUCCESS_RGB  # row 0: success, green
    assert tuple(strip[10 + 2 * b, 0]) == media._FAILURE_RGB  # row 1: failure, red
    # The last frame of each episode is the row's last panel.
    last = _episodes()[1][-1]
    np.testing.assert_array_equal(strip[10 + 3 * b : 20 + 3 * b, -(12 + b) : -b], last)


def test_gif_has_one_frame_per_stride_and_holds_finished_episodes(tmp_path):
    path = tmp_path / "r.gif"
    media.save_gif(str(path), _episodes(), [True, False], stride=2)
    with Image.open(path) as gif:
        assert gif.n_frames == 5  # ceil(9 / 2) frames of the longest episode
        assert gif.size == (2 * (12 + 2 * media._BORDER), 10 + 2 * media._BORDER)


def test_gif_widens_the_stride_of_long_episodes_to_at_most_max_frames(tmp_path):
    path = tmp_path / "r.gif"
    media.save_gif(str(path), _episodes(), [True, False], stride=1, max_frames=4)
    with Image.open(path) as gif:
        assert gif.n_frames == 3  # stride ceil(9 / 4) = 3: frames 0, 3, 6
        assert gif.info["duration"] == 3 * 1000 // 20  # still played in rollout time

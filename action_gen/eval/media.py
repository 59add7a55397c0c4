"""Rollout media: an animated GIF and a frame strip of filmed evaluation episodes.

Frames come from `rollout.run_rollouts(..., record_frames=True)`: a list with one
[L_e + 1, h, w, 3] uint8 array per episode. Both writers use Pillow (a matplotlib
dependency), so no video codec has to be installed.
"""

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

_BORDER = 3
_SUCCESS_RGB = (40, 170, 60)
_FAILURE_RGB = (200, 40, 40)


def _framed(frame: np.ndarray, success: bool) -> np.ndarray:
    """A frame [h, w, 3] inside a green (success) or red (failure) border."""
    color = np.asarray(_SUCCESS_RGB if success else _FAILURE_RGB, np.uint8)
    out = np.empty((frame.shape[0] + 2 * _BORDER, frame.shape[1] + 2 * _BORDER, 3), np.uint8)
    out[:] = color
    out[_BORDER:-_BORDER, _BORDER:-_BORDER] = frame
    return out


def frame_strip(
    episodes: Sequence[np.ndarray], successes: Sequence[bool], frames_per_episode: int = 8
) -> np.ndarray:
    """One row per episode of `frames_per_episode` evenly spaced frames (first and last
    included), each bordered green or red by the episode's outcome.

    Returns:
      [E * (h + 2b), K * (w + 2b), 3] uint8 (b: border width).
    """
    if not episodes:
        raise ValueError("no episodes to draw")
    rows = []
    for frames, success in zip(episodes, successes, strict=True):
        frames = np.asarray(frames, np.uint8)
        picks = np.linspace(0, len(frames) - 1, frames_per_episode).round().astype(int)
        rows.append(np.concatenate([_framed(frames[i], bool(success)) for i in picks], axis=1))
    return np.concatenate(rows, axis=0)


def save_frame_strip(path: str, episodes, successes, frames_per_episode: int = 8) -> None:
    """Writes `frame_strip(...)` as a PNG."""
    Image.fromarray(frame_strip(episodes, successes, frames_per_episode)).save(path)


def save_gif(
    path: str, episodes, successes, fps: int = 20, stride: int = 2, max_frames: int = 64
) -> None:
    """Writes the episodes side by side as one animated GIF (every `stride`-th control
    step, played at `fps` control steps per second, i.e. in the rollout's time); an episode
    that ended early holds its last frame. Each panel is bordered by its outcome and
    labelled with the episode index.

    Long episodes widen the stride so that the GIF has at most `max_frames` frames: a
    rendered simulator frame costs ~16 KB in a GIF, and a 400-step ALOHA episode at stride 2
    would make a 3 MB file (results/ keeps these in git)."""
    episodes = [np.asarray(f, np.uint8) for f in episodes]
    if not episodes:
        raise ValueError("no episodes to animate")
    length = max(len(f) for f in episodes)
    stride = max(stride, -(-length // max_frames))
    images = []
    for t in range(0, length, stride):
        panels = []
        for index, (frames, success) in enumerate(zip(episodes, successes, strict=True)):
            panel = Image.fromarray(_framed(frames[min(t, len(frames) - 1)], bool(success)))
            ImageDraw.Draw(panel).text((_BORDER + 2, _BORDER + 1), str(index), fill=(255, 255, 255))
            panels.append(np.asarray(panel))
        images.append(Image.fromarray(np.concatenate(panels, axis=1)))
    images[0].save(
        path, save_all=True, append_images=images[1:], duration=int(1000 * stride / fps), loop=0
    )

"""Image resizing shared by the training stream and the policy server (numpy + PIL, no TF).

`resize_with_pad` is openpi's server-side resize (openpi_client.image_tools, itself a copy of
tf.image.resize_with_pad's geometry): PIL bilinear (antialiased when shrinking) to the
largest size that keeps the aspect ratio within (height, width), truncated to whole pixels,
pasted centered on black. The training stream resizes a dataset's frames with this same
function (data/standardize.py), so a model sees the same pixels from a recording and from a
robot client sending frames of any size.
"""

import numpy as np


def resize_with_pad(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """[h, w, 3] uint8 → [height, width, 3] uint8 (module docstring; a no-op at the size)."""
    if image.shape[:2] == (height, width):
        return image
    from PIL import Image  # noqa: PLC0415

    pil = Image.fromarray(np.ascontiguousarray(image))
    cur_w, cur_h = pil.size
    ratio = max(cur_w / width, cur_h / height)
    new_h, new_w = int(cur_h / ratio), int(cur_w / ratio)
    resized = pil.resize((new_w, new_h), resample=Image.BILINEAR)
    canvas = Image.new(resized.mode, (width, height), 0)
    canvas.paste(resized, (max(0, int((width - new_w) / 2)), max(0, int((height - new_h) / 2))))
    return np.asarray(canvas)


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """[L, h, w, 3] uint8 → [L, height, width, 3], each frame by `resize_with_pad`."""
    frames = np.asarray(frames)
    if frames.shape[1:3] == (height, width):
        return frames
    out = np.zeros((len(frames), height, width, 3), np.uint8)
    for i, frame in enumerate(frames):
        out[i] = resize_with_pad(frame, height, width)
    return out

"""Image augmentation inside the tf.data graph: DP's random crop, one op per batch.

Diffusion Policy trains image policies on random crops (84 of 96 pixels) and evaluates on
the center crop. Here the crop runs on whole batches in tf.data (never per sample in
Python): for batch index i, per-sample offsets are drawn with a stateless RNG seeded by
(seed, i), so the stream stays a pure function of (dataset, seed) and resuming at batch k
reproduces it exactly (pipeline.py's contract). All T frames of one sample share the
offset, as DP's crop randomizer does per observation. The model's encoder center-crops
whatever it gets to the same size (models/resnet.py), an identity on these crops and the
eval-time center crop on full frames.
"""

from collections.abc import Mapping, Sequence

import tensorflow as tf

from action_gen.data import schema


def random_crop_images(
    images: tf.Tensor, crop: Sequence[int], seed: tf.Tensor | Sequence[int]
) -> tf.Tensor:
    """Random [ch, cw] windows of a batch of image histories.

    Args:
      images: [B, T, h, w, C].
      crop: (ch, cw) <= (h, w).
      seed: a stateless seed, shape [2] int (e.g. (base seed, batch index)).
    Returns:
      [B, T, ch, cw, C]: sample b is images[b, :, y_b : y_b + ch, x_b : x_b + cw] with
      y_b ~ U{0..h-ch}, x_b ~ U{0..w-cw} independent per sample.
    """
    ch, cw = (int(c) for c in crop)
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[2], shape[3]
    tf.debugging.assert_greater_equal(
        tf.stack([height, width]), tf.constant([ch, cw]), message="image smaller than crop"
    )
    offsets = tf.random.stateless_uniform(
        [batch, 2], seed=tf.cast(seed, tf.int64), minval=0, maxval=2**31 - 1, dtype=tf.int32
    )
    top = offsets[:, 0] % (height - ch + 1)
    left = offsets[:, 1] % (width - cw + 1)
    rows = top[:, None] + tf.range(ch)[None, :]  # [B, ch]
    cols = left[:, None] + tf.range(cw)[None, :]  # [B, cw]
    out = tf.gather(images, rows, axis=2, batch_dims=1)  # [B, T, ch, w, C]
    return tf.gather(out, cols, axis=3, batch_dims=1)  # [B, T, ch, cw, C]


def crop_batch_images(
    batch: Mapping[str, tf.Tensor], crop: Sequence[int], seed: int, batch_index: tf.Tensor
) -> dict:
    """`random_crop_images` on every camera of a batch (a different stream per camera)."""
    out = dict(batch)
    cameras = sorted(k for k in batch if k.startswith(schema.OBS_IMAGE_PREFIX))
    for i, key in enumerate(cameras):
        stream = tf.stack([tf.cast(seed, tf.int64), tf.cast(batch_index, tf.int64) * 1009 + i])
        out[key] = random_crop_images(batch[key], crop, stream)
    return out

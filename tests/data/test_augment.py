"""Random crop in tf.data (DP's image augmentation) and dataset mixing with weights."""

import numpy as np
import pytest
import tensorflow as tf

from action_gen import config_schema
from action_gen.data import augment, pipeline, rlds, schema, transforms


def test_random_crop_matches_numpy_windows_and_is_seeded():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 2, 10, 12, 3), dtype=np.uint8)
    out = augment.random_crop_images(tf.constant(images), (7, 8), (3, 5)).numpy()
    assert out.shape == (6, 2, 7, 8, 3) and out.dtype == np.uint8
    offsets = set()
    for b in range(6):
        # Each sample is one window of its own frames, the same window for all T frames.
        matches = [
            (y, x)
            for y in range(10 - 7 + 1)
            for x in range(12 - 8 + 1)
            if np.array_equal(out[b], images[b, :, y : y + 7, x : x + 8])
        ]
        assert len(matches) >= 1
        offsets.add(matches[0])
    assert len(offsets) > 1  # offsets differ across the batch
    again = augment.random_crop_images(tf.constant(images), (7, 8), (3, 5)).numpy()
    np.testing.assert_array_equal(again, out)
    other = augment.random_crop_images(tf.constant(images), (7, 8), (3, 6)).numpy()
    assert not np.array_equal(other, out)
    with pytest.raises(tf.errors.InvalidArgumentError, match="smaller than crop"):
        augment.random_crop_images(tf.constant(images), (11, 8), (0, 0))


def _write(root, name, offset, lengths=(5, 7), image=False):
    episodes = []
    for i, length in enumerate(lengths):
        obs = {"state": np.full((length, 3), offset + i, np.float32)}
        if image:
            obs["image/cam"] = np.zeros((length, 10, 10, 3), np.uint8)
        episodes.append(
            {
                "observation": obs,
                "action": np.full((length, 2), offset, np.float32),
                "language_instruction": name,
            }
        )
    return rlds.write_rlds_dataset(episodes, root, name=name)


def test_mixture_follows_weights_and_crops_images(tmp_path):
    a = _write(tmp_path, "a", 0.0, image=True)
    b = _write(tmp_path, "b", 10.0, image=True)
    stats = pipeline.compute_mixture_norm_stats([a, b])
    kwargs = dict(obs_horizon=2, action_horizon=4, batch_size=50, norm_stats=stats)
    kwargs.update(shuffle_buffer=16, seed=3)
    ds = pipeline.create_train_dataset([a, b], weights=[3.0, 1.0], image_crop=(8, 8), **kwargs)
    batches = list(pipeline.iterate_numpy_batches(ds.take(8)))
    prompts = np.concatenate([x[schema.PROMPT] for x in batches])
    share_a = float(np.mean(prompts == b"a"))
    assert 0.65 < share_a < 0.85, share_a  # 3:1 weights over 400 windows
    assert batches[0][schema.image_key("cam")].shape == (50, 2, 8, 8, 3)
    # Deterministic: the same seed gives the same stream, also when resumed at batch 5.
    ds2 = pipeline.create_train_dataset([a, b], weights=[3.0, 1.0], image_crop=(8, 8), **kwargs)
    resumed = next(pipeline.iterate_numpy_batches(ds2, start_batch=5))
    for key in batches[5]:
        np.testing.assert_array_equal(resumed[key], batches[5][key])
    # Actions normalized with the joint stats (the run's pipeline): a's 0 -> -1, b's 10 -> +1.
    config = config_schema.base_config()
    config.data.obs_horizon = 2  # state_norm, action_norm: min-max (the schema's defaults)
    pipe = transforms.create_pipeline(config, stats)
    actions = np.concatenate([pipe.inputs(x)[0][schema.ACTIONS][:, 0, 0] for x in batches])
    np.testing.assert_allclose(np.sort(np.unique(actions.round(5))), [-1.0, 1.0])


def test_mixture_errors(tmp_path):
    a = _write(tmp_path, "a", 0.0)
    c = _write(tmp_path, "c", 0.0, image=True)
    stats = pipeline.compute_mixture_norm_stats([a])
    kwargs = dict(obs_horizon=2, action_horizon=4, batch_size=4, norm_stats=stats)
    with pytest.raises(ValueError, match="mixture weights"):
        pipeline.create_train_dataset([a, a], weights=[1.0], **kwargs)
    with pytest.raises(ValueError, match="different fields"):
        pipeline.create_train_dataset([a, c], **kwargs)
    with pytest.raises(ValueError, match=">= 0"):
        pipeline.create_train_dataset([a, a], weights=[-1.0, 2.0], **kwargs)

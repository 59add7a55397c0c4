"""Heterogeneous mixtures (3 robots of different state / action dims and cameras) and
resume without replay: the stream at batch k built directly equals the uninterrupted
stream's batch k, at a cost that does not grow with k; one tiny end-to-end training run
on the 3-way mixture, restored as a Policy that serves one of its robots."""

import os

import ml_collections
import numpy as np
import pytest

from action_gen import config_schema
from action_gen.data import normalize, pipeline, schema, standardize, transforms
from tests.data.oxe_fixtures import write_layout

NAMES = ("fractal20220817_data", "taco_play", "aloha")  # state 8 / 7 / 14, action 7 / 7 / 14
SIZE = (16, 16)
T, H, B = 2, 4, 6


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    dirs = [write_layout(name, root, lengths=(6, 5, 7, 5)) for name in NAMES]
    mappings = standardize.resolve_mappings(NAMES, dirs)
    stats = normalize.combine_dataset_stats(
        {
            name: pipeline.compute_dataset_norm_stats(d, mapping=m, name=name)
            for name, d, m in zip(NAMES, dirs, mappings, strict=True)
        }
    )
    cameras = {slot: SIZE for slot in standardize.camera_slots(mappings)}
    return root, dirs, mappings, stats, cameras


def _stream(mixture, **kw):
    _, dirs, mappings, stats, cameras = mixture
    args = dict(
        obs_horizon=T,
        action_horizon=H,
        batch_size=B,
        norm_stats=stats,
        shuffle_buffer=16,
        seed=5,
        weights=[2.0, 1.0, 1.0],
        mappings=mappings,
        dataset_names=NAMES,
        cameras=cameras,
        episodes_per_block=2,
        mixture_block=20,
    )
    return pipeline.create_train_dataset(dirs, **(args | kw))


def _take(dataset, n):
    it = pipeline.iterate_numpy_batches(dataset)
    return [next(it) for _ in range(n)]


def _normalized(batches, stats):
    """The batches through the run's transform pipeline: each window normalized with its
    own dataset's stats (by `schema.DATASET_INDEX`), action dims masked per robot."""
    config = config_schema.complete(
        ml_collections.ConfigDict(
            {"data": {"state_norm": "minmax", "action_norm": "minmax", "obs_horizon": T}}
        )
    )
    pipe = transforms.create_pipeline(config, stats, dataset_names=NAMES)
    return [pipe.inputs(b)[0] for b in batches]


def test_mixture_batches_pad_mask_and_normalize_per_dataset(mixture):
    _, _, _, stats, cameras = mixture
    raw = _take(_stream(mixture), 10)  # 60 windows: 3 mixing runs of 20
    batches = _normalized(raw, stats)
    batch = batches[0]
    assert batch[schema.OBS_STATE].shape == (B, T, 14)
    assert batch[schema.ACTIONS].shape == (B, H, 14)
    assert sorted(k for k in batch if k.startswith(schema.OBS_IMAGE_PREFIX)) == [
        schema.image_key(s) for s in sorted(cameras)
    ]
    dim_masks = np.concatenate([b[schema.ACTION_DIM_MASK] for b in batches])
    widths = dim_masks.sum(axis=1)
    assert set(widths.tolist()) == {7, 14}
    # Quotas: weights 2:1:1 over runs of 20 windows -> 10 / 5 / 5 per run; aloha (14 dims)
    # gives 5 of every 20.
    assert (widths == 14).sum() == 15
    actions = np.concatenate([b[schema.ACTIONS] for b in batches])
    # Padded dims are 0; each robot's own dims in its own [-1, 1] (minmax per dataset).
    assert np.all(actions[widths == 7][..., 7:] == 0)
    assert np.abs(actions).max() <= 1 + 1e-5 and actions.max() > 0.9 and actions.min() < -0.9
    # A taco window (7-d action) lacks the aloha wrist cameras: black, image_mask False.
    masks = np.concatenate([b[schema.image_mask_key("left_wrist")] for b in batches])
    frames = np.concatenate([b[schema.image_key("left_wrist")] for b in batches])
    assert masks.sum() == 15 and np.all(frames[~masks] == 0)
    assert set(normalize.dataset_names(stats)) == set(NAMES)


def test_resume_at_batch_k_equals_the_uninterrupted_stream(mixture):
    full = _take(_stream(mixture), 9)
    for k in (4, 7):  # inside a block, across mixing runs and block boundaries
        resumed = _take(_stream(mixture, start_batch=k), 2)
        for a, b in zip(full[k : k + 2], resumed, strict=True):
            assert a.keys() == b.keys()
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"k={k} {key}")


def test_resume_reads_a_bounded_number_of_episodes_whatever_k(mixture, monkeypatch):
    """Resuming at batch k reads the same few blocks of episodes at k = 10 and at
    k = 100,000 (replaying 100k batches of 6 windows would read ~10^5 episodes): every
    episode read is counted as tf.data executes it."""
    import tensorflow as tf

    from action_gen.data import rlds

    reads = []
    read_episodes = rlds.read_episodes

    def counted(index, episode_ids, **kw):
        def count(i):
            reads.append(int(i))
            return i

        ids = episode_ids.map(lambda i: tf.py_function(count, [i], tf.int64))
        return read_episodes(index, ids, **kw)

    monkeypatch.setattr(rlds, "read_episodes", counted)
    counts = {}
    for k in (10, 100_000):
        reads.clear()
        _take(_stream(mixture, start_batch=k), 1)
        counts[k] = len(reads)
    # The current block and the one read ahead, per dataset, re-read while a block's
    # windows repeat to its fixed size, plus what tf.data's prefetching has started: ~10^2
    # either way (measured 106 and 108), three orders of magnitude below a replay.
    assert 0 < counts[10] <= 1_000 and 0 < counts[100_000] <= 1_000, counts


def test_three_robot_mixture_trains_and_serves_one_robot(mixture, tmp_path):
    from action_gen.sample.policy import Policy
    from action_gen.train import loop
    from configs import diffusion_unet_dataset

    _, dirs, _, _, _ = mixture
    config = diffusion_unet_dataset.get_config(f"name={'+'.join(NAMES)},smoke")
    config.data.dataset_dirs = ",".join(dirs)
    config.data.image_size = list(SIZE)
    config.data.image_crop = [14, 14]
    config.model.image_crop = [14, 14]
    config.data.obs_horizon = T
    config.data.action_horizon = H
    config.train.num_steps = 2
    config.train.checkpoint_every = 2
    workdir = str(tmp_path / "run")
    state = loop.train(config, workdir)
    assert int(state.step) == 2

    with pytest.raises(ValueError, match="several datasets"):
        Policy.from_checkpoint(workdir)
    policy = Policy.from_checkpoint(workdir, dataset="taco_play")
    spec = policy.observation_spec
    assert spec[schema.OBS_STATE][0] == (T, 7)
    assert sorted(k for k in spec if k.startswith(schema.OBS_IMAGE_PREFIX)) == [
        schema.image_key("primary"),
        schema.image_key("wrist"),
    ]
    assert policy.action_shape == (H, 7)
    rng = np.random.default_rng(0)
    observation = {
        key: (
            rng.integers(0, 255, (1, *shape), dtype=np.uint8)
            if dtype == "uint8"
            else np.asarray(["open the drawer"])
            if dtype == "string"
            else rng.normal(size=(1, *shape)).astype(dtype)
        )
        for key, (shape, dtype) in spec.items()
    }
    actions = policy.sample_actions(observation, 0)
    assert actions.shape == (1, H, 7) and np.isfinite(actions).all()
    # The checkpoint's stats are per dataset; the policy unnormalizes with taco_play's.
    own = normalize.dataset_stats(policy.norm_stats, "taco_play")
    assert policy.dataset == "taco_play" and normalize.feature_dims(own) == (7, 7)
    aloha = Policy.from_checkpoint(workdir, dataset="aloha")
    assert aloha.action_shape == (H, 14)
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "2"))

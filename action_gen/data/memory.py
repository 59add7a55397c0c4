"""The training stream without TensorFlow: a LeRobot dataset held in host memory.

`data.loader = "memory"` trains on one LeRobot dataset (v2.x or v3.0, data/lerobot.py) read
straight into numpy arrays: no RLDS conversion, no tf.data, nothing imported from
TensorFlow. It is for machines that lack TensorFlow (the lent GPU machines carry only
pure-Python wheels) and for datasets that fit in RAM (ALOHA's 50 scripted demos: 20,000
steps, 4.6 GB of 240x320 frames). Anything larger, a mixture, or a foreign layout (a
mapping, a robot adapter's recordings) keeps the tf.data stream (data/pipeline.py); asking
the memory loader for one is an error that says so.

The stream. The dataset's N steps each start one window (data/windows.py's
`window_indices`: T observations ending at the step, the first repeated before the episode
start; H actions from the step, the last repeated past the end; their pad masks). The
infinite window sequence is, epoch by epoch, a permutation of all N windows:

    position n  ->  window perm_e[n mod N],  e = n // N,
    perm_e = numpy.random.default_rng([seed, e]).permutation(N)

(a global shuffle each epoch: what the tf.data stream does when the dataset fits its
shuffle buffer, with other draws). Batch k of global size B is positions [kB, (k+1)B);
process p of P keeps rows [pB/P, (p+1)B/P) of it. The random crop of batch k draws its
offsets from default_rng([seed, k, camera]), the same for all T frames of a sample (DP's
crop randomizer; data/augment.py's rule). Every batch is a function of (dataset, seed, k):
a run resumed at batch k gets the uninterrupted stream's batch k, recomputing nothing.

Batches have the tf.data stream's keys, dtypes and units (raw: the transform pipeline,
data/transforms.py, normalizes them): ``OBS_STATE`` [B, T, S] float32, ``OBS_PAD_MASK``
[B, T] bool, ``ACTIONS`` [B, H, A] float32, ``ACTION_PAD_MASK`` [B, H] bool, ``PROMPT``
[B] bytes, ``DATASET_INDEX`` [B] int32 (0), ``image_key(cam)`` [B, T, h, w, 3] uint8.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import os
from collections.abc import Iterator, Sequence

import numpy as np

from action_gen import cli
from action_gen.data import lerobot, schema, validate, windows
from action_gen.data import normalize as norm


def check_supported(dataset_dirs: Sequence[str], *, foreign_layout: bool) -> None:
    """Raises ValueError unless the run is one LeRobot dataset in our own layout."""
    if len(dataset_dirs) != 1:
        raise ValueError(
            f"data.loader='memory' reads one dataset, not a mixture of {len(dataset_dirs)} "
            f"({', '.join(map(str, dataset_dirs))}); use data.loader='tfdata'"
        )
    if not os.path.isdir(dataset_dirs[0]):
        raise FileNotFoundError(f"data.loader='memory': no dataset directory {dataset_dirs[0]}")
    if not lerobot.is_lerobot_dataset(dataset_dirs[0]):
        raise ValueError(
            f"data.loader='memory' reads LeRobot datasets (meta/info.json); {dataset_dirs[0]} "
            "is not one (RLDS datasets need data.loader='tfdata', which needs TensorFlow)"
        )
    if foreign_layout:
        raise ValueError(
            "data.loader='memory' reads a LeRobot dataset in its own layout; a run with "
            "data.dataset_names or config.robot (a mapping of the dataset's keys) needs "
            "data.loader='tfdata'"
        )


def dataset_fingerprint(data_dir) -> str:
    """sha256 of the LeRobot dataset's metadata (`lerobot.source_fingerprint`): stored in
    checkpoints and checked on resume, as the tf.data loader's RLDS fingerprint is."""
    return lerobot.source_fingerprint(data_dir)


def _episodes(data_dir, *, images: bool, label: str) -> Iterator[dict]:
    total = len(lerobot.list_episodes(lerobot.read_lerobot_info(data_dir)))
    bar = cli.progress(total, f"{label} {os.path.basename(os.path.normpath(data_dir))}")
    try:
        for episode in lerobot.iterate_lerobot_episodes(data_dir, images=images):
            bar.update(1)
            yield episode
    finally:
        bar.close()


def compute_norm_stats(data_dir) -> dict:
    """Normalization stats of the dataset's states and actions (one pass over its parquet
    rows; no video is decoded), in the tf.data loader's stats layout:
    ``{"state", "actions", "_fingerprint", "_episodes", "_steps"}``."""
    state_acc, action_acc = norm.NormStatsAccumulator(), norm.NormStatsAccumulator()
    episodes = steps = 0
    for episode in _episodes(data_dir, images=False, label="norm stats"):
        state = episode[schema.RLDS_OBSERVATION][schema.RLDS_STATE]
        action = episode[schema.RLDS_ACTION]
        state_acc.update(state.reshape(len(state), -1))
        action_acc.update(action.reshape(len(action), -1))
        episodes += 1
        steps += len(action)
    if not episodes:
        raise ValueError(f"LeRobot dataset {data_dir}: no episodes")
    return {
        norm.STATE: state_acc.finalize(),
        norm.ACTIONS: action_acc.finalize(),
        norm.FINGERPRINT: dataset_fingerprint(data_dir),
        norm.EPISODES: episodes,
        norm.STEPS: steps,
    }


def check_dataset(data_dir) -> validate.Report:
    """data/validate.py's checks (non-finite values, lengths, constant dims, action
    outliers) on the dataset's states and actions; raises ValueError with the report on an
    error, logs warnings. LeRobot has no is_first / is_last fields: an episode's steps are
    its rows (the reader checks frame_index and timestamps), so they are marked here."""

    def with_boundaries():
        for episode in _episodes(data_dir, images=False, label="validate"):
            step = np.arange(len(episode[schema.RLDS_ACTION]))
            yield dict(episode, is_first=step == 0, is_last=step == len(step) - 1)

    fps = float(lerobot.read_lerobot_info(data_dir).fps)
    report = validate.validate_trajectories(
        with_boundaries(), path=os.fspath(data_dir), control_hz=fps
    )
    return validate.enforce(report)


@dataclasses.dataclass(frozen=True)
class InMemoryDataset:
    """Every step of a dataset, concatenated over its episodes (L_total rows), and the
    gather indices of every window.

    Attributes:
      state: [L_total, S] float32, the run's state dim (zero-padded).
      action: [L_total, A] float32, the run's action dim (zero-padded).
      prompt: [L_total] bytes, each step's instruction.
      images: {camera: [L_total, h, w, 3] uint8}.
      obs_index: [N, T] int64 rows of each window's observations; obs_pad_mask [N, T].
      action_index: [N, H] int64 rows of each window's actions; action_pad_mask [N, H].
    """

    state: np.ndarray
    action: np.ndarray
    prompt: np.ndarray
    images: dict
    obs_index: np.ndarray
    obs_pad_mask: np.ndarray
    action_index: np.ndarray
    action_pad_mask: np.ndarray

    @property
    def num_windows(self) -> int:
        return len(self.obs_index)


def _pad_dims(x: np.ndarray, dim: int, what: str, where) -> np.ndarray:
    x = np.asarray(x, np.float32).reshape(len(x), -1)
    if x.shape[1] > dim:
        raise ValueError(f"{where}: {what} has {x.shape[1]} dims, the run's stats {dim}")
    return np.pad(x, [(0, 0), (0, dim - x.shape[1])])


def load_dataset(
    data_dir,
    *,
    obs_horizon: int,
    action_horizon: int,
    state_dim: int,
    action_dim: int,
) -> InMemoryDataset:
    """Reads every episode of the LeRobot dataset at `data_dir` (cameras decoded) into an
    `InMemoryDataset` of windows T observations / H actions long."""
    state, action, prompt, frames, obs_idx, obs_mask, act_idx, act_mask = ([] for _ in range(8))
    cameras, offset = None, 0
    for episode in _episodes(data_dir, images=True, label="load"):
        observation = episode[schema.RLDS_OBSERVATION]
        where = f"{data_dir} episode {int(episode['episode_metadata']['episode_index'])}"
        keys = sorted(k for k in observation if k.startswith(windows.RLDS_IMAGE_PREFIX))
        if cameras is None:
            cameras = keys
        elif keys != cameras:
            raise ValueError(f"{where}: cameras {keys}, the first episode's {cameras}")
        length = len(episode[schema.RLDS_ACTION])
        state.append(_pad_dims(observation[schema.RLDS_STATE], state_dim, "state", where))
        action.append(_pad_dims(episode[schema.RLDS_ACTION], action_dim, "action", where))
        prompt.append(np.array([str(t).encode() for t in episode[schema.RLDS_LANGUAGE]], object))
        frames.append([np.asarray(observation[k], np.uint8) for k in cameras])
        o, om, a, am = windows.window_indices(length, obs_horizon, action_horizon)
        obs_idx.append(o + offset)
        obs_mask.append(om)
        act_idx.append(a + offset)
        act_mask.append(am)
        offset += length
    if cameras is None:
        raise ValueError(f"LeRobot dataset {data_dir}: no episodes")
    images = {
        k.removeprefix(windows.RLDS_IMAGE_PREFIX): np.concatenate([f[i] for f in frames])
        for i, k in enumerate(cameras)
    }
    return InMemoryDataset(
        state=np.concatenate(state),
        action=np.concatenate(action),
        prompt=np.concatenate(prompt),
        images=images,
        obs_index=np.concatenate(obs_idx),
        obs_pad_mask=np.concatenate(obs_mask),
        action_index=np.concatenate(act_idx),
        action_pad_mask=np.concatenate(act_mask),
    )


@functools.lru_cache(maxsize=8)
def _epoch_permutation(num_windows: int, seed: int, epoch: int) -> np.ndarray:
    """Epoch `epoch`'s order of the N windows (cached: every batch of an epoch reads it)."""
    perm = np.random.default_rng([seed, epoch]).permutation(num_windows)
    perm.setflags(write=False)
    return perm


def window_ids(num_windows: int, seed: int, start: int, count: int) -> np.ndarray:
    """[count] the windows at positions [start, start + count) of the stream (module
    docstring: epoch e is default_rng([seed, e]).permutation(N))."""
    positions = np.arange(start, start + count, dtype=np.int64)
    epochs = positions // num_windows
    out = np.empty(count, np.int64)
    for epoch in np.unique(epochs):
        perm = _epoch_permutation(int(num_windows), int(seed), int(epoch))
        here = epochs == epoch
        out[here] = perm[positions[here] % num_windows]
    return out


def crop_offsets(
    rng: np.random.Generator, count: int, frame_size: Sequence[int], crop: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """(top [count], left [count]): y ~ U{0..h-ch}, x ~ U{0..w-cw}, independent per sample."""
    (height, width), (ch, cw) = (int(x) for x in frame_size), (int(c) for c in crop)
    if ch > height or cw > width:
        raise ValueError(f"data.image_crop {(ch, cw)} is larger than the frames {(height, width)}")
    return rng.integers(0, height - ch + 1, size=count), rng.integers(0, width - cw + 1, size=count)


def _gather_frames(frames, rows, top=None, left=None, crop=None) -> np.ndarray:
    """frames [L_total, h, w, 3], rows [B, T] -> [B, T, h, w, 3], or with the crop
    [B, T, ch, cw, 3]: sample b's window frames[rows[b], top_b : top_b + ch, left_b : ...]."""
    if crop is None:
        return frames[rows]
    ch, cw = (int(c) for c in crop)
    out = np.empty((*rows.shape, ch, cw, frames.shape[-1]), frames.dtype)
    for b, (y, x) in enumerate(zip(top, left, strict=True)):
        out[b] = frames[rows[b], y : y + ch, x : x + cw]
    return out


def batch_at(
    data: InMemoryDataset,
    k: int,
    *,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    image_crop: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """This process's rows of batch `k` of the stream (module docstring)."""
    if global_batch_size % process_count:
        raise ValueError(
            f"batch size {global_batch_size} is not divisible by {process_count} processes"
        )
    local = global_batch_size // process_count
    ids = window_ids(data.num_windows, seed, k * global_batch_size, global_batch_size)
    ids = ids[process_index * local : (process_index + 1) * local]
    obs, act = data.obs_index[ids], data.action_index[ids]
    batch = {
        schema.OBS_STATE: data.state[obs],
        schema.OBS_PAD_MASK: data.obs_pad_mask[ids],
        schema.ACTIONS: data.action[act],
        schema.ACTION_PAD_MASK: data.action_pad_mask[ids],
        schema.PROMPT: data.prompt[obs[:, -1]],
        schema.DATASET_INDEX: np.zeros(len(ids), np.int32),
    }
    for i, camera in enumerate(sorted(data.images)):
        frames = data.images[camera]
        if image_crop:
            # Drawn for the whole global batch, then this process's rows: the crops do not
            # depend on the process count.
            rng = np.random.default_rng([int(seed), int(k), i])
            top, left = crop_offsets(rng, global_batch_size, frames.shape[1:3], image_crop)
            rows = slice(process_index * local, (process_index + 1) * local)
            batch[schema.image_key(camera)] = _gather_frames(
                frames, obs, top[rows], left[rows], image_crop
            )
        else:
            batch[schema.image_key(camera)] = _gather_frames(frames, obs)
    return batch


def iterate_batches(
    data: InMemoryDataset,
    *,
    global_batch_size: int,
    seed: int,
    start_batch: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    image_crop: Sequence[int] | None = None,
    prefetch: int = 4,
) -> Iterator[dict[str, np.ndarray]]:
    """Batches `start_batch`, `start_batch + 1`, ... of the stream (`batch_at`), in order,
    the next `prefetch` of them gathered by as many threads meanwhile (numpy's gathers
    release the GIL; each batch is a function of its index, so the order is exact)."""
    if start_batch < 0:
        raise ValueError(f"start_batch must be >= 0, got {start_batch}")

    def make(k):
        return batch_at(
            data,
            k,
            global_batch_size=global_batch_size,
            seed=seed,
            process_index=process_index,
            process_count=process_count,
            image_crop=image_crop,
        )

    with concurrent.futures.ThreadPoolExecutor(max(1, prefetch)) as pool:
        pending = collections.deque(
            pool.submit(make, k) for k in range(start_batch, start_batch + max(1, prefetch))
        )
        k = start_batch + len(pending)
        while True:
            batch = pending.popleft().result()
            pending.append(pool.submit(make, k))
            k += 1
            yield batch

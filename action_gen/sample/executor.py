"""Robot-side execution of action chunks: receding horizon, ACT temporal ensembling,
asynchronous inference and real-time chunking (RTC).

Time is counted in control steps. Every chunk is stamped with the step of the observation
it was computed from (`Chunk.start`): its action i is meant for step start + i. Whatever
arrives late is aligned by that stamp, so the actions for steps already gone are dropped
(stale), never replayed.

Modes (H = action horizon, s = execution horizon, d = inference delay in steps):
  sync      receding horizon, blocking: execute s actions, then stop and wait for the next
            chunk (the robot holds its last command for the d steps inference takes); the
            new chunk starts where the wait ended.
  async     naive asynchronous: when the queue of planned actions falls to `H - s`, request
            the next chunk in the background from the current observation and keep
            executing the old one; on arrival, switch to it at the current step (its first
            d actions are stale and dropped). The switch can jump: the two chunks were
            sampled independently.
  ensemble  ACT temporal ensembling: request a chunk every `ensemble_interval` steps; the
            command at step t averages every chunk that covers t, weighted
            w_k = exp(-m k), k = 0 for the oldest (Zhao et al. 2023, m = 0.01).
  rtc       async timing, but the next chunk is inpainted (Black, Galliker & Levine 2025):
            the sampler is guided so its first d actions equal what the robot will execute
            while it runs (the current plan's), with soft exponentially decaying weights over
            the rest of the overlap (`rtc_prefix_weights`), so the switch is continuous.
            d comes from the measured latency (`estimate_delay`) or the simulated delay.

The very first chunk of an episode is always fetched blocking (the robot is at rest).

The executor is batched (N robots in lockstep, N = 1 on a real robot) and talks to the
policy through `sample_fn(observation, guidance=None) -> [N, H, A]`: `policy_sample_fn`
wraps an in-process `Policy`, `client_sample_fn` an openpi-style websocket client.
Inference runs in a thread pool (`simulated_delay=None`) or, for reproducible studies,
immediately with its result withheld for exactly `simulated_delay` steps.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import math
import time
from collections.abc import Callable

import numpy as np

MODES = ("sync", "async", "ensemble", "rtc")
# ACT's temporal-ensembling decay (Zhao et al. 2023): w_k = exp(-m k), k = 0 the oldest.
ACT_DECAY = 0.01
# RTC's clip of the guidance weight (the paper's β).
RTC_MAX_GUIDANCE = 5.0


@dataclasses.dataclass(frozen=True)
class Guidance:
    """What the RTC sampler should inpaint.

    Attributes:
      prefix: [N, H, A] raw actions the current plan has for steps start .. start + H - 1
        (the tail beyond the plan repeats its last action; its weight is 0).
      weights: [H] per-step weights W (see `rtc_prefix_weights`).
      delay: d, the steps the robot executes from `prefix` while the new chunk is computed.
    """

    prefix: np.ndarray
    weights: np.ndarray
    delay: int


@dataclasses.dataclass
class Chunk:
    """An action chunk stamped with its first step: actions[:, i] is for step start + i."""

    start: int
    actions: np.ndarray  # [N, H, A]


def rtc_prefix_weights(horizon: int, delay: int, overlap: int) -> np.ndarray:
    """RTC's soft prefix weights W [H] (Black, Galliker & Levine 2025, Eq. 5).

      W_i = 1                                   i < d          (executed during inference)
      W_i = c_i (e^{c_i} - 1) / (e - 1),        d <= i < L,    c_i = (L - i) / (L - d + 1)
      W_i = 0                                   i >= L         (no previous plan there)

    L = `overlap`, the number of the new chunk's steps that the current plan still covers
    (H - s in steady state). d is capped at L.
    """
    if horizon < 1 or delay < 0 or overlap < 0:
        raise ValueError(
            f"need horizon >= 1, delay >= 0, overlap >= 0; got {horizon, delay, overlap}"
        )
    overlap = min(int(overlap), int(horizon))
    delay = min(int(delay), overlap)
    i = np.arange(horizon, dtype=np.float64)
    w = np.zeros(horizon, np.float64)
    w[:delay] = 1.0
    mid = (i >= delay) & (i < overlap)
    c = (overlap - i[mid]) / (overlap - delay + 1)
    w[mid] = c * np.expm1(c) / np.expm1(1.0)
    return w.astype(np.float32)


def ensemble_weights(num_chunks: int, decay: float = ACT_DECAY) -> np.ndarray:
    """ACT temporal-ensembling weights [K], oldest chunk first: w_k = exp(-m k) / Σ_j w_j."""
    if num_chunks < 1:
        raise ValueError(f"num_chunks={num_chunks} must be >= 1")
    w = np.exp(-decay * np.arange(num_chunks, dtype=np.float64))
    return w / w.sum()


def ensembled_action(chunks, t: int, decay: float = ACT_DECAY) -> np.ndarray | None:
    """ACT's temporally ensembled command [N, A] at step t, or None if no chunk covers t.

    a_t = Σ_k w_k · chunk_k.actions[:, t - start_k] over the chunks with
    start_k <= t < start_k + H (in the order given: oldest first),
    w = `ensemble_weights(K, decay)`.

    Args:
      chunks: `Chunk`s, oldest first; each chunk's actions are [N, H, A].
      t: the control step.
      decay: m of ACT's weights.
    """
    covering = [c for c in chunks if c.start <= t < c.start + c.actions.shape[1]]
    if not covering:
        return None
    weights = ensemble_weights(len(covering), decay)
    stacked = np.stack([c.actions[:, t - c.start] for c in covering])  # [K, N, A]
    return np.tensordot(weights, stacked, axes=1).astype(np.float32)


def estimate_delay(latencies_s, control_dt: float, window: int = 10) -> int:
    """d = ceil(max of the last `window` latencies / Δt): steps that pass during inference.

    The max (not the mean) because under-estimating d lets the robot execute actions the
    guidance did not freeze; over-estimating only freezes a little more of the plan.
    """
    recent = list(latencies_s)[-window:]
    if not recent:
        return 0
    if control_dt <= 0:
        raise ValueError(f"control_dt={control_dt} must be > 0")
    return int(math.ceil(max(recent) / control_dt - 1e-9))


SampleFn = Callable[..., np.ndarray]


class ChunkExecutor:
    """Turns a chunked policy into one command per control step (see module docstring).

    Args:
      sample_fn: `sample_fn(observation, guidance=None) -> [N, H, A]` raw actions;
        `observation` is a batched dict ([N, ...] per key). For mode "rtc" it must accept
        `guidance` (a `Guidance`).
      action_horizon: H.
      exec_horizon: s, actions executed per chunk (sync) / the re-plan period (async, rtc).
      mode: one of MODES.
      control_dt: seconds per control step (to turn measured latency into d).
      simulated_delay: run inference immediately but deliver it this many steps later
        (None: real background threads; latency measured).
      queue_threshold: async/rtc request the next chunk when at most this many planned
        actions remain (default H - s).
      ensemble_decay: m of ACT's weights.
      ensemble_interval: steps between requests in ensemble mode.
      max_workers: background inference threads.
    """

    def __init__(
        self,
        sample_fn: SampleFn,
        *,
        action_horizon: int,
        exec_horizon: int,
        mode: str = "async",
        control_dt: float | None = None,
        simulated_delay: int | None = None,
        queue_threshold: int | None = None,
        ensemble_decay: float = ACT_DECAY,
        ensemble_interval: int = 1,
        max_workers: int = 4,
    ):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; known: {MODES}")
        if not 1 <= exec_horizon <= action_horizon:
            raise ValueError(f"need 1 <= exec_horizon ({exec_horizon}) <= H ({action_horizon})")
        if simulated_delay is None and control_dt is None and mode in ("async", "rtc"):
            raise ValueError("real-time async/rtc needs control_dt to measure the delay in steps")
        if simulated_delay is not None and simulated_delay < 0:
            raise ValueError(f"simulated_delay={simulated_delay} must be >= 0")
        self.sample_fn = sample_fn
        self.horizon = int(action_horizon)
        self.exec_horizon = int(exec_horizon)
        self.mode = mode
        self.control_dt = control_dt
        self.simulated_delay = simulated_delay
        self.queue_threshold = (
            self.horizon - self.exec_horizon if queue_threshold is None else int(queue_threshold)
        )
        self.ensemble_decay = float(ensemble_decay)
        self.ensemble_interval = int(ensemble_interval)
        self._pool = (
            concurrent.futures.ThreadPoolExecutor(max_workers=max_workers)
            if simulated_delay is None
            else None
        )
        self.latencies_s: collections.deque = collections.deque(maxlen=100)
        self.reset()

    def reset(self) -> None:
        """Starts a new episode: step 0, no plan, nothing in flight (late results ignored)."""
        self.step_index = 0
        self._chunks: list[Chunk] = []  # active plans; one except in ensemble mode
        self._in_flight: list[tuple[int, concurrent.futures.Future]] = []
        self._last_action: np.ndarray | None = None
        self._last_sources: tuple[int, ...] = ()
        self.boundary = False  # True when this step's command came from a new chunk
        self.waiting = False  # True when this step held the last command (no plan)
        self.stats = collections.Counter()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # -- inference ------------------------------------------------------------------------

    def delay_steps(self) -> int:
        """d: the simulated delay, or the one estimated from measured latencies."""
        if self.simulated_delay is not None:
            return self.simulated_delay
        return estimate_delay(self.latencies_s, self.control_dt or 1.0)

    def _guidance(self, step: int, batch: int) -> Guidance | None:
        if self.mode != "rtc" or not self._chunks:
            return None
        plan = self._chunks[-1]
        offset = step - plan.start
        tail = plan.actions[:, offset:]  # [N, L, A], what the plan has from `step` on
        overlap = tail.shape[1]
        if overlap == 0:
            return None
        pad = np.repeat(tail[:, -1:], self.horizon - overlap, axis=1)
        prefix = np.concatenate([tail, pad], axis=1)
        delay = self.delay_steps()
        weights = rtc_prefix_weights(self.horizon, delay, overlap)
        return Guidance(prefix=prefix.astype(np.float32), weights=weights, delay=delay)

    def _call(self, observation: dict, guidance: Guidance | None) -> tuple[np.ndarray, float]:
        tic = time.perf_counter()
        if guidance is None:
            actions = self.sample_fn(observation)
        else:
            actions = self.sample_fn(observation, guidance=guidance)
        return np.asarray(actions, np.float32), time.perf_counter() - tic

    def _launch(self, observation: dict, step: int) -> concurrent.futures.Future:
        # Copy: the caller will overwrite its history buffers while inference runs.
        observation = {k: np.array(v, copy=True) for k, v in observation.items()}
        batch = len(next(iter(observation.values())))
        guidance = self._guidance(step, batch)
        self.stats["requests"] += 1
        if guidance is not None:
            self.stats["guided_requests"] += 1
        if self._pool is None:
            future = concurrent.futures.Future()
            future.set_result(self._call(observation, guidance))
        else:
            future = self._pool.submit(self._call, observation, guidance)
        self._in_flight.append((step, future))
        return future

    def _ready(self, launch_step: int, future: concurrent.futures.Future) -> bool:
        if self.simulated_delay is not None:
            return self.step_index >= launch_step + self.simulated_delay
        return future.done()

    def _receive(self, launch_step: int, future: concurrent.futures.Future) -> None:
        actions, latency = future.result()
        self.latencies_s.append(latency)
        if actions.ndim != 3 or actions.shape[1] != self.horizon:
            raise ValueError(f"sample_fn returned {actions.shape}, want [N, H={self.horizon}, A]")
        # sync: the robot waited, so the chunk starts now; otherwise it is aligned to the
        # observation it was computed from and its first (now - launch) actions are stale.
        start = self.step_index if self.mode == "sync" else launch_step
        self.stats["stale_dropped"] += self.step_index - start
        chunk = Chunk(start=start, actions=actions)
        if self.mode == "ensemble":
            self._chunks.append(chunk)
        else:
            self._chunks = [chunk]

    def _collect(self, block: bool) -> None:
        still = []
        for launch_step, future in self._in_flight:
            if block or self._ready(launch_step, future):
                self._receive(launch_step, future)
            else:
                still.append((launch_step, future))
        self._in_flight = still

    # -- control loop ---------------------------------------------------------------------

    def _remaining(self) -> int:
        """Planned actions left from the current step on (0 without a plan)."""
        if not self._chunks:
            return 0
        plan = self._chunks[-1]
        return max(0, plan.start + self.horizon - self.step_index)

    def _should_launch(self) -> bool:
        t = self.step_index
        if self.mode == "ensemble":
            return t % self.ensemble_interval == 0
        if self._in_flight:
            return False
        if self.mode == "sync":
            return t - self._chunks[-1].start >= self.exec_horizon
        return self._remaining() <= self.queue_threshold

    def act(self, observation: dict) -> np.ndarray:
        """The command [N, A] for the current step; then advances the step counter.

        Args:
          observation: batched observation of this step ([N, ...] per key), as the policy
            takes it.
        """
        t = self.step_index
        if not self._chunks and not self._in_flight:  # episode start: fetch blocking
            self._launch(observation, t)
            self._collect(block=True)
        else:
            self._collect(block=False)
            if self._should_launch():
                self._launch(observation, t)
                # Real sync blocks (the robot stands still); simulated sync lets the steps
                # of the delay pass with the last command held.
                if self.mode == "sync" and self.simulated_delay is None:
                    self._collect(block=True)
                else:
                    self._collect(block=False)
        # Plans that no longer cover this step are done.
        self._chunks = [
            c for c in self._chunks if c.start <= t < c.start + self.horizon
        ] or self._chunks[-1:]
        action, sources = self._command(t)
        self.waiting = action is None
        if action is None:
            self.stats["held_steps"] += 1
            action = self._last_action
        self.boundary = bool(sources) and bool(set(sources) - set(self._last_sources))
        if sources:
            self._last_sources = sources
        self._last_action = action
        self.step_index += 1
        return action

    def _command(self, t: int) -> tuple[np.ndarray | None, tuple[int, ...]]:
        covering = [c for c in self._chunks if c.start <= t < c.start + self.horizon]
        if self.mode == "sync":
            covering = [c for c in covering if t - c.start < self.exec_horizon]
        if not covering:
            return None, ()
        if self.mode != "ensemble":
            plan = covering[-1]
            return plan.actions[:, t - plan.start], (id(plan),)
        action = ensembled_action(covering, t, self.ensemble_decay)
        return action, tuple(id(c) for c in covering)


def policy_sample_fn(policy, seed: int = 0) -> SampleFn:
    """`sample_fn` for an in-process `Policy` (a fresh PRNG key per call: fold_in(seed, n)).

    Guided calls go to `policy.sample_actions_rtc` (flow policies only)."""
    import jax  # deferred: executor.py itself is numpy-only

    base = jax.random.key(seed)
    counter = iter(range(1 << 62))

    def sample_fn(observation: dict, guidance: Guidance | None = None) -> np.ndarray:
        rng = jax.random.fold_in(base, next(counter))
        if guidance is None:
            return policy.sample_actions(observation, rng)
        return policy.sample_actions_rtc(
            observation, rng, prefix=guidance.prefix, prefix_weights=guidance.weights
        )

    return sample_fn


def client_sample_fn(client) -> SampleFn:
    """`sample_fn` over an openpi-style client (`client.infer(obs) -> {"actions": [H, A]}`),
    for N = 1: the batch dim is stripped from the request and added to the reply. Guided
    requests carry the RTC prefix as `rtc/prefix` [H, A] and `rtc/weights` [H] (served by
    `serve/server.py` for flow policies)."""

    def sample_fn(observation: dict, guidance: Guidance | None = None) -> np.ndarray:
        request = {}
        for key, value in observation.items():
            value = np.asarray(value)
            if value.shape[:1] != (1,):
                raise ValueError(
                    f"client_sample_fn drives one robot; {key} has batch {value.shape}"
                )
            request[key] = value[0] if value.dtype.kind not in "OUS" else str(value[0])
        if guidance is not None:
            request["rtc/prefix"] = np.asarray(guidance.prefix[0], np.float32)
            request["rtc/weights"] = np.asarray(guidance.weights, np.float32)
        return np.asarray(client.infer(request)["actions"], np.float32)[None]

    return sample_fn

"""Executor: alignment by timestep, stale drop, ensembling weights, RTC prefix inpainting."""

import time

import numpy as np
import pytest

from action_gen.sample import executor
from tests.serve import tiny_policy

H, S, A = 8, 4, 1


class StampingSampler:
    """A fake policy whose action i for an observation at step t is t + i: an executed
    command equal to the current step proves the chunk was aligned by its timestamp."""

    def __init__(self, sleep_s: float = 0.0):
        self.sleep_s = sleep_s
        self.calls = []

    def __call__(self, observation, guidance=None):
        step = int(observation["step"][0])
        self.calls.append((step, guidance))
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return (step + np.arange(H, dtype=np.float32))[None, :, None]


def run(ex: executor.ChunkExecutor, steps: int):
    actions, boundaries, waiting = [], [], []
    for t in range(steps):
        actions.append(float(ex.act({"step": np.array([t])})[0, 0]))
        boundaries.append(ex.boundary)
        waiting.append(ex.waiting)
    return np.array(actions), np.array(boundaries), np.array(waiting)


@pytest.mark.parametrize("delay", [0, 1, 3])
def test_async_aligns_by_timestep_and_drops_stale(delay):
    sampler = StampingSampler()
    ex = executor.ChunkExecutor(
        sampler, action_horizon=H, exec_horizon=S, mode="async", simulated_delay=delay
    )
    actions, boundaries, waiting = run(ex, 20)
    # Every command is the one planned for its own step: nothing replayed, nothing skipped.
    np.testing.assert_array_equal(actions, np.arange(20))
    assert not waiting.any()
    # Requests are launched every s steps (when H - s actions remain), from step s on.
    assert [c[0] for c in sampler.calls] == [0, 4, 8, 12, 16]
    # Chunks take over d steps after their launch; their first d actions were stale.
    switches = [launch + delay for launch in (4, 8, 12, 16) if launch + delay < 20]
    np.testing.assert_array_equal(np.flatnonzero(boundaries), [0, *switches])
    assert ex.stats["stale_dropped"] == delay * len(switches)


def test_sync_holds_during_inference_and_restarts_chunk():
    sampler = StampingSampler()
    ex = executor.ChunkExecutor(
        sampler, action_horizon=H, exec_horizon=S, mode="sync", simulated_delay=2
    )
    actions, boundaries, waiting = run(ex, 12)
    # Steps 0-3 from chunk@0; 4, 5 held (waiting); chunk launched at 4 starts at 6 from
    # its index 0 (= 4: planned from the observation at step 4).
    np.testing.assert_array_equal(actions[:4], [0, 1, 2, 3])
    np.testing.assert_array_equal(waiting[4:6], [True, True])
    np.testing.assert_array_equal(actions[4:6], [3, 3])
    np.testing.assert_array_equal(actions[6:10], [4, 5, 6, 7])
    assert boundaries[6] and waiting[10]


def test_threaded_async_uses_measured_latency():
    sampler = StampingSampler(sleep_s=0.05)
    ex = executor.ChunkExecutor(
        sampler, action_horizon=H, exec_horizon=S, mode="async", control_dt=0.02
    )
    actions = []
    for t in range(16):
        actions.append(float(ex.act({"step": np.array([t])})[0, 0]))
        time.sleep(0.02)
    ex.close()
    # Whatever arrived late was aligned: every executed command is planned for its step.
    np.testing.assert_array_equal(actions, np.arange(16))
    assert ex.stats["stale_dropped"] > 0
    assert executor.estimate_delay(ex.latencies_s, 0.02) >= 3  # 50 ms / 20 ms -> 3


def test_ensemble_weights_match_act():
    w = executor.ensemble_weights(3, decay=0.5)
    raw = np.exp(-0.5 * np.arange(3))
    np.testing.assert_allclose(w, raw / raw.sum())
    assert w[0] > w[1] > w[2]  # the oldest chunk weighs most (ACT)


def test_ensemble_averages_covering_chunks():
    class Offset:
        """Chunk launched at step t: every action is 10 t (so averages are easy to read)."""

        def __call__(self, observation, guidance=None):
            return np.full((1, H, A), 10.0 * int(observation["step"][0]), np.float32)

    ex = executor.ChunkExecutor(
        Offset(),
        action_horizon=H,
        exec_horizon=1,
        mode="ensemble",
        simulated_delay=0,
        ensemble_decay=0.1,
    )
    actions, _, _ = run(ex, 3)
    # At step 2 chunks from steps 0, 1, 2 cover it: weights exp(-0.1 k), k = 0 oldest.
    w = executor.ensemble_weights(3, 0.1)
    np.testing.assert_allclose(actions[2], w @ np.array([0.0, 10.0, 20.0]), rtol=1e-6)
    np.testing.assert_allclose(actions[1], executor.ensemble_weights(2, 0.1) @ [0.0, 10.0])


def test_rtc_prefix_weights():
    w = executor.rtc_prefix_weights(16, 3, 8)
    np.testing.assert_array_equal(w[:3], 1.0)
    assert np.all(np.diff(w[3:8]) < 0) and 0 < w[7] < w[3] < 1
    np.testing.assert_array_equal(w[8:], 0.0)
    c = (8 - 3) / (8 - 3 + 1)
    np.testing.assert_allclose(w[3], c * np.expm1(c) / np.expm1(1.0), rtol=1e-6)
    # d beyond the overlap is capped at it.
    np.testing.assert_array_equal(executor.rtc_prefix_weights(8, 10, 4), [1, 1, 1, 1, 0, 0, 0, 0])


def test_rtc_requests_carry_the_current_plan():
    sampler = StampingSampler()
    ex = executor.ChunkExecutor(
        sampler, action_horizon=H, exec_horizon=S, mode="rtc", simulated_delay=2
    )
    run(ex, 6)
    step, guidance = sampler.calls[1]
    assert step == 4 and guidance.delay == 2
    # The plan from step 4 on (4..7), padded with its last action; zero weight on the pad.
    np.testing.assert_array_equal(guidance.prefix[0, :, 0], [4, 5, 6, 7, 7, 7, 7, 7])
    np.testing.assert_allclose(guidance.weights, executor.rtc_prefix_weights(H, 2, 4))


def test_estimate_delay():
    assert executor.estimate_delay([], 0.1) == 0
    assert executor.estimate_delay([0.05, 0.21, 0.1], 0.1) == 3
    assert executor.estimate_delay([0.2], 0.1) == 2


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="mode"):
        executor.ChunkExecutor(StampingSampler(), action_horizon=H, exec_horizon=S, mode="x")
    with pytest.raises(ValueError, match="exec_horizon"):
        executor.ChunkExecutor(StampingSampler(), action_horizon=H, exec_horizon=9)
    with pytest.raises(ValueError, match="control_dt"):
        executor.ChunkExecutor(StampingSampler(), action_horizon=H, exec_horizon=S, mode="rtc")


def test_rtc_guided_chunk_matches_prefix():
    """The guided chunk's first d actions follow the previous plan; the unguided one's do
    not (the same noise, tiny random-weight flow U-Net)."""
    policy = tiny_policy.make_tiny_policy()
    horizon, action_dim = policy.action_shape
    obs = tiny_policy.observation(4, seed=1)
    rng = np.random.default_rng(0)
    prefix = rng.uniform(-0.8, 0.8, (4, horizon, action_dim)).astype(np.float32)
    delay, overlap = 3, horizon // 2
    weights = executor.rtc_prefix_weights(horizon, delay, overlap)
    unguided = policy.sample_actions(obs, 7)
    guided = policy.sample_actions_rtc(obs, 7, prefix=prefix, prefix_weights=weights)
    zero = policy.sample_actions_rtc(obs, 7, prefix=prefix, prefix_weights=np.zeros(horizon))
    err_guided = np.abs(guided[:, :delay] - prefix[:, :delay]).max()
    err_unguided = np.abs(unguided[:, :delay] - prefix[:, :delay]).max()
    # 3 Euler steps of a random-weight U-Net: guidance pulls the prefix 10x closer.
    assert err_guided < 0.15 and err_guided < 0.1 * err_unguided, (err_guided, err_unguided)
    # Zero weights = no guidance: exactly the unguided sampler's chunk.
    np.testing.assert_allclose(zero, unguided, atol=1e-5)
    # Past the overlap (W = 0) the guided chunk is free: it does not copy the padding.
    assert guided.shape == unguided.shape == (4, horizon, action_dim)


def test_rtc_guidance_weight():
    from action_gen.objectives import flow

    # min(β, (1 - t) / (t r²)), r² = (1-t)² / (t² + (1-t)²): 2 at t = 1/2, β at t = 0.
    np.testing.assert_allclose(float(flow.rtc_guidance_weight(0.5, 5.0)), 2.0, rtol=1e-6)
    assert float(flow.rtc_guidance_weight(0.0, 5.0)) == 5.0
    t = 0.1
    expected = (1 - t) / (t * (1 - t) ** 2 / (t**2 + (1 - t) ** 2))
    np.testing.assert_allclose(float(flow.rtc_guidance_weight(t, 100.0)), expected, rtol=1e-5)
    assert float(flow.rtc_guidance_weight(t, 5.0)) == 5.0

"""Policy server: openpi-client compatibility, malformed input, batching, API key."""

import http.client
import logging
import threading
import time

import msgpack
import numpy as np
import pytest
import websockets.exceptions
import websockets.sync.client
from openpi_client import msgpack_numpy
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from action_gen.serve import protocol, server
from tests.serve import tiny_policy

T, S = 2, tiny_policy.STATE_DIM


@pytest.fixture(scope="module")
def policy():
    return tiny_policy.make_tiny_policy()


@pytest.fixture(scope="module")
def running(policy):
    srv = server.PolicyServer(
        policy, port=0, max_batch=8, max_wait_ms=20.0, batch_sizes=(1, 8)
    ).start()
    yield srv
    srv.stop()


def good_obs(seed=0):
    return {"observation/state": tiny_policy.observation(1, seed)["observation/state"][0]}


def test_openpi_client_gets_actions(running, policy):
    client = WebsocketClientPolicy(host="127.0.0.1", port=running.port)
    meta = client.get_server_metadata()
    assert meta["action_shape"] == list(policy.action_shape)
    assert meta["observation_spec"] == {"observation/state": {"shape": [T, S], "dtype": "float32"}}
    reply = client.infer(good_obs())
    assert reply["actions"].shape == policy.action_shape
    assert reply["actions"].dtype == np.float32 and np.all(np.isfinite(reply["actions"]))
    timing = reply["server_timing"]
    assert timing["batch_size"] == 1 and 0 < timing["infer_ms"] <= timing["total_ms"]
    # Float64 state is accepted (cast within its kind); so is an explicit pad mask.
    obs = good_obs(1)
    reply = client.infer(
        {
            "observation/state": obs["observation/state"].astype(np.float64),
            "obs_pad_mask": np.array([False, True]),
        }
    )
    assert reply["actions"].shape == policy.action_shape


def test_healthz(running):
    conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=5)
    conn.request("GET", "/healthz")
    response = conn.getresponse()
    assert response.status == 200 and response.read() == b"ok\n"


def _array(data: bytes, dtype: str, shape) -> dict:
    return {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": shape}


def _packed(obs) -> bytes:
    return msgpack_numpy.packb(obs)


STATE = "observation/state"
ok_state = np.zeros((T, S), np.float32)
nan_state = ok_state.copy()
nan_state[1, 3] = np.nan
inf_state = ok_state.copy()
inf_state[0, 0] = -np.inf

# (name, frame, words the error reply must contain)
MALFORMED = [
    ("text frame", "hello", "binary"),
    ("not msgpack", b"\xc1\xc1\xc1", "not valid msgpack"),
    ("truncated msgpack", _packed({STATE: ok_state})[:-7], "msgpack"),
    ("trailing bytes", _packed({STATE: ok_state}) + b"\x00", "trailing"),
    ("list, not map", msgpack.packb([1, 2, 3]), "map"),
    ("bare integer", msgpack.packb(7), "map"),
    ("missing key", msgpack.packb({}), "missing key(s) ['observation/state']"),
    (
        "unknown key",
        _packed({STATE: ok_state, "observation/velocity": ok_state}),
        "observation/velocity",
    ),
    ("wrong shape", _packed({STATE: np.zeros((T + 1, S), np.float32)}), "shape (3, 9)"),
    ("batched", _packed({STATE: np.zeros((1, T, S), np.float32)}), "no batch dim"),
    ("string dtype", _packed({STATE: np.full((T, S), "a")}), "dtype <U1"),
    ("complex dtype", msgpack.packb({STATE: _array(b"\0" * 8 * T * S, "<c8", [T, S])}), "'<c8'"),
    ("object dtype", msgpack.packb({STATE: _array(b"\0" * 8 * T * S, "|O", [T, S])}), "'|O'"),
    ("void dtype", msgpack.packb({STATE: _array(b"\0" * 8 * T * S, "|V8", [T, S])}), "'|V8'"),
    (
        "bad dtype name",
        msgpack.packb({STATE: _array(b"", "no-such-type", [0])}),
        "unknown array dtype",
    ),
    (
        "byte count",
        msgpack.packb({STATE: _array(b"\0" * 10, "<f4", [T, S])}),
        "needs 72 bytes, got 10",
    ),
    ("negative dim", msgpack.packb({STATE: _array(b"", "<f4", [-1, S])}), "shape must be"),
    ("NaN", _packed({STATE: nan_state}), "non-finite value nan at index (1, 3)"),
    ("Inf", _packed({STATE: inf_state}), "non-finite value -inf at index (0, 0)"),
    ("string value", msgpack.packb({STATE: "zeros please"}), "must be an array"),
    (
        "float pad mask",
        _packed({STATE: ok_state, "obs_pad_mask": np.ones(T, np.float32)}),
        "'obs_pad_mask' has dtype float32",
    ),
    ("non-string key", msgpack.packb({1: 2}), "keys must be strings"),
    (
        "rtc prefix alone",
        _packed({STATE: ok_state, "rtc/prefix": np.zeros((16, 2), np.float32)}),
        "rtc/weights",
    ),
]


def test_malformed_requests_get_error_replies_and_the_connection_survives(running, policy):
    assert len(MALFORMED) >= 20
    with websockets.sync.client.connect(f"ws://127.0.0.1:{running.port}", max_size=None) as ws:
        msgpack_numpy.unpackb(ws.recv())  # metadata
        for name, frame, words in MALFORMED:
            ws.send(frame)
            reply = ws.recv(timeout=30)
            assert isinstance(reply, str), f"{name}: expected a text error reply"
            assert words in reply, f"{name}: {reply!r} does not mention {words!r}"
        # The same connection still serves a good request.
        ws.send(_packed(good_obs()))
        reply = msgpack_numpy.unpackb(ws.recv(timeout=30))
        assert reply["actions"].shape == policy.action_shape


def test_oversized_frame_closes_only_that_connection(policy):
    srv = server.PolicyServer(policy, port=0, max_frame_bytes=4096, compile=False).start()
    try:
        good = WebsocketClientPolicy(host="127.0.0.1", port=srv.port)
        with websockets.sync.client.connect(f"ws://127.0.0.1:{srv.port}", max_size=None) as ws:
            ws.recv()
            ws.send(b"\x00" * 10_000)
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd.code == 1009  # message too big
        assert good.infer(good_obs())["actions"].shape == policy.action_shape
    finally:
        srv.stop()


class RoutingPolicy:
    """A deterministic stand-in: actions[b] = (sum of observation b's state) everywhere.
    Sleeps so that concurrent requests pile up behind each call."""

    observation_spec = {STATE: ((T, S), "float32")}
    action_shape = (4, 2)
    num_sample_steps = 1
    supports_rtc = False
    compiled_batch_sizes = ()

    class objective:  # noqa: N801 - mimics the Objective's attributes
        name = "fake"
        sampler_label = "fake"

    class config:  # noqa: N801 - mimics the ConfigDict attribute access
        class model:  # noqa: N801
            name = "fake"

    def __init__(self):
        self.batches = []

    def compile(self, batch_sizes):
        self.compiled_batch_sizes = tuple(batch_sizes)

    def sample_actions(self, observation, rng):
        state = observation[STATE]
        self.batches.append(len(state))
        time.sleep(0.05)
        return np.broadcast_to(
            state.sum(axis=(1, 2))[:, None, None], (len(state), *self.action_shape)
        ).astype(np.float32)


def _concurrent(port, observations):
    barrier = threading.Barrier(len(observations))
    results = [None] * len(observations)

    def client(i):
        c = WebsocketClientPolicy(host="127.0.0.1", port=port)
        barrier.wait()
        for _ in range(3):
            results[i] = c.infer(observations[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(observations))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


def test_concurrent_clients_are_batched_and_get_their_own_results(caplog):
    fake = RoutingPolicy()
    srv = server.PolicyServer(fake, port=0, max_batch=8, max_wait_ms=20.0).start()
    try:
        observations = [good_obs(seed=i) for i in range(8)]
        with caplog.at_level(logging.INFO, logger="action_gen.serve.server"):
            results = _concurrent(srv.port, observations)
        for obs, reply in zip(observations, results, strict=True):
            expected = obs[STATE].sum()
            np.testing.assert_allclose(reply["actions"], expected, rtol=1e-5)
        assert len({float(r["actions"][0, 0]) for r in results}) == 8  # distinct
        assert max(fake.batches) > 1 and sum(fake.batches) == 24
        logged = [r.getMessage() for r in caplog.records if "sampler call" in r.getMessage()]
        assert any("batch size 8" in m or "batch size 7" in m for m in logged), logged
        assert fake.compiled_batch_sizes == (1, 2, 4, 8)
    finally:
        srv.stop()


def test_concurrent_clients_on_the_real_policy(running, policy):
    observations = [good_obs(seed=100 + i) for i in range(8)]
    before = len(running.batch_sizes)
    results = _concurrent(running.port, observations)
    actions = np.stack([r["actions"] for r in results])
    assert actions.shape == (8, *policy.action_shape)
    assert len({a.tobytes() for a in actions}) == 8
    assert max(running.batch_sizes[before:]) > 1


def test_rtc_request_over_the_wire(running, policy):
    client = WebsocketClientPolicy(host="127.0.0.1", port=running.port)
    assert client.get_server_metadata()["rtc"] is True
    prefix = np.full(policy.action_shape, 0.3, np.float32)
    weights = np.zeros(policy.action_shape[0], np.float32)
    weights[:4] = 1.0
    reply = client.infer({**good_obs(), "rtc/prefix": prefix, "rtc/weights": weights})
    assert reply["actions"].shape == policy.action_shape
    with pytest.raises(RuntimeError, match=r"must lie in \[0, 1\]"):
        client.infer({**good_obs(), "rtc/prefix": prefix, "rtc/weights": weights * 2})


def test_api_key(policy):
    srv = server.PolicyServer(policy, port=0, api_key="s3cret", compile=False).start()
    try:
        with pytest.raises(websockets.exceptions.InvalidStatus, match="401"):
            WebsocketClientPolicy(host="127.0.0.1", port=srv.port, api_key="wrong")
        with pytest.raises(websockets.exceptions.InvalidStatus, match="401"):
            WebsocketClientPolicy(host="127.0.0.1", port=srv.port)
        client = WebsocketClientPolicy(host="127.0.0.1", port=srv.port, api_key="s3cret")
        assert client.infer(good_obs())["actions"].shape == policy.action_shape
    finally:
        srv.stop()


def test_protocol_round_trip_matches_openpi():
    obj = {
        "a": np.arange(6, dtype=np.int16).reshape(2, 3),
        "b": np.float32(1.5),
        "c": "text",
        "d": [np.ones(2, bool)],
    }
    ours = protocol.pack(obj)
    assert ours == msgpack_numpy.packb(obj)  # byte for byte
    back = protocol.unpack(msgpack_numpy.packb(obj))
    np.testing.assert_array_equal(back["a"], obj["a"])
    assert back["b"] == np.float32(1.5) and back["b"].dtype == np.float32
    assert back["c"] == "text" and back["d"][0].dtype == bool
    with pytest.raises(ValueError, match="cannot send dtype"):
        protocol.pack({"x": np.array([1 + 2j])})


def test_policy_compiles_ahead_of_time_and_pads_batches(running, policy):
    assert policy.compiled_batch_sizes == (1, 8)  # by the server at start
    jit_cache = policy._sample._cache_size()
    for batch in (1, 3, 8, 10):  # 3 pads to 8; 10 splits into 8 + 2 (padded to 8)
        actions = policy.sample_actions(tiny_policy.observation(batch, seed=batch), batch)
        assert actions.shape == (batch, *policy.action_shape)
        assert np.all(np.isfinite(actions))
        guided = policy.sample_actions_rtc(
            tiny_policy.observation(batch),
            0,
            prefix=np.zeros((batch, *policy.action_shape), np.float32),
            prefix_weights=np.ones(policy.action_shape[0], np.float32),
        )
        assert guided.shape == actions.shape
    # Nothing was traced or compiled after `compile`: the jitted fallback never ran.
    assert policy._sample._cache_size() == jit_cache
    # A padded row does not change the real rows' chunk for the same key and size.
    obs = tiny_policy.observation(8, seed=9)
    full = policy.sample_actions(obs, 5)
    three = policy.sample_actions({k: v[:3] for k, v in obs.items()}, 5)
    np.testing.assert_allclose(three, full[:3], atol=1e-5)


def test_executor_drives_the_server_with_rtc(running, policy):
    """The robot-side executor over the openpi client: RTC requests carry the plan."""
    from action_gen.sample import executor

    client = WebsocketClientPolicy(host="127.0.0.1", port=running.port)
    horizon, action_dim = policy.action_shape
    ex = executor.ChunkExecutor(
        executor.client_sample_fn(client),
        action_horizon=horizon,
        exec_horizon=8,
        mode="rtc",
        simulated_delay=2,
    )
    state = tiny_policy.observation(1, seed=3)["observation/state"]
    actions = [ex.act({"observation/state": state}) for _ in range(12)]
    assert all(a.shape == (1, action_dim) for a in actions)
    assert ex.stats["requests"] == 2 and ex.stats["guided_requests"] == 1

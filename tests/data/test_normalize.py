"""Stats vs numpy, normalize/unnormalize round trips, stats files."""

import json

import numpy as np
import pytest

from action_gen.data import normalize as norm


def _data(n=500, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)) * [1.0, 10.0, 0.1, 1.0] + [0.0, 5.0, -3.0, 0.0]
    x[:, 3] = 0.25  # a constant dimension
    return x.astype(np.float32)


def test_stats_match_numpy():
    x = _data()
    stats = norm.compute_norm_stats(np.array_split(x, 7))
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(stats["min"], x64.min(0))
    np.testing.assert_allclose(stats["max"], x64.max(0))
    np.testing.assert_allclose(stats["mean"], x64.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats["std"], x64.std(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(stats["q01"], np.quantile(x64, 0.01, axis=0))
    np.testing.assert_allclose(stats["q99"], np.quantile(x64, 0.99, axis=0))
    assert stats["count"] == 500
    json.dumps(stats)  # JSON-serializable


def test_reservoir_quantiles_approximate():
    """Above the reservoir size the quantiles are a (deterministic) sample estimate."""
    x = np.random.default_rng(1).uniform(size=(20_000, 2))
    chunks = np.array_split(x, 13)
    a = norm.compute_norm_stats(chunks, max_quantile_samples=2_000)
    b = norm.compute_norm_stats(chunks, max_quantile_samples=2_000)
    assert a == b
    np.testing.assert_allclose(a["q01"], 0.01, atol=0.01)
    np.testing.assert_allclose(a["q99"], 0.99, atol=0.01)
    assert a["count"] == 20_000


def test_empty_stats_raise():
    with pytest.raises(ValueError, match="zero rows"):
        norm.compute_norm_stats([])


@pytest.mark.parametrize("mode", ["minmax", "meanstd", "quantile", "none"])
def test_round_trip(mode):
    x = _data()
    stats = norm.compute_norm_stats([x])
    y = norm.normalize(x, stats, mode)
    assert y.dtype == np.float32
    back = norm.unnormalize(y, stats, mode)
    np.testing.assert_allclose(back, x, rtol=1e-5, atol=1e-4)
    if mode != "none":
        np.testing.assert_array_equal(y[:, 3], 0.0)  # constant dim -> 0
        np.testing.assert_array_equal(back[:, 3], np.float32(0.25))  # ... and back exactly
    if mode == "minmax":
        np.testing.assert_allclose(y[:, :3].min(0), -1.0, atol=1e-6)
        np.testing.assert_allclose(y[:, :3].max(0), 1.0, atol=1e-6)
    if mode == "quantile":  # not clipped: the tails go past [-1, 1]
        assert y[:, :3].min() < -1.0 and y[:, :3].max() > 1.0


def test_jax_arrays():
    jnp = pytest.importorskip("jax.numpy")
    x = _data(50)
    stats = norm.compute_norm_stats([x])
    y = norm.normalize(jnp.asarray(x), stats, "minmax")
    np.testing.assert_allclose(np.asarray(y), norm.normalize(x, stats, "minmax"), rtol=1e-6)


def test_unknown_mode():
    stats = norm.compute_norm_stats([_data(10)])
    with pytest.raises(ValueError, match="'zscore'"):
        norm.normalize(np.zeros(4), stats, "zscore")


def test_save_load(tmp_path):
    stats = {
        "state": norm.compute_norm_stats([_data(10)]),
        "actions": norm.compute_norm_stats([_data(10, 1)]),
    }
    path = tmp_path / "stats.json"
    norm.save_norm_stats(stats, path)
    assert norm.load_norm_stats(path) == stats


def test_load_errors(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match="nope.json"):
        norm.load_norm_stats(missing)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        norm.load_norm_stats(bad)
    stats = {"state": norm.compute_norm_stats([_data(10)])}
    no_actions = tmp_path / "no_actions.json"
    norm.save_norm_stats(stats, no_actions)
    with pytest.raises(ValueError, match="'actions'"):
        norm.load_norm_stats(no_actions)
    del stats["state"]["q99"]
    stats["actions"] = stats["state"]
    no_key = tmp_path / "no_key.json"
    norm.save_norm_stats(stats, no_key)
    with pytest.raises(ValueError, match="no_key.json.*'q99'"):
        norm.load_norm_stats(no_key)

"""openpi checkpoint import: openpi's exact layout (recorded from openpi's own code), a
synthetic tiny checkpoint written in it (with and without the training `value` level) →
import → the same parameters, norm stats with openpi's epsilon, a Policy that samples, the
compare CLI's JSON and exit status, and the real openpi-client served by our server.

Equivalence with openpi's *function* is not tested here (it needs openpi's code): see
BUILD_NOTES.md for the compare figures against references made with openpi itself.
"""

import contextlib
import functools
import io
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

from action_gen import checkpoint, models
from action_gen.data import normalize, schema, spec
from action_gen.tools import openpi_import
from configs import flow_pi0_openpi

H, STATE_DIM, ACTION_DIM, ASSET = 4, 8, 7, "my_robot"
LAYOUT = pathlib.Path(__file__).with_name("openpi_dummy_layout.json")


@functools.cache
def _model_params(pi05: bool, seed: int = 0):
    """Random tiny params of the config the importer will write, every leaf perturbed (zero
    inits would hide transposes)."""
    config = flow_pi0_openpi.get_config(f"{'pi05' if pi05 else 'pi0'},variant=tiny,horizon={H}")
    model = models.create_model(config.model)
    example = spec.example_observation(spec.observation_spec(config.data, STATE_DIM))
    params = jax.jit(lambda k: models.init_params(model, k, example, (H, 32)))(jax.random.key(seed))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [
        np.asarray(x + 0.05 * jax.random.normal(k, x.shape))
        for x, k in zip(leaves, keys, strict=True)
    ]
    return jax.tree.unflatten(tree, leaves)


def _openpi_stats(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    one = lambda d: {  # noqa: E731
        "mean": rng.normal(size=d).tolist(), "std": rng.uniform(0.5, 2, d).tolist(),
        "q01": rng.uniform(-3, -1, d).tolist(), "q99": rng.uniform(1, 3, d).tolist(),
    }  # fmt: skip
    return {"state": one(STATE_DIM), "actions": one(ACTION_DIM)}


def write_openpi_checkpoint(directory, params, pi05: bool, *, value_level: bool, stats):
    """Our params in openpi's layout: `params/` = orbax PyTree {"params": nested dict} (each
    leaf under "value" as nnx's training checkpoints), `assets/<id>/norm_stats.json`."""
    size = models.pi0.SIZES["tiny"]
    flat = openpi_import.to_openpi(params, pi05, size)
    if value_level:
        flat = {f"{k}/{openpi_import.VALUE}": v for k, v in flat.items()}
    tree = traverse_util.unflatten_dict(flat, sep="/")
    directory = pathlib.Path(directory)
    with ocp.PyTreeCheckpointer() as ckptr:
        ckptr.save((directory / "params").resolve(), {"params": tree})
    (directory / "assets" / ASSET).mkdir(parents=True)
    (directory / "assets" / ASSET / "norm_stats.json").write_text(
        json.dumps({"norm_stats": stats}, indent=2)
    )
    return directory


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """{"pi0" | "pi05" | "pi0_train": (workdir, original params, summary)}."""
    root = tmp_path_factory.mktemp("openpi")
    stats = _openpi_stats()
    out = {}
    for name, pi05, value_level in (("pi0", False, False), ("pi05", True, False),
                                    ("pi0_train", False, True)):  # fmt: skip
        params = _model_params(pi05)
        src = root / name / "src"
        if value_level:  # a training run's directory: <run>/<step>/{params,assets}
            src = root / name / "run" / "5000"
        write_openpi_checkpoint(src, params, pi05, value_level=value_level, stats=stats)
        src = src.parent if value_level else src
        summary = openpi_import.import_checkpoint(
            str(src), str(root / name / "dst"), action_horizon=H
        )
        out[name] = (str(root / name / "dst"), params, summary)
    return out, stats


@pytest.mark.parametrize("name", ["pi0", "pi05", "pi0_train"])
def test_import_restores_the_same_parameters_and_config(imported, name):
    runs, _ = imported
    workdir, params, summary = runs[name]
    assert summary["value_level"] == (name == "pi0_train")
    assert summary["model"] == ("pi05" if name == "pi05" else "pi0")
    assert summary["variant"] == "tiny" and summary["asset_id"] == ASSET
    manager = checkpoint.create_checkpoint_manager(f"{workdir}/checkpoints", read_only=True)
    config, _ = checkpoint.restore_metadata(manager)
    assert config["model"]["state_token"] == (name != "pi05")
    assert config["objective"]["time_convention"] == "noise_at_1"
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(
            x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])
        ),
        params,
    )
    for use_ema in (True, False):
        back = checkpoint.restore_params(manager, abstract, use_ema=use_ema)
        for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True):
            np.testing.assert_array_equal(np.asarray(a), b)


def test_norm_stats_fold_openpi_epsilon(imported):
    runs, stats = imported
    manager = checkpoint.create_checkpoint_manager(f"{runs['pi0'][0]}/checkpoints", read_only=True)
    _, ours = checkpoint.restore_metadata(manager)
    x = np.random.default_rng(0).normal(size=(5, STATE_DIM)) * 2
    s = {k: np.asarray(v) for k, v in stats["state"].items()}
    want_z = (x - s["mean"]) / (s["std"] + 1e-6)  # openpi's Normalize
    want_q = (x - s["q01"]) / (s["q99"] - s["q01"] + 1e-6) * 2.0 - 1.0
    np.testing.assert_allclose(normalize.normalize(x, ours["state"], "meanstd"), want_z, rtol=1e-5)
    np.testing.assert_allclose(normalize.normalize(x, ours["state"], "quantile"), want_q, rtol=1e-5)
    a = np.random.default_rng(1).normal(size=(5, ACTION_DIM))
    s = {k: np.asarray(v) for k, v in stats["actions"].items()}
    np.testing.assert_allclose(  # openpi's Unnormalize
        normalize.unnormalize(a, ours["actions"], "meanstd"), a * (s["std"] + 1e-6) + s["mean"],
        rtol=1e-5, atol=1e-6,
    )  # fmt: skip


def test_layout_is_openpis_own(tmp_path):
    """At openpi's smallest size ("dummy" Gemma + So400m/14), the layout we write equals the
    paths and shapes openpi's own code saved (recorded in openpi_dummy_layout.json), for
    π0 and π0.5; shapes only (eval_shape), nothing allocated."""
    record = json.loads(LAYOUT.read_text())
    size = models.pi0.SIZES["openpi_dummy"]
    for name, pi05 in (("pi0", False), ("pi05", True)):
        config = flow_pi0_openpi.get_config(f"{name},variant=openpi_dummy,horizon={H}")
        model = models.create_model(config.model)
        example = spec.example_observation(spec.observation_spec(config.data, STATE_DIM))
        abstract = jax.eval_shape(
            lambda k, m=model, e=example: models.init_params(m, k, e, (H, 32)), jax.random.key(0)
        )
        flat = jax.eval_shape(
            lambda p, pi05=pi05: openpi_import.to_openpi(p, pi05, size, xp=jnp), abstract
        )
        got = {k: list(v.shape) for k, v in flat.items()}
        assert got == record[name]


@pytest.fixture(scope="module")
def policy(imported):
    return openpi_import.load_policy(imported[0]["pi0"][0])  # the compare CLI's, cached


def _observation(batch: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    obs = {
        schema.OBS_STATE: rng.normal(size=(batch, 1, STATE_DIM)).astype(np.float32),
        schema.PROMPT: np.array(["pick up the fork"] * batch),
    }
    for cam in openpi_import.CAMERAS:
        obs[schema.image_key(cam)] = rng.integers(0, 256, (batch, 1, 224, 224, 3), np.uint8)
    return obs


def test_policy_from_imported_checkpoint_samples(policy):
    assert policy.action_shape == (H, ACTION_DIM)
    actions = policy.sample_actions(_observation(2), 0)
    assert actions.shape == (2, H, ACTION_DIM) and np.isfinite(actions).all()
    np.testing.assert_array_equal(actions, policy.sample_actions(_observation(2), 0))


def _run_cli(argv) -> tuple[int, dict]:
    """Runs the command line in-process: (exit status, its JSON line)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        openpi_import.main(["openpi_import", *argv])
    return exit_info.value.code, json.loads(out.getvalue().strip().splitlines()[-1])


def test_compare_cli_json_and_exit_status(imported, policy, tmp_path):
    """The CLI's contract only: actions equal to ours pass (exit 0), 0.5 off fail (exit 1)."""
    workdir = imported[0]["pi0"][0]
    rng = np.random.default_rng(3)
    ref = {f"image/{c}": rng.uniform(-1, 1, (1, 224, 224, 3)).astype(np.float32)
           for c in openpi_import.CAMERAS}  # fmt: skip
    ref.update({f"image_mask/{c}": np.ones(1, bool) for c in openpi_import.CAMERAS})
    ref["image_mask/right_wrist_0_rgb"][:] = False
    ref["state"] = np.pad(rng.uniform(-1, 1, (1, STATE_DIM)), ((0, 0), (0, 24))).astype(np.float32)
    ref["tokenized_prompt"] = np.pad(rng.integers(1, 259, (1, 6)), ((0, 0), (0, 42))).astype(
        np.int32
    )
    ref["tokenized_prompt_mask"] = ref["tokenized_prompt"] != 0
    ref["noise"] = rng.normal(size=(1, H, 32)).astype(np.float32)
    ref["actions"] = openpi_import.sample_reference(ref, policy, num_steps=3)
    ref["num_steps"] = np.int32(3)
    np.savez(tmp_path / "ok.npz", **ref)
    np.savez(tmp_path / "off.npz", **{**ref, "actions": ref["actions"] + 0.5})
    code, result = _run_cli([f"--compare={tmp_path / 'ok.npz'}", f"--workdir={workdir}"])
    assert code == 0 and result["passed"] and result["max_abs_error"] == 0.0
    assert result["shape"] == [1, H, 32] and result["num_steps"] == 3
    code, result = _run_cli([f"--compare={tmp_path / 'off.npz'}", f"--workdir={workdir}"])
    assert code == 1 and not result["passed"]
    assert result["max_abs_error"] == pytest.approx(0.5, abs=1e-5)
    assert result["max_rel_error"] > result["tolerance"]


def test_openpi_client_is_served_the_imported_checkpoint(policy):
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    from action_gen.serve import server

    srv = server.PolicyServer(policy, port=0, max_batch=1, batch_sizes=(1,)).start()
    try:
        client = WebsocketClientPolicy(host="127.0.0.1", port=srv.port)
        meta = client.get_server_metadata()
        assert meta["action_shape"] == [H, ACTION_DIM]
        for cam in openpi_import.CAMERAS:
            assert meta["observation_spec"][schema.image_key(cam)]["shape"] == [1, 224, 224, 3]
        obs = {k: v[0] for k, v in _observation(1, seed=5).items()}
        obs[schema.PROMPT] = "pick up the fork"
        reply = client.infer(obs)
        assert reply["actions"].shape == (H, ACTION_DIM) and np.isfinite(reply["actions"]).all()
    finally:
        srv.stop()


def test_openpi_time_convention_follows_openpis_loop():
    """flow's "noise_at_1" sampler = openpi's `sample_actions` loop (time from 1.0 by repeated
    float32 addition of -1/N while time >= -dt/2, x += dt * v), bit for bit, on a toy field."""
    from action_gen.objectives import flow

    grid, dt = flow.time_grid(10, "noise_at_1")
    assert grid[:3].tolist() == [1.0, np.float32(0.9), np.float32(0.79999995)] and dt == -0.1

    def field(params, obs, x, time):  # any smooth v(x, τ); time = τ (time_scale 1)
        return jnp.sin(x * time[:, None, None]) + 0.3 * time[:, None, None]

    noise = jax.random.normal(jax.random.key(0), (2, H, 3))
    obs = {schema.OBS_STATE: jnp.zeros((2, 1, 1))}
    ours = jax.jit(
        lambda n: flow.sample_from_noise(
            field, None, obs, None, 10, n, action_shape=(H, 3), time_scale=1.0,
            clip_sample=False, time_convention="noise_at_1",
        )
    )(noise)  # fmt: skip

    def openpi_loop(x):
        step = -1.0 / 10

        def body(carry):
            x, time = carry
            return x + step * field(None, obs, x, jnp.broadcast_to(time, (2,))), time + step

        return jax.lax.while_loop(lambda c: c[1] >= -step / 2, body, (x, 1.0))[0]

    np.testing.assert_array_equal(np.asarray(ours), np.asarray(jax.jit(openpi_loop)(noise)))

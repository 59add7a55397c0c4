"""Probe: best-of-M selection among 1-step candidates (one batched call) on first chunks."""
import functools, json, sys
import numpy as np, jax, jax.numpy as jnp
sys.path.insert(0, "/work/main"); sys.path.insert(0, "/work/main/benchmarks")
from action_gen.sample.policy import Policy
from action_gen.data import schema, normalize
from action_gen import models
import first_chunk_modes as fcm

W = sys.argv[1]
pol = Policy.from_checkpoint(W, num_sample_steps=1)
apply_fn = models.make_apply_fn(pol.model)
ns = pol.norm_stats; cfg = pol.config
H, A = pol.action_horizon, pol.model_action_dim

@functools.partial(jax.jit, static_argnames=("M", "rule", "delta"))
def sel(params, obs, rng, M, rule, delta):
    obs = dict(obs)
    obs[schema.OBS_STATE] = normalize.normalize(obs[schema.OBS_STATE], ns["state"], cfg.data.state_norm).astype(jnp.float32)
    B = obs[schema.OBS_STATE].shape[0]
    k1, k2 = jax.random.split(rng)
    eps = jax.random.normal(k1, (B, M, H, A))
    rows = [eps]
    if rule == "sens":
        u = jax.random.normal(k2, (B, M, H, A)); u = u / jnp.linalg.norm(u.reshape(B, M, -1), axis=-1)[..., None, None]
        rows.append(eps + delta * u * np.sqrt(H * A))
    x = jnp.concatenate(rows, 1)  # [B, R, H, A]
    R = x.shape[1]
    o = jax.tree.map(lambda a: jnp.repeat(a, R, axis=0), obs)
    out = pol.objective.sample_from_noise(apply_fn, params, o, rng, 1, x.reshape(B * R, H, A)).reshape(B, R, H, A)
    c = out[:, :M]
    if M == 1:
        pick = jnp.zeros((B,), jnp.int32)
    elif rule == "sens":
        s = jnp.sum((out[:, M:] - c) ** 2, axis=(2, 3))
        pick = jnp.argmin(s, axis=1)
    elif rule == "density":
        d = jnp.sum((c[:, :, None] - c[:, None]) ** 2, axis=(3, 4))  # [B,M,M]
        h = jnp.median(d.reshape(B, -1), axis=1)[:, None, None] + 1e-6
        pick = jnp.argmax(jnp.sum(jnp.exp(-d / h), -1), axis=1)
    chosen = jnp.take_along_axis(c, pick[:, None, None, None], 1)[:, 0]
    return normalize.unnormalize(chosen[..., : pol.action_dim], ns["actions"], cfg.data.action_norm)

for M, rule, delta in [(1, "none", 0.0), (4, "sens", 0.05), (4, "sens", 0.2), (8, "sens", 0.1), (4, "density", 0.0), (8, "density", 0.0)]:
    fn = lambda obs, e: sel(pol.params, obs, jax.random.PRNGKey(1000 + e), M, rule, delta)
    st = fcm.first_chunk_modes(fn, num_starts=20, samples_per_start=100, eval_seed=int(cfg.eval.seed), obs_horizon=pol.obs_horizon)
    st.pop("lateral_end_quantiles")
    print(json.dumps({"M": M, "rule": rule, "delta": delta, **st}), flush=True)

"""A trained policy: raw observation in, raw action chunk out, as one compiled program."""

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from action_gen import models, objectives
from action_gen.data import normalize, schema
from action_gen.train import checkpoint


def _checkpoint_dir(path: str) -> str:
    """Accepts a run's workdir or its `checkpoints/` directory."""
    candidate = os.path.join(path, "checkpoints")
    return candidate if os.path.isdir(candidate) else path


class Policy:
    """Normalizes an observation, samples a normalized chunk, unnormalizes it.

    The three stages run inside ONE jitted function (normalization is a few fused
    elementwise ops; the sampler is a `lax.scan`), so a chunk costs one dispatch.

    Attributes:
      config: the run's ConfigDict (as stored in the checkpoint).
      params: the parameters sampled with (EMA weights by default).
      norm_stats: normalization statistics of the training data.
      num_sample_steps: denoising / integration steps per chunk.
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        params,
        norm_stats: dict,
        *,
        num_sample_steps: int | None = None,
    ):
        self.config = config
        self.params = params
        self.norm_stats = norm_stats
        self.state_dim, self.action_dim = normalize.feature_dims(norm_stats)
        self.obs_horizon = int(config.data.obs_horizon)
        self.action_horizon = int(config.data.action_horizon)
        self.num_sample_steps = int(num_sample_steps or config.objective.num_sample_steps)
        self.model = models.create_model(config.model)
        self.objective = objectives.create_objective(
            config.objective, (self.action_horizon, self.action_dim)
        )
        self._sample = jax.jit(
            functools.partial(
                _sample_raw,
                apply_fn=models.make_apply_fn(self.model),
                sample_fn=self.objective.sample,
                num_steps=self.num_sample_steps,
                norm_stats=norm_stats,
                state_norm=config.data.state_norm,
                action_norm=config.data.action_norm,
            )
        )

    @classmethod
    def from_checkpoint(
        cls,
        path: str,
        *,
        step: int | None = None,
        use_ema: bool = True,
        num_sample_steps: int | None = None,
    ) -> "Policy":
        """Restores a policy from a run's workdir (or checkpoint dir) alone.

        Reads the config and normalization stats stored with the checkpoint, rebuilds the
        model, and restores only the (EMA) parameters.
        """
        ckpt_dir = _checkpoint_dir(path)
        if not os.path.isdir(ckpt_dir):
            raise FileNotFoundError(f"no checkpoint directory at {ckpt_dir}")
        manager = checkpoint.create_checkpoint_manager(ckpt_dir, read_only=True)
        config_dict, norm_stats = checkpoint.restore_metadata(manager, step)
        config = ml_collections.ConfigDict(config_dict)
        state_dim, action_dim = normalize.feature_dims(norm_stats)
        model = models.create_model(config.model)
        example_obs = models.example_observation(config.data.obs_horizon, state_dim)
        abstract_params = jax.eval_shape(
            lambda key: models.init_params(
                model, key, example_obs, (config.data.action_horizon, action_dim)
            ),
            jax.random.key(0),
        )
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        abstract_params = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract_params
        )
        params = checkpoint.restore_params(manager, abstract_params, use_ema=use_ema, step=step)
        return cls(config, params, norm_stats, num_sample_steps=num_sample_steps)

    def sample_actions(self, observation: dict, rng) -> np.ndarray:
        """Samples one action chunk per observation in the batch.

        Args:
          observation: `schema.OBS_STATE` [B, T, S] raw (unnormalized) state history and
            optionally `schema.OBS_PAD_MASK` [B, T] bool.
          rng: a jax PRNG key or an int seed.
        Returns:
          [B, H, A] float32 numpy array of raw (unnormalized) actions.
        """
        if isinstance(rng, int | np.integer):
            rng = jax.random.key(int(rng))
        state = np.asarray(observation[schema.OBS_STATE], np.float32)
        obs = {schema.OBS_STATE: state}
        if schema.OBS_PAD_MASK in observation:
            obs[schema.OBS_PAD_MASK] = np.asarray(observation[schema.OBS_PAD_MASK], bool)
        else:
            obs[schema.OBS_PAD_MASK] = np.ones(state.shape[:2], bool)
        return np.asarray(self._sample(self.params, obs, rng))


def _sample_raw(
    params,
    obs: dict,
    rng: jax.Array,
    *,
    apply_fn,
    sample_fn,
    num_steps: int,
    norm_stats: dict,
    state_norm: str,
    action_norm: str,
) -> jax.Array:
    """normalize(obs) → objective sampler → unnormalize(actions); traced once per shape."""
    obs = dict(obs)
    obs[schema.OBS_STATE] = normalize.normalize(
        obs[schema.OBS_STATE], norm_stats["state"], state_norm
    ).astype(jnp.float32)
    actions = sample_fn(apply_fn, params, obs, rng, num_steps)
    return normalize.unnormalize(actions, norm_stats["actions"], action_norm)

"""A trained policy: raw observation in, raw action chunk out, as one compiled program."""

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from action_gen import models, objectives
from action_gen.data import normalize, schema, spec, transforms
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
      observation_spec: what a caller sends, per unbatched observation: key -> (shape,
        dtype); `observation/state` (T, S) float32, images (T, h, w, 3) uint8, and `prompt`
        ((), "string") for language-conditioned policies. `obs_pad_mask` (T,) bool is
        optional (default: all real).
      action_shape: (H, A) of the returned chunks (A: the dataset's action dim).
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
        self.model_action_dim = spec.model_action_dim(config.model, self.action_dim)
        self.obs_horizon = int(config.data.obs_horizon)
        self.action_horizon = int(config.data.action_horizon)
        self.action_shape = (self.action_horizon, self.action_dim)
        self.num_sample_steps = int(num_sample_steps or config.objective.num_sample_steps)
        self.model_observation_spec = spec.observation_spec(config.data, self.state_dim)
        self.observation_spec = _client_spec(self.model_observation_spec)
        self._prepare_observation = transforms.make_observation_preparer(config)
        self.model = models.create_model(config.model)
        self.objective = objectives.create_objective(
            config.objective, (self.action_horizon, self.model_action_dim)
        )
        self._sample = jax.jit(
            functools.partial(
                _sample_raw,
                apply_fn=models.make_apply_fn(self.model),
                sample_fn=self.objective.sample,
                num_steps=self.num_sample_steps,
                action_dim=self.action_dim,
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
        state_dim, data_action_dim = normalize.feature_dims(norm_stats)
        action_dim = spec.model_action_dim(config.model, data_action_dim)
        model = models.create_model(config.model)
        example_obs = spec.example_observation(spec.observation_spec(config.data, state_dim))
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
          observation: raw (unnormalized) batched observation, keys as in
            `self.observation_spec` with a leading batch dim: `schema.OBS_STATE` [B, T, S],
            optionally `schema.OBS_PAD_MASK` [B, T] bool, images [B, T, h, w, 3] uint8,
            `prompt` [B] strings.
          rng: a jax PRNG key or an int seed.
        Returns:
          [B, H, A] float32 numpy array of raw (unnormalized) actions.
        """
        if isinstance(rng, int | np.integer):
            rng = jax.random.key(int(rng))
        return np.asarray(self._sample(self.params, self.prepare_observation(observation), rng))

    def prepare_observation(self, observation: dict) -> dict:
        """Raw batched observation -> the model-ready arrays of `model_observation_spec`
        (prompt tokenized, pad mask defaulted, dtypes fixed); normalization happens in jit."""
        missing = [k for k in self.observation_spec if k not in observation]
        if missing:
            raise KeyError(
                f"observation is missing {missing}; expected {sorted(self.observation_spec)}"
            )
        observation = self._prepare_observation(observation)
        state = np.asarray(observation[schema.OBS_STATE], np.float32)
        obs = {}
        for key, (_, dtype) in self.model_observation_spec.items():
            if key == schema.OBS_PAD_MASK and key not in observation:
                obs[key] = np.ones(state.shape[:2], bool)
            else:
                obs[key] = np.asarray(observation[key], dtype)
        for key, value in observation.items():  # optional camera-presence masks
            if key.startswith(schema.IMAGE_MASK_PREFIX):
                obs[key] = np.asarray(value, bool)
        return obs


def _client_spec(model_spec: dict) -> dict:
    """The spec a caller fills: the model's, with the raw `prompt` string in place of its
    tokens and the pad mask left optional."""
    client = {
        k: v
        for k, v in model_spec.items()
        if k not in (schema.PROMPT_TOKENS, schema.PROMPT_MASK, schema.OBS_PAD_MASK)
    }
    if schema.PROMPT_TOKENS in model_spec:
        client[schema.PROMPT] = ((), "string")
    return client


def _sample_raw(
    params,
    obs: dict,
    rng: jax.Array,
    *,
    apply_fn,
    sample_fn,
    num_steps: int,
    action_dim: int,
    norm_stats: dict,
    state_norm: str,
    action_norm: str,
) -> jax.Array:
    """normalize(obs) → objective sampler → drop padded action dims → unnormalize; traced
    once per shape."""
    obs = dict(obs)
    obs[schema.OBS_STATE] = normalize.normalize(
        obs[schema.OBS_STATE], norm_stats["state"], state_norm
    ).astype(jnp.float32)
    actions = sample_fn(apply_fn, params, obs, rng, num_steps)[..., :action_dim]
    return normalize.unnormalize(actions, norm_stats["actions"], action_norm)

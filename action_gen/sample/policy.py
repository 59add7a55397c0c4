"""A trained policy: raw observation in, raw action chunk out, as one compiled program."""

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from action_gen import checkpoint, models, objectives
from action_gen.data import normalize, schema, spec, transforms
from action_gen.objectives import flow


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
      supports_rtc: whether `sample_actions_rtc` (guided flow sampling) is available.
      compiled_batch_sizes: batch sizes compiled ahead of time by `compile`.
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
        # Real-time chunking inpaints with the flow sampler's guided variant.
        self.supports_rtc = config.objective.name == "flow"
        self._sample_rtc = None
        if self.supports_rtc:
            guided_kwargs = {
                k: v
                for k, v in config.objective.to_dict().items()
                if k in ("integrator", "time_scale", "clip_sample")
            }
            self._sample_rtc = jax.jit(
                functools.partial(
                    _sample_raw_guided,
                    apply_fn=models.make_apply_fn(self.model),
                    guided_fn=functools.partial(
                        flow.sample_guided,
                        action_shape=(self.action_horizon, self.model_action_dim),
                        **guided_kwargs,
                    ),
                    num_steps=self.num_sample_steps,
                    action_dim=self.action_dim,
                    model_action_dim=self.model_action_dim,
                    norm_stats=norm_stats,
                    state_norm=config.data.state_norm,
                    action_norm=config.data.action_norm,
                ),
                static_argnames=("max_guidance",),
            )
        # batch size -> (plain, guided or None) executables compiled ahead of time.
        self._compiled: dict[int, tuple] = {}
        self.compiled_batch_sizes: tuple[int, ...] = ()

    @classmethod
    def from_checkpoint(
        cls,
        path: str,
        *,
        step: int | None = None,
        use_ema: bool = True,
        num_sample_steps: int | None = None,
        clip_sample: bool | None = None,
    ) -> "Policy":
        """Restores a policy from a run's workdir (or checkpoint dir) alone.

        Reads the config and normalization stats stored with the checkpoint, rebuilds the
        model, and restores only the (EMA) parameters. `num_sample_steps` and
        `clip_sample` (None: as stored) override the stored sampler settings; they change
        how the model is sampled, not what it learned.
        """
        ckpt_dir = _checkpoint_dir(path)
        if not os.path.isdir(ckpt_dir):
            raise FileNotFoundError(f"no checkpoint directory at {ckpt_dir}")
        manager = checkpoint.create_checkpoint_manager(ckpt_dir, read_only=True)
        config_dict, norm_stats = checkpoint.restore_metadata(manager, step)
        config = ml_collections.ConfigDict(config_dict)
        if clip_sample is not None:
            if "clip_sample" not in config.objective:
                raise ValueError(
                    f"clip_sample={clip_sample}: the {config.objective.name!r} objective of "
                    f"{ckpt_dir} has no clip_sample setting"
                )
            config.objective.clip_sample = bool(clip_sample)
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
        obs = self.prepare_observation(observation)
        return self._run(obs, rng, lambda fns: fns[0], self._sample)

    def sample_actions_rtc(
        self,
        observation: dict,
        rng,
        *,
        prefix: np.ndarray,
        prefix_weights: np.ndarray,
        max_guidance: float = 5.0,
    ) -> np.ndarray:
        """Samples chunks inpainted towards `prefix` (real-time chunking; flow only).

        See `objectives.flow.sample_guided` for the math and `sample.executor` for how the
        prefix and weights are built. The prefix is normalized like the training actions
        (and zero-padded to the model's action dim) inside the same jitted program.

        Args:
          observation: as for `sample_actions`, batch B.
          rng: a jax PRNG key or an int seed.
          prefix: [B, H, A] raw actions the new chunk should start with.
          prefix_weights: [H] or [B, H] weights in [0, 1].
          max_guidance: β, the clip of the guidance weight (compiled in: one program per β;
            the ahead-of-time programs use the default 5).
        Returns:
          [B, H, A] float32 numpy array of raw actions.
        """
        if not self.supports_rtc:
            raise ValueError(
                "real-time chunking needs a flow policy; this one is "
                f"{self.config.objective.name!r}"
            )
        if isinstance(rng, int | np.integer):
            rng = jax.random.key(int(rng))
        obs = self.prepare_observation(observation)
        batch = obs[schema.OBS_STATE].shape[0]
        prefix = np.asarray(prefix, np.float32)
        if prefix.shape != (batch, *self.action_shape):
            raise ValueError(
                f"prefix shape {prefix.shape} != (B, H, A) = {(batch, *self.action_shape)}"
            )
        weights = np.asarray(prefix_weights, np.float32)
        try:
            weights = np.broadcast_to(weights, (batch, self.action_horizon)).copy()
        except ValueError:
            raise ValueError(
                f"prefix_weights shape {weights.shape} is neither [H] nor [B, H] "
                f"(H={self.action_horizon}, B={batch})"
            ) from None
        obs = {**obs, _PREFIX: prefix, _WEIGHTS: weights}
        if max_guidance != 5.0:
            return self._call_guided(self._sample_rtc, obs, rng, max_guidance)
        return self._run(
            obs,
            rng,
            lambda fns: fns[1],
            lambda params, o, r: self._call_guided(self._sample_rtc, o, r, 5.0, params),
        )

    def _call_guided(self, fn, obs, rng, max_guidance, params=None):
        obs = dict(obs)
        prefix, weights = obs.pop(_PREFIX), obs.pop(_WEIGHTS)
        params = self.params if params is None else params
        if max_guidance is None:  # an AOT executable: β is compiled in
            return fn(params, obs, rng, prefix, weights)
        return fn(params, obs, rng, prefix, weights, max_guidance=max_guidance)

    def compile(self, batch_sizes=(1,)) -> None:
        """Compiles the sampler ahead of time for each batch size, and runs each once.

        After this, a call with batch B runs the program of the smallest compiled size
        >= B (the batch padded by repeating its last row, results sliced back), or splits
        B into pieces of the largest size: no request pays compilation. Observations
        with keys outside `model_observation_spec` (optional camera masks) fall back to
        the jitted function.
        """
        for size in sorted({int(b) for b in batch_sizes}):
            if size < 1:
                raise ValueError(f"batch sizes must be >= 1, got {size}")
            if size in self._compiled:
                continue
            obs = spec.example_observation(self.model_observation_spec, size)
            rng = jax.random.key(0)
            plain = self._sample.lower(self.params, obs, rng).compile()
            np.asarray(plain(self.params, obs, rng))  # warm-up: first-run allocations
            guided = None
            if self.supports_rtc:
                prefix = np.zeros((size, *self.action_shape), np.float32)
                weights = np.zeros((size, self.action_horizon), np.float32)
                guided = self._sample_rtc.lower(
                    self.params, obs, rng, prefix, weights, max_guidance=5.0
                ).compile()
                np.asarray(guided(self.params, obs, rng, prefix, weights))
            self._compiled[size] = (plain, guided)
        self.compiled_batch_sizes = tuple(sorted(self._compiled))

    def _run(self, obs: dict, rng, pick, fallback) -> np.ndarray:
        """Runs on an AOT program when one fits (padding / splitting the batch), else on
        the jitted `fallback(params, obs, rng)`."""
        keys = set(obs) - {_PREFIX, _WEIGHTS}
        if not self._compiled or keys != set(self.model_observation_spec):
            return np.asarray(fallback(self.params, obs, rng))
        batch = obs[schema.OBS_STATE].shape[0]
        largest = self.compiled_batch_sizes[-1]
        if batch > largest:  # split into pieces that each have a program
            pieces = [
                self._run(
                    {k: v[i : i + largest] for k, v in obs.items()},
                    jax.random.fold_in(rng, i),
                    pick,
                    fallback,
                )
                for i in range(0, batch, largest)
            ]
            return np.concatenate(pieces)
        size = next(b for b in self.compiled_batch_sizes if b >= batch)
        padded = {
            k: np.concatenate([v, np.repeat(v[-1:], size - batch, axis=0)]) if size > batch else v
            for k, v in obs.items()
        }
        fn = pick(self._compiled[size])
        if _PREFIX in padded:
            out = self._call_guided(fn, padded, rng, None)
        else:
            out = fn(self.params, padded, rng)
        return np.asarray(out)[:batch]

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


# Internal keys carrying the RTC prefix through `_run` (never part of an observation).
_PREFIX, _WEIGHTS = "__rtc_prefix__", "__rtc_weights__"


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


def _sample_raw_guided(
    params,
    obs: dict,
    rng: jax.Array,
    prefix: jax.Array,
    prefix_weights: jax.Array,
    *,
    apply_fn,
    guided_fn,
    num_steps: int,
    action_dim: int,
    model_action_dim: int,
    norm_stats: dict,
    state_norm: str,
    action_norm: str,
    max_guidance: float,
) -> jax.Array:
    """`_sample_raw` with the RTC-guided flow sampler: the raw prefix [B, H, A] is
    normalized (and zero-padded to the model's action dim) like the training actions."""
    obs = dict(obs)
    obs[schema.OBS_STATE] = normalize.normalize(
        obs[schema.OBS_STATE], norm_stats["state"], state_norm
    ).astype(jnp.float32)
    target = normalize.normalize(prefix, norm_stats["actions"], action_norm).astype(jnp.float32)
    pad = model_action_dim - action_dim
    if pad:
        target = jnp.pad(target, ((0, 0), (0, 0), (0, pad)))
    actions = guided_fn(
        apply_fn, params, obs, rng, num_steps, target, prefix_weights, max_guidance=max_guidance
    )[..., :action_dim]
    return normalize.unnormalize(actions, norm_stats["actions"], action_norm)

"""A trained policy: raw observation in, raw action chunk out, as one compiled program."""

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from action_gen import checkpoint, models, objectives
from action_gen.data import normalize, schema, spec, transforms
from action_gen.models import lora

# β of the guided sampler's ahead-of-time programs (the RTC paper's value).
DEFAULT_MAX_GUIDANCE = 5.0


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
      objective: the `objectives.Objective` sampled with (its capabilities and settings).
      supports_rtc: whether `sample_actions_rtc` is available (the objective has guided
        sampling).
      compiled_batch_sizes: batch sizes compiled ahead of time by `compile`.
      param_dtype: the dtype the floating parameters were cast to once at construction
        (default: the model's compute dtype `config.model.dtype`; None: kept as given).
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        params,
        norm_stats: dict,
        *,
        num_sample_steps: int | None = None,
        param_dtype: str | None = None,
        dataset: str | None = None,
    ):
        self.config = config
        # Inference casts the parameters to the compute dtype once, here, instead of the
        # model casting float32 kernels inside every call (at π0 size a full read of the
        # float32 weights per chunk); the checkpoint keeps its float32 master weights.
        self.param_dtype = param_dtype or config.model.get("dtype") or None
        if self.param_dtype is not None:
            self.params = _cast_float_params(params, jnp.dtype(self.param_dtype))
        else:
            self.params = params
        self.norm_stats = norm_stats
        # A run over several datasets (robots) stored each one's stats: this policy serves
        # `dataset`'s robot, with its own state / action dims and cameras, padded to the
        # model's inside `prepare_observation` (normalize.dataset_stats).
        self.dataset, sampling_stats, self._robot = _robot_of(norm_stats, dataset)
        model_state_dim, model_data_action_dim = normalize.feature_dims(norm_stats)
        self.state_dim, self.action_dim = normalize.feature_dims(sampling_stats)
        self.model_action_dim = spec.model_action_dim(config.model, model_data_action_dim)
        self.obs_horizon = int(config.data.obs_horizon)
        self.action_horizon = int(config.data.action_horizon)
        self.action_shape = (self.action_horizon, self.action_dim)
        self.num_sample_steps = int(num_sample_steps or config.objective.num_sample_steps)
        self.model_observation_spec = spec.observation_spec(config.data, model_state_dim)
        self.observation_spec = _robot_spec(
            _client_spec(self.model_observation_spec), self.state_dim, self._robot
        )
        if self._robot is not None and self._robot["cameras"] is not None:
            self._robot["missing"] = {
                key: shape
                for key, (shape, _) in self.model_observation_spec.items()
                if key.startswith(schema.OBS_IMAGE_PREFIX)
                and key.removeprefix(schema.OBS_IMAGE_PREFIX) not in self._robot["cameras"]
            }
        norm_stats = {
            "state": normalize.pad_stats(sampling_stats["state"], model_state_dim),
            "actions": sampling_stats["actions"],
        }
        # Stats for prompt formats that write the normalized state (openpi_pi05); the state
        # the model gets stays raw here and is normalized inside the jitted sampler.
        self._prepare_observation = transforms.make_observation_preparer(
            config, state_stats=norm_stats["state"]
        )
        self.model = models.create_model(config.model)
        self.objective = objectives.create_objective(
            config.objective, (self.action_horizon, self.model_action_dim)
        )
        # The split apply function: observation-only work (π0's prefix KV cache) runs once
        # per chunk, before the sampler's scan, on every path below.
        apply_fn = models.make_apply_fn(self.model)
        normalization = dict(
            action_dim=self.action_dim,
            norm_stats=norm_stats,
            state_norm=config.data.state_norm,
            action_norm=config.data.action_norm,
        )
        self._sample = jax.jit(
            functools.partial(
                _sample_raw,
                apply_fn=apply_fn,
                sample_fn=self.objective.sample,
                num_steps=self.num_sample_steps,
                **normalization,
            )
        )
        # Real-time chunking inpaints with the objective's guided sampler, where it has one.
        self.supports_rtc = self.objective.supports_guided_sampling
        self._sample_rtc = None
        if self.supports_rtc:
            self._sample_rtc = jax.jit(
                functools.partial(
                    _sample_raw_guided,
                    apply_fn=apply_fn,
                    guided_fn=self.objective.sample_guided,
                    num_steps=self.num_sample_steps,
                    model_action_dim=self.model_action_dim,
                    **normalization,
                ),
                static_argnames=("max_guidance",),
            )
        # batch size -> {"plain": executable, "guided": executable or None}, compiled ahead
        # of time by `compile`.
        self._compiled: dict[int, dict] = {}
        self.compiled_batch_sizes: tuple[int, ...] = ()

    @classmethod
    def from_checkpoint(
        cls,
        path: str,
        *,
        config: ml_collections.ConfigDict | None = None,
        step: int | None = None,
        use_ema: bool = True,
        num_sample_steps: int | None = None,
        clip_sample: bool | None = None,
        sampling: dict | None = None,
        param_dtype: str | None = None,
        batch_sizes=(),
        dataset: str | None = None,
    ) -> "Policy":
        """Restores a policy from a run's workdir (or checkpoint dir) alone.

        Reads the config and normalization stats stored with the checkpoint, rebuilds the
        model, and restores only the (EMA) parameters.

        Args:
          path: a run's workdir or its `checkpoints/` directory.
          config: sample under this config instead of the stored one (a sweep's run that
            shares a trained checkpoint); every field the checkpoint fixes
            (`checkpoint.is_fixed_by_checkpoint`) must equal the stored value, else a
            ValueError names the differing fields. Only sampling settings may differ.
          step: the checkpoint step (default: the latest).
          use_ema: restore the EMA parameters (else the raw ones).
          num_sample_steps, clip_sample: override the sampler settings (None: as in the
            config); they change how the model is sampled, not what it learned.
          sampling: other sampling settings of the objective to override, e.g.
            {"num_candidates": 4} (each must be in `objectives.SAMPLING_FIELDS` and one the
            objective's sampler takes; None or {}: as in the config).
          param_dtype: serve with parameters in this dtype (default: the model's compute
            dtype, `config.model.dtype`; "float32" keeps the master weights' precision).
          batch_sizes: compile the sampler ahead of time for these batch sizes (`compile`).
          dataset: for a run over several datasets (robots), the one whose robot this
            policy serves: its norm stats, state / action dims and cameras (required when
            the checkpoint has several; `normalize.dataset_names(policy.norm_stats)`).

        A checkpoint trained under a fine-tuning layout (`config.lora`, frozen leaves,
        `models/lora.py`) is served merged: the EMA of its trainable leaves, the raw frozen
        ones, LoRA adapters folded into their kernels (W + alpha/r · A·B, float32) before
        the cast; the served model is the base architecture.
        """
        ckpt_dir = _checkpoint_dir(path)
        if not os.path.isdir(ckpt_dir):
            raise FileNotFoundError(f"no checkpoint directory at {ckpt_dir}")
        manager = checkpoint.create_checkpoint_manager(ckpt_dir, read_only=True)
        stored_config, norm_stats = checkpoint.restore_metadata(manager, step)
        if config is None:
            config = ml_collections.ConfigDict(stored_config)
        else:
            checkpoint.check_config_compatible(
                stored_config,
                checkpoint.config_to_json_dict(config),
                ckpt_dir,
                "Sample it with the checkpoint's values of these (only sampling settings "
                "may change), or train a run with the new ones.",
            )
            config = ml_collections.ConfigDict(config.to_dict())
        if clip_sample is not None:
            if "clip_sample" not in config.objective:
                raise ValueError(
                    f"clip_sample={clip_sample}: the {config.objective.name!r} objective of "
                    f"{ckpt_dir} has no clip_sample setting"
                )
            config.objective.clip_sample = bool(clip_sample)
        for key, value in (sampling or {}).items():
            if key not in objectives.SAMPLING_FIELDS or key == "num_sample_steps":
                raise ValueError(
                    f"sampling override {key!r} is not a sampling setting of an objective; "
                    f"known: {sorted(objectives.SAMPLING_FIELDS - {'num_sample_steps'})}"
                )
            with config.unlocked():
                config.objective[key] = value
        _, abstract_params = models.abstract_checkpoint_params(config, norm_stats)
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])

        def restore(tree, ema):
            tree = jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), tree
            )
            return checkpoint.restore_params(manager, tree, use_ema=ema, step=step)

        params = lora.restore_model_params(
            restore,
            lora.FinetuneLayout.from_config(stored_config),  # how the checkpoint was trained
            abstract_params,
            use_ema=use_ema,
        )
        policy = cls(
            config,
            params,
            norm_stats,
            num_sample_steps=num_sample_steps,
            param_dtype=param_dtype,
            dataset=dataset,
        )
        if batch_sizes:
            policy.compile(batch_sizes)
        return policy

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
        obs = self.prepare_observation(observation)
        return self._run("plain", obs, _as_key(rng))

    def sample_actions_rtc(
        self,
        observation: dict,
        rng,
        *,
        prefix: np.ndarray,
        prefix_weights: np.ndarray,
        max_guidance: float = DEFAULT_MAX_GUIDANCE,
    ) -> np.ndarray:
        """Samples chunks inpainted towards `prefix` (real-time chunking), with the
        objective's guided sampler (`Objective.sample_guided`; flow's ΠGDM guidance).

        See `objectives.flow.sample_guided` for the math and `sample.executor` for how the
        prefix and weights are built. The prefix is normalized like the training actions
        (and zero-padded to the model's action dim) inside the same jitted program.

        Args:
          observation: as for `sample_actions`, batch B.
          rng: a jax PRNG key or an int seed.
          prefix: [B, H, A] raw actions the new chunk should start with.
          prefix_weights: [H] or [B, H] weights in [0, 1].
          max_guidance: β, the clip of the guidance weight (compiled in: one program per β;
            the ahead-of-time programs use DEFAULT_MAX_GUIDANCE).
        Returns:
          [B, H, A] float32 numpy array of raw actions.
        """
        if not self.supports_rtc:
            raise ValueError(
                f"real-time chunking needs an objective with guided sampling; this policy's "
                f"{self.objective.name!r} objective has none"
            )
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
        return self._run("guided", obs, _as_key(rng), (prefix, weights), max_guidance)

    def sample_prepared(self, obs: dict, rng) -> np.ndarray:
        """`sample_actions` on an observation already through `prepare_observation` (no host
        transforms): the compiled program alone, for benchmarks and batching servers."""
        return self._run("plain", obs, _as_key(rng))

    def compile(self, batch_sizes=(1,), *, guided: bool = True) -> None:
        """Compiles the sampler ahead of time for each batch size, and runs each once;
        with `guided`, the RTC sampler too (where the objective has one).

        After this, a call with batch B runs the program of the smallest compiled size
        >= B (the batch padded by repeating its last row, results sliced back), or splits
        B into pieces of the largest size: no request pays compilation. Observations
        with keys outside `model_observation_spec` (optional camera masks), and guided
        calls with another β than DEFAULT_MAX_GUIDANCE, fall back to the jitted function.
        """
        for size in sorted({int(b) for b in batch_sizes}):
            if size < 1:
                raise ValueError(f"batch sizes must be >= 1, got {size}")
            if size in self._compiled:
                continue
            obs = spec.example_observation(self.model_observation_spec, size)
            rng = jax.random.key(0)
            programs = {"plain": self._sample.lower(self.params, obs, rng).compile()}
            np.asarray(programs["plain"](self.params, obs, rng))  # warm-up: allocations
            if self.supports_rtc and guided:
                prefix = np.zeros((size, *self.action_shape), np.float32)
                weights = np.zeros((size, self.action_horizon), np.float32)
                programs["guided"] = self._sample_rtc.lower(
                    self.params, obs, rng, prefix, weights, max_guidance=DEFAULT_MAX_GUIDANCE
                ).compile()
                np.asarray(programs["guided"](self.params, obs, rng, prefix, weights))
            self._compiled[size] = programs
        self.compiled_batch_sizes = tuple(sorted(self._compiled))

    def _run(
        self,
        kind: str,
        obs: dict,
        rng,
        extras: tuple = (),
        max_guidance: float = DEFAULT_MAX_GUIDANCE,
    ) -> np.ndarray:
        """Runs the `kind` ("plain" or "guided") sampler on `obs` and the batched `extras`
        (the guided sampler's prefix [B, H, A] and weights [B, H]): on an ahead-of-time
        program when one fits (padding / splitting the batch), else on the jitted one."""
        aot = (
            self._compiled
            and set(obs) == set(self.model_observation_spec)
            and max_guidance == DEFAULT_MAX_GUIDANCE
            and all(kind in programs for programs in self._compiled.values())
        )
        if not aot:
            if kind == "plain":
                return np.asarray(self._sample(self.params, obs, rng))
            return np.asarray(
                self._sample_rtc(self.params, obs, rng, *extras, max_guidance=max_guidance)
            )
        batch = obs[schema.OBS_STATE].shape[0]
        largest = self.compiled_batch_sizes[-1]
        if batch > largest:  # split into pieces that each have a program
            pieces = [
                self._run(
                    kind,
                    {k: v[i : i + largest] for k, v in obs.items()},
                    jax.random.fold_in(rng, i),
                    tuple(x[i : i + largest] for x in extras),
                )
                for i in range(0, batch, largest)
            ]
            return np.concatenate(pieces)
        size = next(b for b in self.compiled_batch_sizes if b >= batch)
        obs, extras = _pad_batch(obs, size), tuple(_pad_batch(x, size) for x in extras)
        out = self._compiled[size][kind](self.params, obs, rng, *extras)
        return np.asarray(out)[:batch]

    def prepare_observation(self, observation: dict) -> dict:
        """Raw batched observation -> the model-ready arrays of `model_observation_spec`
        (prompt tokenized, pad mask defaulted, dtypes fixed); normalization happens in jit.

        Raises:
          KeyError: a key of `observation_spec` is missing (the message lists them all).
          ValueError: an array's shape is not [B, *spec shape] with one B for all keys.
        """
        missing = [k for k in self.observation_spec if k not in observation]
        if missing:
            raise KeyError(
                f"observation is missing {missing}; expected {sorted(self.observation_spec)}"
            )
        observation = self._prepare_observation(_to_model_layout(observation, self._robot))
        state = np.asarray(observation[schema.OBS_STATE], np.float32)
        if state.ndim != 3:
            raise ValueError(
                f"observation[{schema.OBS_STATE!r}] has shape {state.shape}; expected "
                f"[B, T, S] = [B, *{self.model_observation_spec[schema.OBS_STATE][0]}]"
            )
        obs = {}
        for key, (shape, dtype) in self.model_observation_spec.items():
            if key == schema.OBS_PAD_MASK and key not in observation:
                obs[key] = np.ones(state.shape[:2], bool)
            else:
                obs[key] = np.asarray(observation[key], dtype)
            if obs[key].shape != (state.shape[0], *shape):
                raise ValueError(
                    f"observation[{key!r}] has shape {obs[key].shape}; expected "
                    f"[B, *{tuple(shape)}] with B = {state.shape[0]} (the batch of "
                    f"{schema.OBS_STATE!r})"
                )
        for key, value in observation.items():  # optional camera-presence masks
            if key.startswith(schema.IMAGE_MASK_PREFIX):
                obs[key] = np.asarray(value, bool)
        return obs


@functools.partial(jax.jit, static_argnums=1)
def _cast_float_params(params, dtype):
    """Every floating leaf cast to `dtype` (one compiled program for the whole tree)."""
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params
    )


def _robot_of(norm_stats: dict, dataset: str | None):
    """(dataset name or None, its stats, how its robot maps to the model: {"state_pad":
    int, "cameras": [slot] or None} or None) for checkpoint stats with per-dataset entries."""
    if not normalize.dataset_names(norm_stats):
        if dataset is not None:
            raise ValueError(
                f"dataset={dataset!r}: this checkpoint was trained on one dataset layout "
                "and has no per-dataset stats; leave dataset unset"
            )
        return None, norm_stats, None
    own = normalize.dataset_stats(norm_stats, dataset)
    name = dataset or normalize.dataset_names(norm_stats)[0]
    model_state_dim = normalize.feature_dims(norm_stats)[0]
    robot = {
        "state_pad": model_state_dim - normalize.feature_dims(own)[0],
        "cameras": own.get(normalize.CAMERAS),
    }
    return name, own, robot


def _robot_spec(client_spec: dict, state_dim: int, robot: dict | None) -> dict:
    """The client spec of one robot of a multi-robot model: its own state dim, only the
    cameras it has."""
    if robot is None:
        return client_spec
    out = {}
    for key, (shape, dtype) in client_spec.items():
        if key == schema.OBS_STATE:
            shape = (*shape[:-1], state_dim)
        elif key.startswith(schema.OBS_IMAGE_PREFIX) and robot["cameras"] is not None:
            if key.removeprefix(schema.OBS_IMAGE_PREFIX) not in robot["cameras"]:
                continue
        out[key] = (shape, dtype)
    return out


def _to_model_layout(observation: dict, robot: dict | None) -> dict:
    """One robot's observation -> the model's: state zero-padded to the model's dims (as in
    training), cameras the robot lacks black with `image_mask/<camera>` False."""
    if robot is None:
        return observation
    out = dict(observation)
    state = np.asarray(out[schema.OBS_STATE], np.float32)
    if robot["state_pad"]:
        pad = [(0, 0)] * (state.ndim - 1) + [(0, robot["state_pad"])]
        out[schema.OBS_STATE] = np.pad(state, pad)
    for key, shape in robot.get("missing", {}).items():
        out[key] = np.zeros((state.shape[0], *shape), np.uint8)
        out[schema.image_mask_key(key.removeprefix(schema.OBS_IMAGE_PREFIX))] = np.zeros(
            state.shape[0], bool
        )
    return out


def _as_key(rng) -> jax.Array:
    """A jax PRNG key from a key or an int seed."""
    if isinstance(rng, int | np.integer):
        return jax.random.key(int(rng))
    return rng


def _pad_batch(tree, size: int):
    """Every array of `tree` padded along axis 0 to `size` by repeating its last row."""

    def pad(x):
        x = np.asarray(x)
        return np.concatenate([x, np.repeat(x[-1:], size - len(x), axis=0)]) if size > len(x) else x

    return jax.tree.map(pad, tree)


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
    """`_sample_raw` with the objective's guided (RTC) sampler: the raw prefix [B, H, A] is
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

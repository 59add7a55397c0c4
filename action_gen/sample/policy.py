"""A trained policy: raw observation (or a robot's own dict) in, raw action chunk out."""

import functools
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from action_gen import compat, models, objectives
from action_gen import run as run_lib
from action_gen.data import normalize, robots, schema, spec, transforms

# β of the guided sampler's ahead-of-time programs (the RTC paper's value).
DEFAULT_MAX_GUIDANCE = 5.0


class Policy:
    """A trained policy: the run's transform pipeline around one compiled sampler.

    observation (our schema, or a robot's own dict: `infer`) → the pipeline's input stages
    (robot conventions, delta actions, normalize, prompt, tokenize, pad; data/transforms.py,
    the same pipeline the training stream runs) → ONE jitted program (the objective's
    sampler, a `lax.scan`, with the observation-only work such as π0's prefix cache done
    once per chunk) → the output stages (unpad, unnormalize, absolute actions, robot).
    The host stages are a few numpy operations per call.

    Attributes:
      config: the run's ConfigDict (as stored in the checkpoint).
      params: the parameters sampled with (EMA weights by default).
      norm_stats: normalization statistics of the training data.
      transforms: the run's `transforms.TransformPipeline`.
      robot: the robot adapter requests come in (data/robots.py), or None for our schema.
      num_sample_steps: denoising / integration steps per chunk.
      observation_spec: what a caller sends in our schema, per unbatched observation: key
        -> (shape, dtype); `observation/state` (T, S) float32, images (T, h, w, 3) uint8, and
        `prompt` ((), "string") for language-conditioned policies. `obs_pad_mask` (T,) bool is
        optional (default: all real).
      action_shape: (H, A) of the returned chunks (A: the robot's / dataset's action dim).
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
        # `model.dtype`: a field of the models that have one (the model section is open).
        model_dtype = config.model.dtype if "dtype" in config.model else None
        self.param_dtype = param_dtype or model_dtype or None
        if self.param_dtype is not None:
            self.params = _cast_float_params(params, jnp.dtype(self.param_dtype))
        else:
            self.params = params
        self.norm_stats = norm_stats
        # A run over several datasets (robots) stored each one's stats: this policy serves
        # `dataset`'s, with its own state / action dims and cameras (normalize.dataset_stats).
        self.dataset, own_stats, dataset_cameras = _dataset_of(norm_stats, dataset)
        self.transforms = transforms.create_pipeline(config, norm_stats, dataset=self.dataset)
        self.robot = self.transforms.robot
        self.state_dim = (
            self.robot.state_dim if self.robot else normalize.feature_dims(own_stats)[0]
        )
        self.action_dim = self.transforms.data_action_dim
        self.model_action_dim = self.transforms.model_action_dim
        self.obs_horizon = int(config.data.obs_horizon)
        self.action_horizon = int(config.data.action_horizon)
        self.action_shape = (self.action_horizon, self.action_dim)
        self.num_sample_steps = int(num_sample_steps or config.objective.num_sample_steps)
        self.model_observation_spec = spec.observation_spec(
            config.data, self.transforms.model_state_dim
        )
        # Camera slots this dataset's robot lacks (a multi-robot run in our schema): black
        # with image_mask False, as in training. A robot adapter fills its own.
        self._missing_cameras = {
            key: shape
            for key, (shape, _) in self.model_observation_spec.items()
            if key.startswith(schema.OBS_IMAGE_PREFIX)
            and self.robot is None
            and dataset_cameras is not None
            and key.removeprefix(schema.OBS_IMAGE_PREFIX) not in dataset_cameras
        }
        self.observation_spec = _client_spec(
            self.model_observation_spec, self.state_dim, self._missing_cameras
        )
        self.model = models.create_model(config.model)
        self.objective = objectives.create_objective(
            config.objective, (self.action_horizon, self.model_action_dim)
        )
        # The split apply function: observation-only work (π0's prefix KV cache) runs once
        # per chunk, before the sampler's scan, on every path below.
        apply_fn = models.make_apply_fn(self.model)
        common = dict(apply_fn=apply_fn, num_steps=self.num_sample_steps)
        self._sample = jax.jit(
            functools.partial(_sample_model, sample_fn=self.objective.sample, **common)
        )
        self._sample_noise = None
        if self.objective.sample_from_noise is not None:
            self._sample_noise = jax.jit(
                functools.partial(
                    _sample_model_from_noise, noise_fn=self.objective.sample_from_noise, **common
                )
            )
        # Real-time chunking inpaints with the objective's guided sampler, where it has one.
        self.supports_rtc = self.objective.supports_guided_sampling
        self._sample_rtc = None
        if self.supports_rtc:
            self._sample_rtc = jax.jit(
                functools.partial(
                    _sample_model_guided, guided_fn=self.objective.sample_guided, **common
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
            (`compat.fixed_for_resume`) must equal the stored value, else a
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
        run_dir = run_lib.Run.open(path, role="policy")
        stored_config, norm_stats = run_dir.metadata(step)
        if config is None:
            config = ml_collections.ConfigDict(stored_config)
        else:
            compat.check_resume(
                stored_config,
                compat.config_to_json_dict(config),
                run_dir.directory,
                "Sample it with the checkpoint's values of these (only sampling settings "
                "may change), or train a run with the new ones.",
            )
            config = ml_collections.ConfigDict(config.to_dict())
        if clip_sample is not None:
            if "clip_sample" not in config.objective:
                raise ValueError(
                    f"clip_sample={clip_sample}: the {config.objective.name!r} objective of "
                    f"{run_dir.directory} has no clip_sample setting"
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
        abstract_params = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract_params
        )
        params = run_dir.restore_model_params(abstract_params, use_ema=use_ema, step=step)
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

    # -- robot requests -------------------------------------------------------------------

    @property
    def reads_language(self) -> bool:
        return self.transforms.tokenizer is not None

    def observation_from_request(self, request) -> dict:
        """One request of this policy's robot (its client's own dict, nested maps allowed;
        data/robots.py) → one unbatched observation in our schema (state [T, S], images
        [T, h, w, 3] resized as openpi's server does, camera masks, `prompt`), the single
        frame repeated over the T of a history model with `obs_pad_mask` marking the copies.

        Raises:
          robots.RobotInputError naming the key that is missing or malformed (no robot:
          a ValueError; validate our schema's requests with `serve.protocol`).
        """
        if self.robot is None:
            raise ValueError(
                "this policy takes observations in our schema (observation_spec); it was not "
                "trained or imported for a robot's own dict (config.robot)"
            )
        sizes = {
            key.removeprefix(schema.OBS_IMAGE_PREFIX): shape[1:3]
            for key, (shape, _) in self.model_observation_spec.items()
            if key.startswith(schema.OBS_IMAGE_PREFIX)
        }
        obs = self.robot.from_client(request, sizes)
        if self.reads_language:
            prompt = obs.get(schema.PROMPT, "")
            if not str(prompt).strip() and not self.transforms.default_prompt:
                raise robots.RobotInputError(
                    f"{self.robot.name} request has no {robots.PROMPT_KEY!r} and the policy has "
                    "no default prompt (import with --default_prompt, or set "
                    "config.robot.default_prompt)"
                )
            obs[schema.PROMPT] = prompt
        if self.obs_horizon > 1:
            repeat = self.obs_horizon
            for key in list(obs):
                if key == schema.OBS_STATE or key.startswith(schema.OBS_IMAGE_PREFIX):
                    obs[key] = np.repeat(obs[key], repeat, axis=0)
            obs[schema.OBS_PAD_MASK] = np.arange(repeat) == repeat - 1
        return obs

    def infer(self, obs: dict, *, noise: np.ndarray | None = None, rng=None) -> dict:
        """openpi's `Policy.infer`: one unbatched observation in, one chunk out.

        Args:
          obs: the robot client's dict (a policy with `config.robot`: e.g. LIBERO's
            `observation/image`, `observation/wrist_image`, `observation/state`, `prompt`;
            ALOHA's `images` {cam_high, cam_left_wrist, cam_right_wrist} CHW, `state`), or
            one observation in our schema (`observation_spec`, no batch dim).
          noise: [H, A_model] (openpi: [H, 32]) initial noise: the same noise gives the same
            actions. None: drawn from `rng`.
          rng: a jax PRNG key or an int seed (default 0; ignored given `noise` by
            deterministic samplers).
        Returns:
          {"actions": [H, A] float32 in the robot's units and width, "policy_timing":
          {"infer_ms": ...}}.
        """
        start = time.perf_counter()
        if self.robot is not None:
            observation = self.observation_from_request(obs)
        else:
            observation = dict(obs)
        batched = {k: _batch_of_one(v) for k, v in observation.items()}
        key = _as_key(0 if rng is None else rng)
        if noise is None:
            actions = self.sample_actions(batched, key)
        else:
            actions = self.sample_actions_from_noise(batched, key, np.asarray(noise)[None])
        return {
            "actions": actions[0],
            "policy_timing": {"infer_ms": (time.perf_counter() - start) * 1e3},
        }

    # -- batched sampling -----------------------------------------------------------------

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
        obs, context = self._prepare(observation)
        return self.transforms.outputs(self._run("plain", obs, _as_key(rng)), context)

    def sample_actions_from_noise(self, observation: dict, rng, noise: np.ndarray) -> np.ndarray:
        """`sample_actions` from given initial noise [B, H, A_model] (the model's padded
        action dim; openpi's `sample_actions(..., noise=)`): deterministic for deterministic
        samplers (`rng` only feeds stochastic ones)."""
        if self._sample_noise is None:
            raise ValueError(
                f"the {self.objective.name!r} objective has no initial noise to give "
                "(sample_from_noise)"
            )
        obs, context = self._prepare(observation)
        batch = obs[schema.OBS_STATE].shape[0]
        noise = np.asarray(noise, np.float32)
        want = (batch, self.action_horizon, self.model_action_dim)
        if noise.shape != want:
            raise ValueError(f"noise has shape {noise.shape}; expected [B, H, A_model] = {want}")
        out = self._sample_noise(self.params, obs, _as_key(rng), noise)
        return self.transforms.outputs(np.asarray(out), context)

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
        prefix and weights are built. The prefix goes through the same input stages as the
        training targets (robot convention, delta actions, normalize, pad).

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
        batch = np.asarray(observation[schema.OBS_STATE]).shape[0]
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
        obs, context = self._prepare(observation, actions=prefix)
        target = obs.pop(schema.ACTIONS)
        obs.pop(schema.ACTION_DIM_MASK, None)
        out = self._run("guided", obs, _as_key(rng), (target, weights), max_guidance)
        return self.transforms.outputs(out, context)

    def sample_prepared(self, obs: dict, rng) -> np.ndarray:
        """The compiled program alone on an observation already through
        `prepare_observation` (benchmarks): the model's normalized, padded chunk
        [B, H, A_model] (no output stages)."""
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
            obs = self._example_model_observation(size)
            rng = jax.random.key(0)
            programs = {"plain": self._sample.lower(self.params, obs, rng).compile()}
            np.asarray(programs["plain"](self.params, obs, rng))  # warm-up: allocations
            if self.supports_rtc and guided:
                prefix = np.zeros((size, self.action_horizon, self.model_action_dim), np.float32)
                weights = np.zeros((size, self.action_horizon), np.float32)
                programs["guided"] = self._sample_rtc.lower(
                    self.params, obs, rng, prefix, weights, max_guidance=DEFAULT_MAX_GUIDANCE
                ).compile()
                np.asarray(programs["guided"](self.params, obs, rng, prefix, weights))
            self._compiled[size] = programs
        self.compiled_batch_sizes = tuple(sorted(self._compiled))

    def _example_model_observation(self, size: int) -> dict:
        """The model-ready observation keys of a real call (camera masks included where the
        robot or dataset adds them), all-valid, batch `size`."""
        obs = spec.example_observation(self.model_observation_spec, size)
        for key in self._model_mask_keys():
            obs[key] = np.ones((size,), bool)
        return obs

    def _model_mask_keys(self) -> list[str]:
        """`image_mask/<slot>` keys every prepared observation carries."""
        slots = [
            k.removeprefix(schema.OBS_IMAGE_PREFIX)
            for k in self.model_observation_spec
            if k.startswith(schema.OBS_IMAGE_PREFIX)
        ]
        if self.robot is not None:
            return [schema.image_mask_key(s) for s in slots]
        return [
            schema.image_mask_key(k.removeprefix(schema.OBS_IMAGE_PREFIX))
            for k in self._missing_cameras
        ]

    def _run(
        self,
        kind: str,
        obs: dict,
        rng,
        extras: tuple = (),
        max_guidance: float = DEFAULT_MAX_GUIDANCE,
    ) -> np.ndarray:
        """Runs the `kind` ("plain" or "guided") sampler on `obs` and the batched `extras`
        (the guided sampler's normalized prefix [B, H, A_model] and weights [B, H]): on an
        ahead-of-time program when one fits (padding / splitting the batch), else on the
        jitted one. Returns the model's normalized chunk [B, H, A_model]."""
        aot = (
            self._compiled
            and set(obs) == set(self.model_observation_spec) | set(self._model_mask_keys())
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
        """Raw batched observation (our schema) -> the model-ready arrays of
        `model_observation_spec`: the pipeline's input stages (normalized state, tokens,
        padding), pad mask defaulted, dtypes fixed.

        Raises:
          KeyError: a key of `observation_spec` is missing (the message lists them all).
          ValueError: an array's shape is not [B, *spec shape] with one B for all keys.
        """
        return self._prepare(observation)[0]

    def _prepare(self, observation: dict, actions: np.ndarray | None = None):
        """(model-ready observation, the output stages' context) of a raw batch."""
        expected = dict(self.observation_spec)
        if self.robot is not None or self.transforms.default_prompt:
            expected.pop(schema.PROMPT, None)  # the default prompt fills it
        missing = [k for k in expected if k not in observation]
        if missing:
            raise KeyError(
                f"observation is missing {missing}; expected {sorted(self.observation_spec)}"
            )
        state = np.asarray(observation[schema.OBS_STATE])
        want = tuple(self.observation_spec[schema.OBS_STATE][0])
        if state.ndim != 3 or state.shape[1:] != want:
            raise ValueError(
                f"observation[{schema.OBS_STATE!r}] has shape {state.shape}; expected "
                f"[B, T, S] = [B, *{want}]"
            )
        batch = dict(observation)
        for key, shape in self._missing_cameras.items():  # slots this dataset lacks
            batch[key] = np.zeros((state.shape[0], *shape), np.uint8)
            batch[schema.image_mask_key(key.removeprefix(schema.OBS_IMAGE_PREFIX))] = np.zeros(
                state.shape[0], bool
            )
        if actions is not None:
            batch[schema.ACTIONS] = actions
        prepared, context = self.transforms.inputs(batch)
        obs = {}
        for key, (shape, dtype) in self.model_observation_spec.items():
            if key == schema.OBS_PAD_MASK and key not in prepared:
                obs[key] = np.ones(state.shape[:2], bool)
            else:
                obs[key] = np.asarray(prepared[key], dtype)
            if obs[key].shape != (state.shape[0], *shape):
                raise ValueError(
                    f"observation[{key!r}] has shape {obs[key].shape}; expected "
                    f"[B, *{tuple(shape)}] with B = {state.shape[0]} (the batch of "
                    f"{schema.OBS_STATE!r})"
                )
        for key, value in prepared.items():  # camera-presence masks
            if key.startswith(schema.IMAGE_MASK_PREFIX):
                obs[key] = np.asarray(value, bool).reshape(state.shape[0])
        if actions is not None:
            obs[schema.ACTIONS] = prepared[schema.ACTIONS]
            if schema.ACTION_DIM_MASK in prepared:
                obs[schema.ACTION_DIM_MASK] = prepared[schema.ACTION_DIM_MASK]
        return obs, context


@functools.partial(jax.jit, static_argnums=1)
def _cast_float_params(params, dtype):
    """Every floating leaf cast to `dtype` (one compiled program for the whole tree)."""
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params
    )


def _dataset_of(norm_stats: dict, dataset: str | None):
    """(dataset name or None, its stats, the camera slots it has or None for all) for
    checkpoint stats with per-dataset entries (our own layout: (None, stats, None))."""
    if not normalize.dataset_names(norm_stats):
        if dataset is not None:
            raise ValueError(
                f"dataset={dataset!r}: this checkpoint was trained on one dataset layout "
                "and has no per-dataset stats; leave dataset unset"
            )
        return None, norm_stats, None
    own = normalize.dataset_stats(norm_stats, dataset)
    name = dataset or normalize.dataset_names(norm_stats)[0]
    return name, own, own.get(normalize.CAMERAS)


def _client_spec(model_spec: dict, state_dim: int, missing_cameras) -> dict:
    """The spec a caller fills in our schema: the model's, with the raw `prompt` string in
    place of its tokens, the pad mask optional, this robot's own state dim and only the
    cameras it has."""
    client = {}
    for key, (shape, dtype) in model_spec.items():
        if key in (schema.PROMPT_TOKENS, schema.PROMPT_MASK, schema.OBS_PAD_MASK):
            continue
        if key in missing_cameras:
            continue
        if key == schema.OBS_STATE:
            shape = (*shape[:-1], state_dim)
        client[key] = (shape, dtype)
    if schema.PROMPT_TOKENS in model_spec:
        client[schema.PROMPT] = ((), "string")
    return client


def _batch_of_one(value):
    """One unbatched value with a leading batch axis of 1 (strings: a [1] object array)."""
    if isinstance(value, str | bytes):
        return np.asarray([value], dtype=object)
    return np.asarray(value)[None]


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


def _sample_model(params, obs: dict, rng: jax.Array, *, apply_fn, sample_fn, num_steps: int):
    """The objective's sampler on a model-ready observation → the normalized chunk
    [B, H, A_model]; traced once per shape."""
    return sample_fn(apply_fn, params, obs, rng, num_steps)


def _sample_model_from_noise(
    params, obs: dict, rng: jax.Array, noise: jax.Array, *, apply_fn, noise_fn, num_steps: int
):
    """`_sample_model` started from `noise` [B, H, A_model]."""
    return noise_fn(apply_fn, params, obs, rng, num_steps, noise)


def _sample_model_guided(
    params,
    obs: dict,
    rng: jax.Array,
    prefix: jax.Array,
    prefix_weights: jax.Array,
    *,
    apply_fn,
    guided_fn,
    num_steps: int,
    max_guidance: float,
):
    """`_sample_model` with the objective's guided (RTC) sampler towards the normalized,
    padded `prefix` [B, H, A_model]."""
    return guided_fn(
        apply_fn, params, obs, rng, num_steps, prefix, prefix_weights, max_guidance=max_guidance
    )

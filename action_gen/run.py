"""A run directory's one owner: where its checkpoints are, what they hold, and the one way
model parameters come out of them.

    <workdir>/checkpoints/<step>/{state, config, norm_stats, data}   (checkpoint.py: the format)

Every caller that reads a run goes through `Run`: the served Policy (sample/policy.py), a
fine-tuning run's `train.init_from` (train/lora.py), a distillation teacher
(train/teacher.py), evaluation and serving (through the Policy); the trainer and the openpi
importer create the directory with `create_manager`. `Run.restore_model_params` restores
the (EMA or raw) parameters of the model the checkpoint's config describes, whatever
fine-tuning layout it was trained under (LoRA adapters merged into their kernels, frozen
leaves as stored, models/lora.py), into the shardings the caller asks for; casting to a
serving dtype is the caller's.
"""

import dataclasses
import functools
import os

import jax
import ml_collections
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec

from action_gen import checkpoint, config_schema
from action_gen.models import lora

CHECKPOINTS = "checkpoints"


def checkpoint_dir(path: str) -> str:
    """The checkpoints/ directory of a run: `path` is the run's workdir or that directory."""
    path = os.path.abspath(path)
    candidate = os.path.join(path, CHECKPOINTS)
    return candidate if os.path.isdir(candidate) else path


def create_manager(workdir: str, *, max_to_keep: int | None = 3, async_save: bool = True):
    """A writable checkpoint manager over `<workdir>/checkpoints` (created if missing)."""
    return checkpoint.create_checkpoint_manager(
        os.path.join(os.path.abspath(workdir), CHECKPOINTS),
        max_to_keep=max_to_keep,
        async_save=async_save,
    )


@dataclasses.dataclass(frozen=True)
class DataState:
    """Where a run's data stream stands, stored with each checkpoint (its `data/` item).

    Attributes:
      batches_consumed: global batches the stream has yielded (= the train step): a
        resume rebuilds the stream at this position (data/pipeline.py, no replay).
      seed: the run's seed, which sets the stream's shuffles.
      dataset_dir: the dataset directory (a list for a mixture); None for an import.
      dataset_fingerprints: `pipeline.dataset_fingerprint` of each dataset (None: unknown),
        compared on resume (`compat.check_dataset_identity`).
      imported_from: the source of an imported checkpoint (tools/openpi_import.py), else None.
    """

    batches_consumed: int
    seed: int
    dataset_dir: str | list[str] | None = None
    dataset_fingerprints: list[str] | None = None
    imported_from: str | None = None

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        if out["imported_from"] is None:
            del out["imported_from"]  # the layout trained runs have always stored
        return out

    @classmethod
    def from_json(cls, stored: dict) -> "DataState":
        """A stored data state; a field an older checkpoint lacks reads as unknown (None)."""
        return cls(
            batches_consumed=int(stored["batches_consumed"]),
            seed=int(stored.get("seed", 0)),
            dataset_dir=stored.get("dataset_dir"),
            dataset_fingerprints=stored.get("dataset_fingerprints"),
            imported_from=stored.get("imported_from"),
        )


@dataclasses.dataclass(frozen=True)
class Run:
    """A trained run's checkpoints, read only. Build with `Run.open(path)`.

    Attributes:
      directory: the checkpoints/ directory.
    """

    directory: str

    @classmethod
    def open(cls, path: str, *, role: str = "run") -> "Run":
        """The run at `path` (a workdir or its checkpoints/ directory).

        Args:
          role: what the caller takes it for ("teacher", "train.init_from", ...): named in
            the error when there is nothing to read.
        Raises:
          FileNotFoundError naming the directory when it has no checkpoint.
        """
        directory = checkpoint_dir(path)
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"{role}: no checkpoint directory at {directory}")
        found = cls(directory)
        if found.latest_step() is None:
            raise FileNotFoundError(f"{role}: no checkpoint in {directory}")
        return found

    @functools.cached_property
    def manager(self):
        return checkpoint.create_checkpoint_manager(self.directory, read_only=True)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def metadata(self, step: int | None = None) -> tuple[dict, dict]:
        """(the stored config as a JSON dict, the norm stats) at `step` (default: latest).
        The config is completed with the schema's defaults for fields added since it was
        stored (config_schema.complete)."""
        stored_config, norm_stats = checkpoint.restore_metadata(self.manager, step)
        return config_schema.complete(stored_config), norm_stats

    def config(self, step: int | None = None) -> ml_collections.ConfigDict:
        return ml_collections.ConfigDict(self.metadata(step)[0])

    def data_state(self, step: int | None = None) -> DataState:
        return DataState.from_json(checkpoint.restore_data_state(self.manager, step))

    def restore_model_params(self, abstract_params, *, use_ema: bool = True, step=None):
        """The model's parameters at `step`, merged from the checkpoint's fine-tuning layout.

        Args:
          abstract_params: the model's parameter tree of `jax.ShapeDtypeStruct` with
            shardings (`models.abstract_checkpoint_params` of the stored config, laid out
            by the caller); LoRA adapters, which have no counterpart there, are restored
            replicated on the same devices.
          use_ema: the EMA of the trainable leaves (frozen leaves have none: raw), else the
            raw parameters.
        Returns:
          The parameter tree of `abstract_params`' structure, adapters folded in (W +
          alpha/r · A·B in float32), each leaf with its stored dtype.
        """
        stored_config, _ = self.metadata(step)
        layout = lora.FinetuneLayout.from_config(stored_config)
        shardings = traverse_util.flatten_dict(jax.tree.map(lambda x: x.sharding, abstract_params))
        first = next(iter(shardings.values()))
        replicated = first  # a single device's sharding serves adapters too
        if isinstance(first, NamedSharding):
            replicated = NamedSharding(first.mesh, PartitionSpec())

        def restore(tree, ema):
            placed = {}
            for path, leaf in traverse_util.flatten_dict(tree).items():
                under_layout = path[0] in (lora.BASE, lora.LORA) and path[1:] in shardings
                model_path = path[1:] if under_layout else path
                sharding = shardings.get(model_path, replicated)
                placed[path] = jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)
            return checkpoint.restore_params(
                self.manager, traverse_util.unflatten_dict(placed), use_ema=ema, step=step
            )

        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abstract_params)
        return lora.restore_model_params(restore, layout, abstract, use_ema=use_ema)

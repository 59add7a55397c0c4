"""Where training metrics go: TensorBoard event files and the console. Process 0 only."""

import logging
import os

import jax


class MetricWriter:
    """Writes scalar metrics to `<logdir>` as TensorBoard events and to the log.

    TensorFlow is imported lazily (it is already a data dependency); only process 0
    writes, so multi-host runs produce one event file.
    """

    def __init__(self, logdir: str):
        self._enabled = jax.process_index() == 0
        self._writer = None
        if self._enabled:
            import tensorflow as tf  # noqa: PLC0415 - keep TF out of import time

            os.makedirs(logdir, exist_ok=True)
            self._tf = tf
            self._writer = tf.summary.create_file_writer(logdir)

    def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
        if not self._enabled:
            return
        with self._writer.as_default(step=step):
            for name, value in scalars.items():
                self._tf.summary.scalar(name, float(value))
        logging.info(
            "step %d: %s", step, ", ".join(f"{k}={float(v):.4g}" for k, v in scalars.items())
        )

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

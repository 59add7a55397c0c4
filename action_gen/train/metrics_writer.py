"""Where training metrics go: TensorBoard event files and the console. Process 0 only."""

import logging
import os
import time

import jax


class MetricWriter:
    """Writes scalar metrics to `<logdir>` as TensorBoard events and to the log.

    TensorFlow's summary writer is imported lazily (it is already a data dependency);
    without TensorFlow (a run with data.loader='memory' on a machine that lacks it) the
    events are written by the `tensorboard` package's own event-file writer as
    simple-value scalars, which TensorBoard reads the same; without either, metrics go
    to the log alone. Only process 0 writes, so multi-host runs produce one event file.
    """

    def __init__(self, logdir: str):
        self._enabled = jax.process_index() == 0
        self._writer = self._events = None
        if not self._enabled:
            return
        os.makedirs(logdir, exist_ok=True)
        try:
            import tensorflow as tf  # noqa: PLC0415 - keep TF out of import time
        except ImportError:
            try:
                from tensorboard.summary.writer import event_file_writer  # noqa: PLC0415
            except ImportError:
                logging.warning("neither TensorFlow nor tensorboard: metrics go to the log only")
                return
            self._events = event_file_writer.EventFileWriter(logdir)
            return
        self._tf = tf
        self._writer = tf.summary.create_file_writer(logdir)

    def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
        if not self._enabled:
            return
        if self._writer is not None:
            with self._writer.as_default(step=step):
                for name, value in scalars.items():
                    self._tf.summary.scalar(name, float(value))
        elif self._events is not None:
            from tensorboard.compat.proto import event_pb2, summary_pb2  # noqa: PLC0415

            values = [
                summary_pb2.Summary.Value(tag=name, simple_value=float(value))
                for name, value in scalars.items()
            ]
            self._events.add_event(
                event_pb2.Event(
                    wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values)
                )
            )
        logging.info(
            "step %d: %s", step, ", ".join(f"{k}={float(v):.4g}" for k, v in scalars.items())
        )

    def flush(self) -> None:
        for writer in (self._writer, self._events):
            if writer is not None:
                writer.flush()

    def close(self) -> None:
        for writer in (self._writer, self._events):
            if writer is not None:
                writer.close()

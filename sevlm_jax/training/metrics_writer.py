"""Training metrics as JSON lines and TensorBoard events (tensorboardX: no TensorFlow needed)."""

import json
import os
import time

from sevlm_jax import errors


class MetricsWriter:
  """Appends {step, split, time, metrics...} lines to <workdir>/metrics.jsonl and to TensorBoard.

  Only one process of a multi-host run writes (enabled=False elsewhere).
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    if enabled:
      tensorboard = errors.optional_import("tensorboardX", "training's TensorBoard log")
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
      self._tb = tensorboard.SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, split: str, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": int(step), "split": split, "time": time.time(), **scalars}) + "\n")
    self._jsonl.flush()
    for name, value in scalars.items():
      self._tb.add_scalar(f"{split}/{name}", value, int(step))
    self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()

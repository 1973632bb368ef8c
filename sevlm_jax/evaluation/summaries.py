"""An evaluation through the run's metric writers (training/metrics_writer.py): its headline
figures and per-emotion accuracy as scalars of the evaluated split, and its confusion matrix as an
image, all at the evaluated checkpoint's step."""

from typing import Any

from sevlm_jax.evaluation import confusion_image
from sevlm_jax.training import metrics_writer

NO_EMOTION = "none"  # the confusion matrix's last column: predictions that name no emotion


def evaluation_scalars(results: dict[str, Any], headline: dict[str, float]) -> dict[str, float]:
  """The headline figures, and per_emotion_accuracy/<emotion> for each emotion with images
  (spaces as _, as TensorBoard's tags have them)."""
  scalars = dict(headline)
  for emotion, row in results["per_emotion_accuracy"].items():
    if row["accuracy"] is not None:  # no image has it as its dominant emotion
      scalars[f"per_emotion_accuracy/{emotion.replace(' ', '_')}"] = row["accuracy"]
  return scalars


def write_to(writer: metrics_writer.MetricsWriter, results: dict[str, Any],
             headline: dict[str, float]) -> None:
  step, split = int(results["checkpoint"]["step"] or 0), results["split"]
  writer.write_scalars(step, split, evaluation_scalars(results, headline))
  emotions = list(results["emotions"])
  image = confusion_image.draw(results["confusion_matrix"], emotions, emotions + [NO_EMOTION])
  writer.write_image(step, f"{split}/confusion_matrix", image)


def write_evaluation(config, workdir, results: dict[str, Any], headline: dict[str, float],
                     writer: metrics_writer.MetricsWriter | None = None) -> None:
  """Through `writer` (training's, still open), else through the config's writers opened for
  this (called on the process that writes, process 0)."""
  if writer is not None:
    write_to(writer, results, headline)
    return
  writer = metrics_writer.open_for_run(config, workdir, enabled=True)
  try:
    write_to(writer, results, headline)
  finally:
    writer.close()

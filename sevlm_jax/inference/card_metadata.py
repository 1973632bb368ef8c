"""The model card's metadata: the YAML front matter of an export's README.md, which the Hugging
Face hub reads (licence, library, task, tags, data sets, base models, evaluation results).

Written with huggingface_hub's own card classes (ModelCardData, EvalResult), so that the hub and
huggingface_hub.ModelCard read back what was written. The licence is the weights' (the code is
Apache-2.0 whatever they are): apache-2.0 for a model made only from the project's demo data and
lexicon and Apache-2.0/MIT weights; `other`, named and linked, when terms beyond those apply to
what the weights were made from (ArtEmis's annotations, a VAD table taken from NRC-VAD). The
card's text (export.py) says what each term covers.
"""

import json
import os
import pathlib

from sevlm_jax.data import formats
from sevlm_jax.weights import io as weights_io

MODEL_NAME = "SEVLM (sevlm_jax)"  # model-index's name for the evaluated model
LIBRARY = "sevlm_jax"
TASK = "image-to-text"
TAGS = ("emotion", "art", "affective-computing", "explainability", "image-captioning",
        "vision-language", "sevlm", "jax", "flax")
ARTEMIS = "ArtEmis"

# Terms the weights carry beyond Apache-2.0, each (license_name, license_link).
ARTEMIS_TERMS = ("artemis-terms", "https://www.artemisdataset.org/")
NRC_VAD_TERMS = ("nrc-vad-terms", "https://saifmohammad.com/WebPages/nrc-vad.html")

# The figures of metrics_<split>.json reported as results (the card's table has the same ones),
# with the hub's metric type of each and a name to show.
TOP_LEVEL_METRICS = {
    "ACC": ("accuracy", "ACC (emotion accuracy, images with a dominant emotion)"),
    "EA": ("emotional_alignment", "EA (emotion of the explanation, by the EA judge)"),
    "EA_judge_heldout_accuracy": ("accuracy", "EA judge's held-out accuracy (the judge's, not the model's)"),
    "Unique": ("unique_ratio", "Unique (distinct explanations)"),
}
CAPTION_METRIC_TYPES = {"BLEU": "bleu", "METEOR": "meteor", "ROUGE": "rouge", "CIDEr": "cider",
                        "SPICE": "spice"}


def front_matter(config, workdir: pathlib.Path | None, manifest: dict) -> str:
  """The card's front matter block ("---\\n...\\n---\\n") for an export of the run in `workdir`
  (None: no run, as for the authors' released model evaluated nowhere)."""
  import huggingface_hub  # pylint: disable=import-outside-toplevel
  results = eval_results(config, workdir)
  data = huggingface_hub.ModelCardData(
      library_name=LIBRARY, pipeline_tag=TASK, tags=list(TAGS),
      datasets=[ARTEMIS] if config.data.source != formats.DEMO else None,  # trained on
      base_model=base_models(config) or None,
      model_name=MODEL_NAME if results else None, eval_results=results or None,
      **licence(config, manifest))
  return f"---\n{data.to_yaml()}\n---\n"


def uses_artemis(config) -> bool:
  """Whether the weights were made from ArtEmis's annotations: trained on them, or started from
  the authors' released SEVLM, which was."""
  return config.data.source != formats.DEMO or bool(config.pretrained.sevlm)


def licence(config, manifest: dict) -> dict:
  """license (and license_name, license_link for `other`) of the exported weights."""
  terms = [ARTEMIS_TERMS] if uses_artemis(config) else []
  vad = manifest["vad_table"]
  if vad["included"] and not vad["demo_lexicon"]:
    terms.append(NRC_VAD_TERMS)
  if not terms:
    return {"license": "apache-2.0"}
  return {"license": "other", "license_name": "-and-".join(name for name, _ in terms),
          "license_link": terms[0][1]}


def base_models(config) -> list[str]:
  """The hub names of the pretrained weights the run started from (local paths are left out):
  CLIP's, and the authors' released SEVLM where it replaced distilgpt2."""
  p = config.pretrained
  named = [p.clip, p.sevlm or p.gpt2]
  return [name for name in named
          if name and weights_io.looks_like_hub_name(name) and not os.path.exists(name)]


def dataset(config) -> tuple[str, str]:
  """(dataset_type, dataset_name) of the run's data for model-index."""
  if config.data.source == formats.DEMO:
    return "sevlm_jax-demo", "sevlm_jax demo data (procedurally generated)"
  version = {"artemis_v1": " v1.0", "artemis_v2": " v2.0 (Combined)"}.get(config.data.source, "")
  return ARTEMIS.lower(), ARTEMIS + version


def eval_results(config, workdir: pathlib.Path | None) -> list:
  """One huggingface_hub.EvalResult per figure of every metrics_<split>.json in the workdir
  (none without one)."""
  import huggingface_hub  # pylint: disable=import-outside-toplevel
  dataset_type, dataset_name = dataset(config)
  results = []
  files = sorted(pathlib.Path(workdir).glob("metrics_*.json")) if workdir is not None else []
  for path in files:
    metrics = json.loads(path.read_text("utf-8"))
    split = metrics.get("split", path.stem[len("metrics_"):])
    for key, metric_type, name, value in _figures(metrics):
      results.append(huggingface_hub.EvalResult(
          task_type=TASK, task_name="Emotion and its explanation for an artwork",
          dataset_type=dataset_type, dataset_name=dataset_name, dataset_split=split,
          metric_type=metric_type, metric_name=name, metric_value=float(value)))
  return results


def _figures(metrics: dict):
  """(key, metric type, name, value) of each figure an evaluation recorded (none for None)."""
  for key, (metric_type, name) in TOP_LEVEL_METRICS.items():
    if _is_number(metrics.get(key)):
      yield key, metric_type, name, metrics[key]
  for key, value in metrics.get("captions", {}).items():
    family = key.split("-")[0]
    if family in CAPTION_METRIC_TYPES and _is_number(value):
      yield key, CAPTION_METRIC_TYPES[family], key, value


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)

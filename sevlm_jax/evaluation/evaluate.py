"""Evaluation of a run: generate for every image of a split, then ACC, EA, Unique and caption metrics.

Writes <workdir>/predictions_<split>.json (one entry per image: generated text, parsed emotion
and explanation, the dominant emotion, the human explanations), <workdir>/metrics_<split>.json
and, for the report's gallery, <workdir>/trace_<split>.npz (the first eval.trace_images images'
attention map per explanation word and VAD per token; see evaluation.trace_files), from the same
decoding pass as their predictions.
"""

import os
import time
from typing import Any, Callable

from absl import logging
import jax
import ml_collections
import numpy as np

from sevlm_jax import checkpoints as ckpt_lib
from sevlm_jax import errors
from sevlm_jax import io_utils
from sevlm_jax import parallel
from sevlm_jax import vocab
from sevlm_jax.config import prepared
from sevlm_jax.data import dominant as dominant_lib
from sevlm_jax.data import pipeline
from sevlm_jax.data import records
from sevlm_jax.evaluation import artemis_judge
from sevlm_jax.evaluation import judge as judge_lib
from sevlm_jax.evaluation import metrics as metrics_lib
from sevlm_jax.evaluation import summaries
from sevlm_jax.evaluation import trace_files
from sevlm_jax.inference import decode as decode_lib
from sevlm_jax.inference import sentences
from sevlm_jax.inference import trace as trace_lib
from sevlm_jax.weights import pretrained


def check_config(config: ml_collections.ConfigDict) -> None:
  """The choice this package owns: validation BLEU-4's tokenizer (train.eval_bleu_tokenizer)."""
  errors.check_choice("train.eval_bleu_tokenizer", config.train.eval_bleu_tokenizer,
                      metrics_lib.BLEU_TOKENIZERS)


def generator(run: prepared.Run, *, trace: bool = False) -> Callable:
  """Jitted (params, images, vad_table, rng) -> {'tokens', ...} with the run's model and eval
  config (decode.make_decode_fn; trace: the traced loop's whole dict); compiles once."""
  options = decode_lib.DecodeOptions.from_config(run.config.eval)
  return decode_lib.make_decode_fn(run.model, options, run.tokenizer, run.output_ids, trace=trace)


def _over_split(run: prepared.Run, params, split: str, config: ml_collections.ConfigDict,
                max_images: int, call_for: Callable[[int], Callable], seed: int, what: str):
  """Yields (call's outputs on the host, batch) for the batches of a split, until max_images
  (> 0) real images are done.

  Runs over every device of config.parallel: each batch of config.eval.batch_size images
  (rounded up to a multiple of the device count) is split over the devices, each process
  reads only its block of it, and every process gets all the outputs. Every process must
  iterate it (it is collective). call_for(done): the call for a batch that follows `done` real
  images, call(params, images, vad_table, rng): a pytree of arrays. seed: the first batch's
  random numbers (top_p sampling's), split for each batch.
  """
  mesh = parallel.make_mesh(config.parallel)
  params = parallel.put(params, parallel.tree_shardings(params, mesh, config.parallel))
  vad_table = parallel.put(run.vad_table, parallel.replicated(mesh))
  part, parts = parallel.process_part(mesh)
  batch_size = parallel.padded_batch_size(config.eval.batch_size, mesh)
  rng = jax.random.PRNGKey(seed)
  total = records.load_meta(run.ready_dir)["splits"][split]["images"]  # no second open of the split
  total = min(total, max_images or total)
  done = 0
  with io_utils.Progress(f"{what} ({split})", total=total, unit="img",
                         enabled=jax.process_index() == 0) as bar:
    for batch in pipeline.eval_batch_parts(run.ready_dir, split, batch_size=batch_size,
                                           part_index=part, part_count=parts):
      rng, step_rng = jax.random.split(rng)
      images = parallel.shard_host_batch({"image": batch["image"]}, mesh)["image"]
      step_rng = parallel.put(step_rng, parallel.replicated(mesh))
      call = call_for(done)
      yield jax.tree.map(parallel.to_host, call(params, images, vad_table, step_rng)), batch
      done += int(batch["valid"].sum())
      bar.update(min(int(batch["valid"].sum()), total - bar.done))
      if max_images and done >= max_images:
        break


def decode_split(run: prepared.Run, params, split: str, config: ml_collections.ConfigDict,
                 max_images: int = 0, trace_images: int = 0, generate: Callable | None = None
                 ) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
  """(predictions, traces) of the images of a split (the first max_images if > 0), on every
  device (see _over_split), in one decoding pass.

  The batches that hold the first trace_images images run the traced loop, which gives their
  predictions (the tokens the default loop chooses from the same random numbers) and their
  traces (image_index -> inference.trace's words + attention maps and tokens + VAD); the other
  batches run the default loop. generate: from generator(run), to reuse its compilation.
  """
  options = decode_lib.DecodeOptions.from_config(config.eval)
  plain = generate or generator(run)
  traced = generator(run, trace=True) if trace_images else None

  def traced_call(*args):  # only what the host needs of the traced loop's outputs
    got = traced(*args)
    return {k: got[k] for k in ("tokens", "lengths", "attention", "vad")}

  call_for = lambda done: traced_call if done < trace_images else plain
  preds, traces = [], {}
  for got, batch in _over_split(run, params, split, config, max_images, call_for, options.seed,
                                "generating"):
    for row in np.flatnonzero(batch["valid"]):
      index = int(batch["image_index"][row])
      preds.append({"image_index": index, **sentences.prediction(
          run.tokenizer, got["tokens"][row], options.explanation_after)})
      if "attention" in got and len(traces) < trace_images:
        traces[index] = trace_lib.trace_entry(
            run.tokenizer, got["tokens"][row], int(got["lengths"][row]), got["attention"][row],
            got["vad"][row], run.tokenizer.because_id, options.explanation_after)
  return (preds[:max_images] if max_images else preds), traces


def predict_split(run: prepared.Run, params, split: str, config: ml_collections.ConfigDict,
                  max_images: int = 0, generate: Callable | None = None) -> list[dict[str, Any]]:
  """Generates emotion + explanation for the images of a split (the first max_images if > 0),
  with the default loop only (decode_split without traces)."""
  return decode_split(run, params, split, config, max_images, generate=generate)[0]


def _references(annotations: list[dict], preds, dominant_rule: str):
  """Each prediction's references, dominant emotion (-1: none) and image id, from the split's
  records.load_annotations (text only: no image is decoded)."""
  refs, dominant, ids = {}, [], []
  rule = dominant_lib.RULES[dominant_rule]
  for p in preds:
    rec = annotations[p["image_index"]]
    refs[p["image_index"]] = list(rec["utterances"])
    dominant.append(rule(rec["histogram"]))  # the stored dominant_* fields are these of it
    ids.append(rec["image_id"])
  return refs, dominant, ids


def ea_dominant_indices(annotations: list[dict], preds, eval_cfg) -> list[int]:
  """Each prediction's dominant emotion for EA (-1: none): eval.ea_dominant's rule over the
  histogram eval.ea_histogram names (dominant.py), from the split's annotations."""
  rule = dominant_lib.RULES[dominant_lib.ea_rule(eval_cfg.ea_dominant, eval_cfg.dominant)]
  return [rule(dominant_lib.ea_histogram(annotations[p["image_index"]], eval_cfg.ea_histogram))
          for p in preds]


def ea_rule_text(eval_cfg) -> str:
  """metrics_<split>.json's name of EA's rule, e.g. 'half over the kept annotations'."""
  rule = dominant_lib.ea_rule(eval_cfg.ea_dominant, eval_cfg.dominant)
  return f"{rule} over {dominant_lib.EA_HISTOGRAMS[eval_cfg.ea_histogram]}"


def validation_scores(preds, ready_dir: str, split: str, dominant_rule: str,
                      bleu_tokenizer: str = "ptb") -> dict[str, float]:
  """The two numbers model selection uses (ACC and BLEU-4; BLEU-4's tokenizer: one of
  metrics.BLEU_TOKENIZERS)."""
  refs, dominant, _ = _references(records.load_annotations(ready_dir, split), preds, dominant_rule)
  acc = metrics_lib.emotion_accuracy([p["emotion"] for p in preds], dominant)
  bleu4 = metrics_lib.quick_bleu4({p["image_index"]: p["explanation"] for p in preds}, refs,
                                  tokenizer=bleu_tokenizer)
  return {"acc": float(acc), "bleu4": float(bleu4)}


def validator(run: prepared.Run, config: ml_collections.ConfigDict) -> Callable:
  """params -> {"acc", "bleu4"} on (the first train.eval_max_images of) the validation split,
  for the training loop's model selection; generation compiles once for all calls."""
  generate = generator(run)
  if config.train.eval_bleu_tokenizer == "ptb":
    metrics_lib.java_executable()  # no Java: one line now, not after train.eval_every steps

  def validate(params) -> dict[str, float]:
    preds = predict_split(run, params, "val", config, max_images=config.train.eval_max_images,
                          generate=generate)
    return validation_scores(preds, run.ready_dir, "val", config.eval.dominant,
                             config.train.eval_bleu_tokenizer)

  return validate


def get_judge(run: prepared.Run, workdir: str) -> judge_lib.Judge | artemis_judge.ArtemisJudge:
  """The EA judge of this data set: ArtEmis's files (judge.source=artemis), else loaded from the
  workdir, or trained on the training utterances."""
  if artemis_judge.source_of(run.config.judge) == "artemis":
    return artemis_judge.ArtemisJudge.from_config(run.config.judge)
  judge_dir = os.path.join(workdir, "judge")
  if io_utils.as_path(judge_dir).is_dir():
    try:
      return judge_lib.Judge.load(judge_dir, encode_fn=run.tokenizer.encode)
    except Exception as e:  # a stale or partial judge is retrained, not trusted
      logging.warning("retraining the EA judge: %s", e)
  train_texts, train_labels = records.split_utterances(run.ready_dir, "train",
                                                       limit=run.config.eval.judge_max_train)
  heldout_texts, heldout_labels = records.split_utterances(run.ready_dir, "val")
  t0 = time.time()
  judge = judge_lib.train_judge(train_texts, train_labels, heldout_texts, heldout_labels,
                                run.tokenizer.encode, run.config.judge)
  logging.info("EA judge trained on %d utterances in %.1fs: held-out accuracy %.4f",
               len(train_texts), time.time() - t0, judge.heldout_accuracy)
  judge.save(judge_dir)
  return judge


def score_predictions(preds, ready_dir: str, split: str, config, judge) -> dict[str, Any]:
  annotations = records.load_annotations(ready_dir, split)  # read once: ACC's and EA's rules
  refs, dominant, image_ids = _references(annotations, preds, config.eval.dominant)
  ea_dominant = ea_dominant_indices(annotations, preds, config.eval)
  pred_emotions = [p["emotion"] for p in preds]
  explanations = [p["explanation"] for p in preds]
  hyp = {p["image_index"]: p["explanation"] for p in preds}
  judge_pred = judge.predict(explanations) if preds else np.zeros((0,), np.int32)
  # An image without a dominant emotion (-1) is never right, not even for a prediction that
  # names no emotion (also -1).
  correct = [d >= 0 and metrics_lib.match_emotion(e) == d for e, d in zip(pred_emotions, dominant)]
  results = {
      "split": split,
      "num_images": len(preds),
      "num_with_dominant": int(sum(d >= 0 for d in dominant)),
      "dominant_rule": config.eval.dominant,
      "ACC": metrics_lib.emotion_accuracy(pred_emotions, dominant),
      "EA": metrics_lib.emotional_alignment(judge_pred, ea_dominant),
      "EA_dominant_rule": ea_rule_text(config.eval),
      "num_with_EA_dominant": int(sum(d >= 0 for d in ea_dominant)),
      "EA_judge_heldout_accuracy": judge.heldout_accuracy,
      "Unique": metrics_lib.unique_ratio(explanations),
      "captions": metrics_lib.caption_scores(hyp, refs, spice=config.eval.spice),
      "captions_filtered": metrics_lib.filtered_caption_scores(hyp, refs, correct),
      "per_emotion_accuracy": metrics_lib.per_emotion_accuracy(pred_emotions, dominant),
      "confusion_matrix": metrics_lib.confusion_matrix(pred_emotions, dominant).tolist(),
      "emotions": list(vocab.EMOTIONS),
  }
  for p, d, image_id, j in zip(preds, dominant, image_ids, judge_pred):
    p["image_id"] = image_id
    p["dominant_emotion"] = vocab.EMOTIONS[d] if d >= 0 else None
    p["judge_emotion"] = vocab.EMOTIONS[int(j)]
    p["references"] = refs[p["image_index"]]
  return results


def describe_judge(judge, workdir: str) -> dict[str, Any]:
  """Which judge read EA, for the metrics file and the report: its source and files."""
  if isinstance(judge, artemis_judge.ArtemisJudge):
    return judge.describe()
  return {"source": "trained", "path": os.path.join(workdir, "judge"),
          "heldout_accuracy": judge.heldout_accuracy}


def judge_name(description: dict[str, Any] | None) -> str:
  """One line naming the judge of a describe_judge dict (older metrics files have none)."""
  description = description or {"source": "trained"}
  if description.get("source") == "artemis":
    return f"ArtEmis's classifier {description.get('classifier')} (vocabulary {description.get('vocabulary')})"
  accuracy = description.get("heldout_accuracy")
  held_out = f", held-out accuracy {accuracy:.4f}" if isinstance(accuracy, (int, float)) else ""
  return f"the judge trained here ({description.get('path', 'the run directory')}{held_out})"


def scalar_metrics(results: dict[str, Any]) -> dict[str, float]:
  """The headline numbers of an evaluation, flat, for logs and TensorBoard."""
  out = {k: float(results[k]) for k in ("ACC", "EA", "Unique") if results.get(k) is not None}
  for k, v in results.get("captions", {}).items():
    if isinstance(v, (int, float)):
      out[k] = float(v)
  return out


def evaluate_run(config: ml_collections.ConfigDict, workdir: str, run: prepared.Run,
                 judge: judge_lib.Judge | None = None, writer=None) -> dict[str, Any]:
  """Evaluates the checkpoint config.eval.checkpoint of a run (set up by run.prepare_run) on
  config.eval.split. writer: training's metric writers, else config.train.writers are opened
  for the evaluation's figures and confusion matrix."""
  # Restored straight into the shardings evaluation uses: with fsdp, no device ever holds a
  # full copy.
  mesh = parallel.make_mesh(config.parallel)
  target = parallel.with_shardings(
      run.abstract_params, parallel.tree_shardings(run.abstract_params, mesh, config.parallel))
  if pretrained.evaluates_imported_weights(config, workdir):  # the authors' released model
    params = parallel.put(pretrained.initial_params(config, run.model.config),
                          jax.tree.map(lambda x: x.sharding, target))
    meta = {"checkpoint": "pretrained.sevlm", "step": 0}
  else:
    params, meta = ckpt_lib.restore_params(workdir, config.eval.checkpoint, abstract_params=target)
  split = config.eval.split
  trace_images = config.eval.trace_images if config.eval.report else 0  # the report's gallery
  t0 = time.time()
  preds, traces = decode_split(run, params, split, config, trace_images=trace_images)
  gen_s = time.time() - t0
  judge = judge or get_judge(run, workdir)
  results = score_predictions(preds, run.ready_dir, split, config, judge)
  results["checkpoint"] = {"kind": meta.get("checkpoint"), "step": meta.get("step")}
  results["generation_seconds"] = gen_s
  results["EA_judge"] = describe_judge(judge, workdir)
  if jax.process_index() != 0:  # every process holds the same results; one writes them
    return results
  if trace_images:
    trace_files.save_traces(os.path.join(workdir, f"trace_{split}.npz"), traces)
  io_utils.write_json_atomic(os.path.join(workdir, f"predictions_{split}.json"), preds)
  io_utils.write_json_atomic(os.path.join(workdir, f"metrics_{split}.json"), results)
  summaries.write_evaluation(config, workdir, results, scalar_metrics(results), writer)
  logging.info("%s: %s", split, scalar_metrics(results))
  logging.info("EA read by %s", judge_name(results["EA_judge"]))
  return results

"""What validation BLEU-4's tokenizer costs per validation (train.eval_bleu_tokenizer).

  python benchmarks/validation_bleu.py --workdir=RUN [--repeats=5]

RUN is a trained run's workdir (e.g. the demo's: python -m sevlm_jax.main
--config=configs/sevlm.py:demo --workdir=RUN). Validation as training runs it: generate for the
validation split (the first train.eval_max_images images), then ACC and BLEU-4. Prints the
generation's time once and, for each tokenizer, the scoring's time per validation (median of
--repeats; the PTB tokenizer starts Java each time, as each validation does) and its BLEU-4.
"""

import os
import statistics
import time

from absl import app
from absl import flags

from sevlm_jax import checkpoints as ckpt_lib
from sevlm_jax import run as run_lib
from sevlm_jax.config import migrate
from sevlm_jax.evaluation import evaluate
from sevlm_jax.evaluation import metrics

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained run's workdir.", required=True)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed scorings per tokenizer.")


def main(argv):
  del argv
  config = migrate.load_json(os.path.join(_WORKDIR.value, "config.json"))
  run = run_lib.prepare_run(config, _WORKDIR.value, write_config=False)
  params, _ = ckpt_lib.restore_params(_WORKDIR.value, "best_acc", abstract_params=run.abstract_params)
  generate = evaluate.generator(run)
  max_images = config.train.eval_max_images
  evaluate.predict_split(run, params, "val", config, max_images, generate=generate)  # compiles
  t0 = time.perf_counter()
  preds = evaluate.predict_split(run, params, "val", config, max_images, generate=generate)
  generation_ms = 1e3 * (time.perf_counter() - t0)
  refs = sum(len(r["utterances"]) for r in evaluate.records.load_annotations(run.ready_dir, "val"))
  print(f"validation split: {len(preds)} images, {refs} references; generation {generation_ms:.0f} ms")
  metrics.java_executable()  # found once per process, as in training
  for tokenizer in metrics.BLEU_TOKENIZERS:
    times, scores = [], None
    for _ in range(_REPEATS.value):
      t0 = time.perf_counter()
      scores = evaluate.validation_scores(preds, run.ready_dir, "val", config.eval.dominant, tokenizer)
      times.append(1e3 * (time.perf_counter() - t0))
    print(f"{tokenizer:6s} scoring {statistics.median(times):7.1f} ms per validation "
          f"(min {min(times):.1f}, max {max(times):.1f}); BLEU-4 {scores['bleu4']:.4f}, ACC {scores['acc']:.4f}")


if __name__ == "__main__":
  app.run(main)

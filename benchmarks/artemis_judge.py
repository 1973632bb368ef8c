"""ArtEmis's judge at its released size: import time, EA speed and agreement with PyTorch.

  python benchmarks/artemis_judge.py [--texts=5000] [--words=14000]

Builds ArtEmis's text-to-emotion classifier with random weights at the released network's sizes
(GloVe 100-d rows for --words words, LSTM 256, MLP [100, 9]; tests/artemis_clf_torch.py), saves
it in PyTorch's legacy format (as ArtEmis's PyTorch 1.3.1 did) with its vocabulary, and prints:
1. the file's size and the seconds to read it without torch (ArtemisJudge.load);
2. seconds for the logits of --texts random texts of 5 to 30 words, in ArtEmis's chunks of 1000:
   this judge (first call, with compilation, and second call) and ArtEmis's PyTorch code;
3. max |ours - PyTorch's| over those logits, and how many argmaxes differ.
Needs torch (the test extra).
"""

import argparse
import os
import pathlib
import sys
import tempfile
import time
import warnings

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
import artemis_clf_torch as reference  # pylint: disable=wrong-import-position

from sevlm_jax.evaluation import artemis_judge  # pylint: disable=wrong-import-position


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--texts", type=int, default=5000)
  parser.add_argument("--words", type=int, default=14000)
  args = parser.parse_args()
  words = [f"w{i}" for i in range(args.words)]
  vocab = reference.make_vocabulary(words)
  model = reference.make_classifier(vocab)
  rng = np.random.default_rng(0)
  texts = [" ".join(rng.choice(words + ["unknownword"], rng.integers(5, 31))) for _ in range(args.texts)]
  with tempfile.TemporaryDirectory() as tmp:
    clf_path, vocab_path = os.path.join(tmp, "best_model.pt"), os.path.join(tmp, "vocabulary.pkl")
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      reference.save_classifier(model, clf_path, legacy=True)
    vocab.save(vocab_path)
    t0 = time.perf_counter()
    judge = artemis_judge.ArtemisJudge.load(clf_path, vocab_path)
    load_s = time.perf_counter() - t0
    print(f"1. classifier file {os.path.getsize(clf_path) / 2**20:.1f} MiB; read without torch in {load_s:.2f} s")
  t0 = time.perf_counter()
  ours = judge.logits(texts)
  first_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  ours = judge.logits(texts)
  second_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  theirs = reference.ea_logits(model, vocab, texts)
  torch_s = time.perf_counter() - t0
  print(f"2. {len(texts)} texts: this judge {first_s:.2f} s (first call, compiling), {second_s:.2f} s "
        f"(second); ArtEmis's PyTorch code {torch_s:.2f} s")
  differ = int(np.sum(ours.argmax(-1) != theirs.argmax(-1)))
  print(f"3. max |ours - PyTorch's| = {np.abs(ours - theirs).max():.2e} (logits up to "
        f"{np.abs(theirs).max():.1f}); argmax differs on {differ} of {len(texts)}")


if __name__ == "__main__":
  main()

"""The token ids the LM softmax ranges over (the top-level `output_vocab` field).

'full' is GPT-2's whole vocabulary (the recipe). 'train_tokens' keeps only the tokens of the
training sequences (plus the prompt, every emotion word, " because" and <eos>): a
closed-vocabulary model whose output layer is a few hundred rows instead of 50k, which is what
makes the demo train in minutes on a CPU. Saved in the workdir so that inference uses the same
vocabulary.
"""

import os

import ml_collections
import numpy as np

from sevlm_jax import errors
from sevlm_jax import io_utils
from sevlm_jax import vocab
from sevlm_jax.data import records

CHOICES = ("full", "train_tokens")
FILE = "output_vocab.npy"


def check_config(config: ml_collections.ConfigDict) -> None:
  errors.check_choice("output_vocab", config.output_vocab, CHOICES)


def output_vocabulary(config: ml_collections.ConfigDict, tokenizer, ready_dir: str, workdir: str
                      ) -> np.ndarray | None:
  """The run's output token ids (sorted int32), or None for the full vocabulary; made from the
  training split once, then read from the workdir."""
  check_config(config)
  if config.output_vocab == "full":
    return None
  path = os.path.join(workdir, FILE)
  if io_utils.as_path(path).exists():
    return io_utils.load_npy(path)
  texts, labels = records.split_utterances(ready_dir, "train")
  ids = set(tokenizer.prompt_ids) | {tokenizer.because_id, vocab.EOS_ID}
  for name in vocab.EMOTIONS:
    ids.update(tokenizer.encode(" " + name))
  for text, label in zip(texts, labels):
    seq = tokenizer.build_sequence(int(label), text, config.data.max_len)
    ids.update(int(t) for t in seq["input_ids"][seq["token_mask"] > 0])
  table = np.asarray(sorted(ids), np.int32)
  io_utils.save_npy_atomic(path, table)
  return table

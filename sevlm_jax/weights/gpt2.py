"""Key map: Hugging Face GPT-2 (GPT2LMHeadModel / GPT2Model safetensors) -> params['decoder'].

HF Conv1D weights are (in, out), already Dense kernels. Keys may carry the
'transformer.' prefix (GPT2LMHeadModel) or not (GPT2Model, hub GPT-2 files).

Tolerated, explicitly:
- cross-attention weights (ln_cross_attn, crossattention.*), absent from plain
  GPT-2 checkpoints: all present, or all absent (then they keep their fresh
  initialisation);
- the word table growing from GPT-2's 50257 rows to the configured vocabulary
  (SEVLM's 4 added tokens), the new rows set to the mean of the existing ones
  (new_token_init="mean": the added tokens start where an average token is, so the
  segment embeddings they double as do not shift every position's input), or drawn
  independently from N(0, 0.02) ("normal": what transformers 4.x's
  resize_token_embeddings did for the public code, GPT-2's initializer_range);
- a position table longer than model.decoder.max_positions (truncated);
- causal-mask buffers (attn.bias, attn.masked_bias) and lm_head.weight, which
  must equal the word table (SEVLM ties them).
"""

import numpy as np

from sevlm_jax import vocab
from sevlm_jax.models.config import DecoderConfig
from sevlm_jax.errors import CheckpointError
from sevlm_jax.weights.mapping import KeyMap, Rule

CROSS_ATTENTION = "cross-attention"

_BUFFERS = ("attn.bias", "attn.masked_bias", "crossattention.bias", "crossattention.masked_bias")


def detect_prefix(tensors: dict[str, np.ndarray]) -> str:
  """'transformer.' for GPT2LMHeadModel files, '' for GPT2Model ones."""
  return "transformer." if any(k.startswith("transformer.") for k in tensors) else ""


NEW_TOKEN_INITS = ("mean", "normal")
NEW_ROW_STD = 0.02  # GPT-2's initializer_range
_NEW_ROWS_TAG = 4  # keeps this random stream apart from others drawn from the run's seed


def grow_word_table(vocab_size: int, new_token_init: str = "mean", seed: int = 0):
  if new_token_init not in NEW_TOKEN_INITS:
    raise ValueError(f"new_token_init must be one of {NEW_TOKEN_INITS}, got {new_token_init!r}")

  def fn(wte: np.ndarray) -> np.ndarray:
    rows = wte.shape[0]
    if rows == vocab_size or rows != vocab.GPT2_VOCAB_SIZE or vocab_size < rows:
      return wte  # a mismatch other than GPT-2 -> SEVLM is reported by the shape check
    shape = (vocab_size - rows, wte.shape[1])
    if new_token_init == "normal":
      new = np.random.default_rng([seed, _NEW_ROWS_TAG]).normal(0.0, NEW_ROW_STD, shape)
    else:
      new = np.broadcast_to(wte.mean(axis=0, keepdims=True), shape)
    return np.concatenate([wte, new.astype(wte.dtype)], axis=0)
  return fn


def truncate_positions(max_positions: int):
  def fn(wpe: np.ndarray) -> np.ndarray:
    return wpe[:max_positions] if wpe.shape[0] > max_positions else wpe
  return fn


def key_map(config: DecoderConfig, prefix: str, new_token_init: str = "mean", seed: int = 0) -> KeyMap:
  p = prefix
  rules = [
      Rule(p + "wte.weight", ("wte", "embedding"),
           grow_word_table(config.vocab_size, new_token_init, seed)),
      Rule(p + "wpe.weight", ("wpe", "embedding"), truncate_positions(config.max_positions)),
  ]
  for i in range(config.layers):
    src, dst = f"{p}h.{i}.", f"h_{i}"
    for name, group in (("ln_1", None), ("ln_2", None), ("ln_cross_attn", CROSS_ATTENTION)):
      rules.append(Rule(src + name + ".weight", (dst, name, "scale"), group=group))
      rules.append(Rule(src + name + ".bias", (dst, name, "bias"), group=group))
    for module, group in (("attn.c_attn", None), ("attn.c_proj", None), ("mlp.c_fc", None),
                          ("mlp.c_proj", None), ("crossattention.q_attn", CROSS_ATTENTION),
                          ("crossattention.c_attn", CROSS_ATTENTION),
                          ("crossattention.c_proj", CROSS_ATTENTION)):
      path = (dst,) + tuple(module.split("."))
      rules.append(Rule(src + module + ".weight", path + ("kernel",), group=group))
      rules.append(Rule(src + module + ".bias", path + ("bias",), group=group))
  rules.append(Rule(p + "ln_f.weight", ("ln_f", "scale")))
  rules.append(Rule(p + "ln_f.bias", ("ln_f", "bias")))

  def ignore(key: str) -> bool:
    return key == "lm_head.weight" or (key.startswith(p + "h.") and key.endswith(_BUFFERS))

  return KeyMap(tuple(rules), ignore,
                hint=f"Expected a GPT-2 checkpoint with {config.layers} layers, width"
                     f" {config.width} (model.decoder.*).")


def check_tied_head(tensors: dict[str, np.ndarray], prefix: str, where: str) -> None:
  head = tensors.get("lm_head.weight")
  if head is None:
    return
  wte = tensors[prefix + "wte.weight"]
  if head.shape != wte.shape or not np.allclose(head, wte, rtol=0, atol=1e-6):
    raise CheckpointError(f"{where}: 'lm_head.weight' differs from '{prefix}wte.weight';"
                          " SEVLM ties the LM head to the word table and cannot import an untied"
                          " head")

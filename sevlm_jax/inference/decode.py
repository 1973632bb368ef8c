"""Batched generation: "<bos> the emotion is" -> "{emotion} because {explanation}<eos>".

`generate` is one jitted lax.while_loop over a KV cache (the image's
cross-attention K/V computed once), exiting as soon as every sequence has
ended; per-token VAD features are a gather from the on-device (vocab x 3)
table. Segment rule: the prompt and the generated emotion word(s) have segment
<emotion>; from the generated " because" token (inclusive) on, <explanation>.

With a bidirectional VAD encoder (model.vad.causal=False, the public code's
behaviour) earlier outputs change as tokens arrive, so a cache cannot be
exact: generation then re-runs the full pass over a fixed-size buffer every
step (still jitted), which is what the public code does.

"""

import dataclasses
import functools
import re
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sevlm_jax import vocab
from sevlm_jax.vocab import EMOTIONS
from sevlm_jax.models.sevlm import SEVLM


# --- token selection -------------------------------------------------------------------


def top_p_filter(logits_BxV: jax.Array, top_p: float | jax.Array) -> jax.Array:
  """Keeps the smallest set of most likely tokens whose mass reaches top_p; the rest -> -inf."""
  sorted_BxV = -jnp.sort(-logits_BxV, axis=-1)
  probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
  before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV  # mass of more likely tokens
  keep_BxV = before_BxV <= top_p  # the most likely token is always kept
  cutoff_Bx1 = jnp.min(jnp.where(keep_BxV, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits_BxV < cutoff_Bx1, -jnp.inf, logits_BxV)


def _select(logits_BxV, method, top_p, temperature, rng, step):
  if method == "greedy":
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  filtered_BxV = top_p_filter(logits_BxV / temperature, top_p)
  return jax.random.categorical(jax.random.fold_in(rng, step), filtered_BxV).astype(jnp.int32)


# --- the jitted loop -----------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=(
    "model", "max_new_tokens", "method", "use_cache", "return_logits", "steps_per_check"))
def _generate(model: SEVLM, params, images_or_patches, vad_table_Vx3, prompt_L, rng, top_p,
              temperature, because_id, stop_S, pad_id, output_ids, *, max_new_tokens, method,
              use_cache, return_logits, steps_per_check):
  """The jitted loop; token ids are traced scalars (stop_S an array) so they cost no recompile.

  Each loop iteration generates steps_per_check tokens before the "all ended?" test.
  Tokens past max_new_tokens (at most steps_per_check - 1) are computed and dropped.
  steps_per_check=0: no test; a loop of max_new_tokens - 1 iterations, whose trip count XLA
  knows, so the GPU runtime never copies a loop condition back to the host and waits for it.
  """
  c = model.config
  variables = {"params": params}
  if images_or_patches.ndim == 4:
    patches_BxPxD = model.apply(variables, images_or_patches, method=SEVLM.encode_image)
  else:
    patches_BxPxD = images_or_patches
  b, lp, n = patches_BxPxD.shape[0], prompt_L.shape[0], max_new_tokens
  per_pass = max(steps_per_check, 1)  # tokens per loop iteration
  n_buf = n + per_pass - 1  # room for the overshoot of the last iteration
  total = lp + n_buf
  emo = jnp.int32(c.emotion_segment_id)
  expl = jnp.int32(c.explanation_segment_id)
  prompt_BxL = jnp.broadcast_to(prompt_L, (b, lp))
  prompt_seg_BxL = jnp.full((b, lp), emo)

  if use_cache:
    cache = model.apply(variables, patches_BxPxD, total, method=SEVLM.init_cache)
    # The LM head's rows in the compute dtype once, not gathered and cast for every token.
    lm_table = model.apply(variables, output_ids, method=SEVLM.lm_head_table)
    out, cache = model.apply(variables, cache, prompt_BxL, prompt_seg_BxL,
                             vad_table_Vx3[prompt_BxL], output_ids, lm_table,
                             method=SEVLM.decode_step)
    first_logits_BxV, model_state = out["logits"][:, -1], cache

    def advance(cache, tok_B, seg_B, i):
      del i
      tok_Bx1 = tok_B[:, None]
      out, cache = model.apply(variables, cache, tok_Bx1, seg_B[:, None], vad_table_Vx3[tok_Bx1],
                               output_ids, lm_table, method=SEVLM.decode_step)
      return out["logits"][:, 0], cache
  else:
    ids_BxT = jnp.full((b, total), pad_id, jnp.int32).at[:, :lp].set(prompt_BxL)
    segs_BxT = jnp.full((b, total), emo)
    # The buffer's unfilled slots are not tokens: even where training attends to padding
    # (model.vad.mask_padding=False, as the public code), they stay masked here, as the public
    # code generates over the tokens so far only.
    model = SEVLM(dataclasses.replace(c, vad=dataclasses.replace(c.vad, mask_padding=True)))

    def run(ids_BxT, segs_BxT, length):
      mask_BxT = jnp.broadcast_to(jnp.arange(total) < length, (b, total)).astype(jnp.int32)
      out = model.apply(variables, patches_BxPxD, ids_BxT, segs_BxT, vad_table_Vx3[ids_BxT],
                        mask_BxT, output_ids=output_ids)
      return jax.lax.dynamic_index_in_dim(out["logits"], length - 1, axis=1, keepdims=False)

    first_logits_BxV, model_state = run(ids_BxT, segs_BxT, lp), (ids_BxT, segs_BxT)

    def advance(state, tok_B, seg_B, i):
      ids_BxT, segs_BxT = state
      pos = lp + i - 1
      ids_BxT = jax.lax.dynamic_update_index_in_dim(ids_BxT, tok_B, pos, axis=1)
      segs_BxT = jax.lax.dynamic_update_index_in_dim(segs_BxT, seg_B, pos, axis=1)
      return run(ids_BxT, segs_BxT, pos + 1), (ids_BxT, segs_BxT)

  v = first_logits_BxV.shape[-1]

  def record(book, logits_BxV, i):
    """Chooses token i of every sequence from its logits and updates the bookkeeping."""
    done_B = book["done"]
    choice_B = _select(logits_BxV, method, top_p, temperature, rng, i)
    if output_ids is not None:  # restricted output vocabulary: logit index -> token id
      choice_B = output_ids[choice_B]
    tok_B = jnp.where(done_B, pad_id, choice_B)
    # Each stop id compared in turn (stop_S is short): elementwise, where isin is a reduction.
    is_stop_B = functools.reduce(jnp.logical_or, [tok_B == stop_S[j] for j in range(len(stop_S))])
    ended_B = ~done_B & is_stop_B
    put = lambda buf, x: jax.lax.dynamic_update_index_in_dim(buf, x, i, axis=1)  # in place
    book = {
        "tokens": put(book["tokens"], tok_B),
        "lengths": jnp.where(ended_B, i, book["lengths"]),
        "done": done_B | ended_B,
        # " because" seen, this token included: the segment of the tokens fed from now on.
        "in_expl": book["in_expl"] | (tok_B == because_id),
        "logits": put(book["logits"], logits_BxV) if return_logits else book["logits"],
    }
    return tok_B, book

  book = {"tokens": jnp.full((b, n_buf), pad_id, jnp.int32),
          "lengths": jnp.full((b,), n, jnp.int32),
          "done": jnp.zeros((b,), bool), "in_expl": jnp.zeros((b,), bool),
          "logits": jnp.zeros((b, n_buf, v) if return_logits else (), jnp.float32)}
  tok_B, book = record(book, first_logits_BxV, 0)

  def cond(carry):
    i, _, _, book = carry
    return (i < n) & ~jnp.all(book["done"])

  def body(carry):
    i, tok_B, model_state, book = carry
    for _ in range(per_pass):
      seg_B = jnp.where(book["in_expl"], expl, emo)
      logits_BxV, model_state = advance(model_state, tok_B, seg_B, i)
      tok_B, book = record(book, logits_BxV, i)
      i = i + 1
    return i, tok_B, model_state, book

  carry = (jnp.int32(1), tok_B, model_state, book)
  if steps_per_check:
    _, _, _, book = jax.lax.while_loop(cond, body, carry)
  else:  # every step, no test: the host enqueues the steps without waiting for the device
    _, _, _, book = jax.lax.fori_loop(1, n, lambda _, c: body(c), carry)
  logits = book["logits"][:, :n] if return_logits else book["logits"]
  return book["tokens"][:, :n], jnp.minimum(book["lengths"], n), logits


def cast_for_decoding(params, model_config):
  """Dense and convolution weights in the compute dtype, cast once per call, not per token.

  Inside the decoding loop every step would otherwise read the float32 kernels and cast
  them again. Only modules that cast their kernel and bias to the compute dtype at use
  (those of the towers and the VAD fusion) are cast, so the result equals casting at each
  use; embeddings and LayerNorms stay float32 (they are used in float32 first), and so do
  the VAD encoder and head.
  """
  dtype = jnp.dtype(model_config.dtype)
  if dtype == jnp.float32:
    return params

  def cast(tree):
    if not isinstance(tree, dict):
      return tree
    if "kernel" in tree:  # a Dense or Conv layer
      return {k: v.astype(dtype) for k, v in tree.items()}
    return {k: cast(v) for k, v in tree.items()}

  return {name: cast(tree) if name in ("vision", "decoder", "vad_fusion") else tree
          for name, tree in params.items()}


def _stop_ids(eos_id: int | Sequence[int]) -> tuple[int, ...]:
  """Stop tokens, repeated up to a multiple of 4 so that their count rarely forces a recompile."""
  ids = (eos_id,) if isinstance(eos_id, (int, np.integer)) else tuple(eos_id)
  if not ids:
    raise ValueError("eos_id must name at least one token")
  ids = tuple(int(i) for i in ids)
  return ids + ids[:1] * (-len(ids) % 4)


def _check_inputs(model, images_or_patches, vad_table_Vx3, prompt_ids, max_new_tokens,
                  steps_per_check=1):
  c = model.config
  prompt = jnp.asarray(prompt_ids, jnp.int32)  # may be traced when generate runs inside a jit
  if prompt.ndim != 1 or prompt.size == 0:
    raise ValueError(f"prompt_ids must be a non-empty 1-D sequence (shared by the batch), got"
                     f" shape {prompt.shape}")
  if np.ndim(images_or_patches) not in (3, 4):
    raise ValueError("expected images BxHxWx3 or patches BxPxD, got shape"
                     f" {np.shape(images_or_patches)}")
  if tuple(np.shape(vad_table_Vx3)) != (c.decoder.vocab_size, 3):
    raise ValueError(f"vad_table must be {c.decoder.vocab_size}x3 (vocab x VAD), got shape"
                     f" {np.shape(vad_table_Vx3)}")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  if steps_per_check < 0:
    raise ValueError(f"steps_per_check must be >= 0, got {steps_per_check}")
  overshoot = max(steps_per_check, 1) - 1
  if prompt.size + max_new_tokens + overshoot > c.decoder.max_positions:
    raise ValueError(f"prompt ({prompt.size}) + max_new_tokens ({max_new_tokens}) + "
                     f"steps_per_check - 1 ({overshoot}) exceeds"
                     f" model.decoder.max_positions={c.decoder.max_positions}")
  return prompt


def generate(model: SEVLM, params, images_or_patches, vad_table_Vx3, prompt_ids, *,
             max_new_tokens: int = 25, because_id: int, eos_id: int | Sequence[int], pad_id: int,
             method: str = "greedy", top_p: float = 0.9, temperature: float = 1.0,
             rng: jax.Array | None = None, return_logits: bool = False, output_ids=None,
             steps_per_check: int = 1):
  """Generates after the shared prompt for a batch of images (or precomputed patches).

  Returns (tokens BxN int32, lengths B int32): tokens[b, :lengths[b]] is the
  generated text, followed by the stop token (any of eos_id) if one came, then
  pad_id. With return_logits, also the BxNxV float32 logits each token was
  chosen from (zeros after the loop ended). output_ids: restrict the choice to these token
  ids (a model trained with a restricted output vocabulary); the logits are then over them.
  steps_per_check: tokens generated between two tests for "every sequence has ended"; the
  result does not depend on it (larger values trade a little wasted work at the end for
  fewer loop tests; on an H200, 4 was 6% slower than 1). 0: no test, always max_new_tokens
  steps, in a loop whose trip count XLA knows: on a GPU the host then never waits for the
  device between tokens (each test copies a flag back and waits for it); the logits of
  steps after every sequence ended are then the model's, not zeros.
  """
  if method not in ("greedy", "top_p"):
    raise ValueError(f"method must be 'greedy' or 'top_p', got {method!r}")
  if method == "top_p" and rng is None:
    raise ValueError("method='top_p' samples: pass rng=jax.random.key(...)")
  prompt_L = _check_inputs(model, images_or_patches, vad_table_Vx3, prompt_ids, max_new_tokens,
                           steps_per_check)
  use_cache = model.config.vad.causal or not model.config.use_vad_embedding
  tokens, lengths, logits = _generate(
      model, params, jnp.asarray(images_or_patches), jnp.asarray(vad_table_Vx3, jnp.float32),
      prompt_L, jax.random.key(0) if rng is None else rng, jnp.float32(top_p),
      jnp.float32(temperature), jnp.int32(because_id), jnp.asarray(_stop_ids(eos_id), jnp.int32),
      jnp.int32(pad_id), None if output_ids is None else jnp.asarray(output_ids, jnp.int32),
      max_new_tokens=int(max_new_tokens), method=method, use_cache=use_cache,
      return_logits=return_logits, steps_per_check=int(steps_per_check))
  return (tokens, lengths, logits) if return_logits else (tokens, lengths)


# What ends a generation (eval.stop_on): <eos> only, or any of the five special tokens, as the
# public code stops (a stray <pad> or segment token then ends the text instead of being skipped).
STOP_IDS = {
    "eos": (vocab.EOS_ID,),
    "any_special": (vocab.EOS_ID, vocab.PAD_ID, vocab.PREFIX_ID, vocab.EMOTION_SEGMENT_ID,
                    vocab.EXPLANATION_SEGMENT_ID),
}


def stop_ids(stop_on: str) -> tuple[int, ...]:
  if stop_on not in STOP_IDS:
    raise ValueError(f"eval.stop_on={stop_on!r}; choose one of {', '.join(STOP_IDS)}")
  return STOP_IDS[stop_on]


def make_generate_fn(model, eval_cfg: ml_collections.ConfigDict, tokenizer, output_ids=None):
  """Jitted (params, images, vad_table, rng) -> generated token ids [B, T]."""
  prompt_ids = jnp.asarray(tokenizer.prompt_ids, jnp.int32)
  output_ids = None if output_ids is None else jnp.asarray(output_ids, jnp.int32)

  # Absent from older runs' configs: their defaults.
  steps_per_check = int(eval_cfg.get("steps_per_check", 1))
  stops = stop_ids(eval_cfg.get("stop_on", "eos"))

  @jax.jit
  def generate_tokens(params, images, vad_table, rng):
    params = cast_for_decoding(params, model.config)  # once, not once per token
    patches = model.apply({"params": params}, images, method=model.encode_image)
    tokens, _ = generate(
        model, params, patches, vad_table, prompt_ids, max_new_tokens=eval_cfg.max_new_tokens,
        because_id=tokenizer.because_id, eos_id=stops, pad_id=vocab.PAD_ID,
        method=eval_cfg.decoding, top_p=eval_cfg.top_p, temperature=eval_cfg.temperature, rng=rng,
        output_ids=output_ids, steps_per_check=steps_per_check)
    return tokens

  return generate_tokens


# --- text -----------------------------------------------------------------------------------

_BECAUSE = re.compile(r"\bbecause\b", re.IGNORECASE)
_PROMPT = re.compile(r"^\s*(<\|endoftext\|>)?\s*the emotion is\b", re.IGNORECASE)


def _clean(text: str) -> str:
  return " ".join(text.split())


EXPLANATION_AFTER = ("first_because", "last_because")


def parse_generation(text: str, explanation_after: str = "first_because") -> tuple[str, str]:
  """(emotion text, explanation text) of a generation.

  The emotion is the text before the first "because" and the explanation the
  text after it (a leading "the emotion is" prompt is dropped); with
  explanation_after="last_because", the text after the last "because", as the
  public code splits (an explanation that itself says "because" loses its
  start). Without "because", a leading emotion name (e.g. "something else") is
  split off as the emotion and the rest is the explanation; otherwise the whole
  text is the emotion and the explanation is empty.
  """
  if explanation_after not in EXPLANATION_AFTER:
    raise ValueError(f"eval.explanation_after={explanation_after!r}; choose one of "
                     f"{', '.join(EXPLANATION_AFTER)}")
  text = _PROMPT.sub("", text, count=1)
  found = list(_BECAUSE.finditer(text))
  if found:
    last = found[-1] if explanation_after == "last_because" else found[0]
    return _clean(text[:found[0].start()]), _clean(text[last.end():])
  words = text.split()
  lowered = [w.lower() for w in words]
  for name in sorted(EMOTIONS, key=len, reverse=True):
    k = len(name.split())
    if lowered[:k] == name.split():
      return " ".join(words[:k]), " ".join(words[k:])
  return _clean(text), ""


def token_text(tokenizer, ids: np.ndarray) -> str:
  """Generated ids up to the first <eos>, as text; the added tokens (among them the other stop
  tokens of eval.stop_on='any_special', and the padding after a stop) are left out."""
  ids = [int(i) for i in ids]
  if vocab.EOS_ID in ids:
    ids = ids[:ids.index(vocab.EOS_ID)]
  return tokenizer.decode([i for i in ids if i < vocab.GPT2_VOCAB_SIZE])


def full_sentence(generated: str) -> str:
  """The prompt and what followed it: 'the emotion is awe because ...'."""
  return (vocab.PROMPT + generated).strip()


def prediction(tokenizer, ids: np.ndarray, explanation_after: str = "first_because") -> dict[str, str]:
  """One generation's emotion, explanation and whole sentence."""
  text = token_text(tokenizer, ids)
  emotion, explanation = parse_generation(text, explanation_after)
  return {"emotion": emotion, "explanation": explanation, "text": full_sentence(text)}

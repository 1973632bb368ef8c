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

Beside greedy (the paper's choice and the default): top_p sampling and beam search
(`_beam_search`, over the same cache, rows reordered by gathering). `generate_details` also
forces each sequence's first tokens (an explanation of a chosen emotion) and, with trace=True,
records each token's cross-attention map and VAD prediction in a separately compiled loop, so
the default loop is the same program as without these features.
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
from sevlm_jax.models.sevlm import SEVLM, mean_cross_attention


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


# --- the model's side of the loop ------------------------------------------------------------


def _decoder(model: SEVLM, variables, patches_BxPxD, vad_table_Vx3, prompt_BxL, pad_id,
             output_ids, total, use_cache, trace):
  """The first step over the prompt and the step for each later token.

  Returns (first, state, advance): first is the step's output for the prompt's last position,
  advance(state, tok_B, seg_B, i) -> (output, state) feeds token i-1 and gives the output that
  chooses token i. An output is {'logits': BxV} and, with trace, also 'vad': Bx3 (the VAD head's
  prediction for the token chosen from these logits) and 'attention': BxP (the cross-attention
  of the position that chooses it, mean over heads and layers). state holds one row per
  sequence, so beam search reorders it by gathering rows.
  """
  c = model.config
  b, lp = prompt_BxL.shape
  emo = jnp.int32(c.emotion_segment_id)

  def traced(out, inter, at):
    """at: a function picking the position of a BxTx... array."""
    if not trace:
      return {"logits": at(out["logits"])}
    return {"logits": at(out["logits"]), "vad": at(out["vad_pred"]),
            "attention": at(mean_cross_attention(inter["intermediates"],
                                                 patches_BxPxD.shape[1]))}

  if use_cache:
    cache = model.apply(variables, patches_BxPxD, total, method=SEVLM.init_cache)
    # The LM head's rows and the VAD fusion's embedding rows in the compute dtype once, not
    # gathered, sliced and cast for every token.
    loop_weights = model.apply(variables, output_ids, method=SEVLM.decoding_weights)

    def step(cache, ids_BxT, segs_BxT):
      args = (variables, cache, ids_BxT, segs_BxT, vad_table_Vx3[ids_BxT], output_ids,
              loop_weights)
      if trace:
        (out, cache), inter = model.apply(*args, method=SEVLM.decode_step,
                                          mutable=["intermediates"])
      else:
        (out, cache), inter = model.apply(*args, method=SEVLM.decode_step), None
      return traced(out, inter, lambda x: x[:, -1]), cache

    first, cache = step(cache, prompt_BxL, jnp.full((b, lp), emo))

    def advance(cache, tok_B, seg_B, i):
      del i
      return step(cache, tok_B[:, None], seg_B[:, None])

    return first, cache, advance

  ids_BxT = jnp.full((b, total), pad_id, jnp.int32).at[:, :lp].set(prompt_BxL)
  segs_BxT = jnp.full((b, total), emo)
  # The buffer's unfilled slots are not tokens: even where training attends to padding
  # (model.vad.mask_padding=False, as the public code), they stay masked here, as the public
  # code generates over the tokens so far only.
  model = SEVLM(dataclasses.replace(c, vad=dataclasses.replace(c.vad, mask_padding=True)))

  def run(ids_BxT, segs_BxT, length):
    mask_BxT = jnp.broadcast_to(jnp.arange(total) < length, (b, total)).astype(jnp.int32)
    args = (variables, patches_BxPxD, ids_BxT, segs_BxT, vad_table_Vx3[ids_BxT], mask_BxT)
    if trace:
      out, inter = model.apply(*args, output_ids=output_ids, mutable=["intermediates"])
    else:
      out, inter = model.apply(*args, output_ids=output_ids), None
    return traced(out, inter, lambda x: jax.lax.dynamic_index_in_dim(x, length - 1, axis=1,
                                                                     keepdims=False))

  def advance(state, tok_B, seg_B, i):
    ids_BxT, segs_BxT = state
    pos = lp + i - 1
    ids_BxT = jax.lax.dynamic_update_index_in_dim(ids_BxT, tok_B, pos, axis=1)
    segs_BxT = jax.lax.dynamic_update_index_in_dim(segs_BxT, seg_B, pos, axis=1)
    return run(ids_BxT, segs_BxT, pos + 1), (ids_BxT, segs_BxT)

  return run(ids_BxT, segs_BxT, lp), (ids_BxT, segs_BxT), advance


def _forced_at(forced_BxF, i):
  """Token i of each row's forced start (-1: free, also past the forced columns)."""
  f = forced_BxF.shape[1]
  col_B = jax.lax.dynamic_index_in_dim(forced_BxF, jnp.minimum(i, f - 1), axis=1, keepdims=False)
  return jnp.where(i < f, col_B, -1)


def _patches(model, variables, images_or_patches):
  if images_or_patches.ndim == 4:
    return model.apply(variables, images_or_patches, method=SEVLM.encode_image)
  return images_or_patches


# --- the jitted loops -----------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=(
    "model", "max_new_tokens", "method", "use_cache", "return_logits", "steps_per_check",
    "trace"))
def _generate(model: SEVLM, params, images_or_patches, vad_table_Vx3, prompt_L, rng, top_p,
              temperature, because_id, stop_S, pad_id, output_ids, forced_BxF=None, *,
              max_new_tokens, method, use_cache, return_logits, steps_per_check, trace=False):
  """The jitted loop; token ids are traced scalars (stop_S an array) so they cost no recompile.

  Each loop iteration generates steps_per_check tokens before the "all ended?" test.
  Tokens past max_new_tokens (at most steps_per_check - 1) are computed and dropped.
  steps_per_check=0: no test; a loop of max_new_tokens - 1 iterations, whose trip count XLA
  knows, so the GPU runtime never copies a loop condition back to the host and waits for it.
  forced_BxF: tokens each row must start with (-1: free), e.g. "{emotion} because".
  trace: also records each token's VAD prediction and cross-attention map, and the first step's
  logits (a separate compile; the default loop has none of it).
  """
  c = model.config
  variables = {"params": params}
  patches_BxPxD = _patches(model, variables, images_or_patches)
  b, lp, n = patches_BxPxD.shape[0], prompt_L.shape[0], max_new_tokens
  per_pass = max(steps_per_check, 1)  # tokens per loop iteration
  n_buf = n + per_pass - 1  # room for the overshoot of the last iteration
  emo = jnp.int32(c.emotion_segment_id)
  expl = jnp.int32(c.explanation_segment_id)
  first, model_state, advance = _decoder(
      model, variables, patches_BxPxD, vad_table_Vx3, jnp.broadcast_to(prompt_L, (b, lp)), pad_id,
      output_ids, lp + n_buf, use_cache, trace)
  v = first["logits"].shape[-1]

  def record(book, out, i):
    """Chooses token i of every sequence from its logits and updates the bookkeeping."""
    logits_BxV = out["logits"]
    done_B = book["done"]
    choice_B = _select(logits_BxV, method, top_p, temperature, rng, i)
    if output_ids is not None:  # restricted output vocabulary: logit index -> token id
      choice_B = output_ids[choice_B]
    if forced_BxF is not None:
      forced_B = _forced_at(forced_BxF, i)
      choice_B = jnp.where(forced_B >= 0, forced_B, choice_B)
    tok_B = jnp.where(done_B, pad_id, choice_B)
    # Each stop id compared in turn (stop_S is short): elementwise, where isin is a reduction.
    is_stop_B = functools.reduce(jnp.logical_or, [tok_B == stop_S[j] for j in range(len(stop_S))])
    ended_B = ~done_B & is_stop_B
    put = lambda buf, x: jax.lax.dynamic_update_index_in_dim(buf, x, i, axis=1)  # in place
    book = {
        **book,
        "tokens": put(book["tokens"], tok_B),
        "lengths": jnp.where(ended_B, i, book["lengths"]),
        "done": done_B | ended_B,
        # " because" seen, this token included: the segment of the tokens fed from now on.
        "in_expl": book["in_expl"] | (tok_B == because_id),
        "logits": put(book["logits"], logits_BxV) if return_logits else book["logits"],
    }
    if trace:
      book["vad"] = put(book["vad"], out["vad"])
      book["attention"] = put(book["attention"], out["attention"])
    return tok_B, book

  book = {"tokens": jnp.full((b, n_buf), pad_id, jnp.int32),
          "lengths": jnp.full((b,), n, jnp.int32),
          "done": jnp.zeros((b,), bool), "in_expl": jnp.zeros((b,), bool),
          "logits": jnp.zeros((b, n_buf, v) if return_logits else (), jnp.float32)}
  if trace:
    book["vad"] = jnp.zeros((b, n_buf, 3), jnp.float32)
    book["attention"] = jnp.zeros((b, n_buf, patches_BxPxD.shape[1]), jnp.float32)
  tok_B, book = record(book, first, 0)

  def cond(carry):
    i, _, _, book = carry
    return (i < n) & ~jnp.all(book["done"])

  def body(carry):
    i, tok_B, model_state, book = carry
    for _ in range(per_pass):
      seg_B = jnp.where(book["in_expl"], expl, emo)
      out, model_state = advance(model_state, tok_B, seg_B, i)
      tok_B, book = record(book, out, i)
      i = i + 1
    return i, tok_B, model_state, book

  carry = (jnp.int32(1), tok_B, model_state, book)
  if steps_per_check:
    _, _, _, book = jax.lax.while_loop(cond, body, carry)
  else:  # every step, no test: the host enqueues the steps without waiting for the device
    _, _, _, book = jax.lax.fori_loop(1, n, lambda _, c: body(c), carry)
  logits = book["logits"][:, :n] if return_logits else book["logits"]
  extras = {}
  if trace:
    extras = {"vad": book["vad"][:, :n], "attention": book["attention"][:, :n],
              "first_logits": first["logits"]}
  return book["tokens"][:, :n], jnp.minimum(book["lengths"], n), logits, extras


def _gather_rows(state, rows_N):
  """The decoder state of the sequences rows_N (the image's cross-attention K/V, the same for
  every beam of an image, are left where they are)."""
  def gather(path, x):
    if any(getattr(k, "key", None) in ("cross_k", "cross_v") for k in path) or x.ndim == 0:
      return x
    return x[rows_N]
  return jax.tree_util.tree_map_with_path(gather, state)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "beam_width",
                                             "use_cache", "trace"))
def _beam_search(model: SEVLM, params, images_or_patches, vad_table_Vx3, prompt_L, length_penalty,
                 because_id, stop_S, pad_id, output_ids, forced_BxF=None, *, max_new_tokens,
                 beam_width, use_cache, trace=False):
  """Beam search over the KV cache: k beams per image, rows b*k .. b*k+k-1 of image b.

  Beams are ranked by the sum of their tokens' log-probabilities while searching; an ended beam
  keeps its sum and is extended only by padding (one extra candidate column per beam). At the
  end each image's beam with the best length-normalised score sum / L**length_penalty wins, L
  counting the generated tokens including the stop token.
  """
  c = model.config
  k, n = beam_width, max_new_tokens
  variables = {"params": params}
  patches_BxPxD = _patches(model, variables, images_or_patches)
  b, lp = patches_BxPxD.shape[0], prompt_L.shape[0]
  nk = b * k
  patches_NxPxD = jnp.repeat(patches_BxPxD, k, axis=0)
  emo = jnp.int32(c.emotion_segment_id)
  expl = jnp.int32(c.explanation_segment_id)
  first, model_state, advance = _decoder(
      model, variables, patches_NxPxD, vad_table_Vx3, jnp.broadcast_to(prompt_L, (nk, lp)),
      pad_id, output_ids, lp + n, use_cache, trace)
  v = first["logits"].shape[-1]
  token_of_V = jnp.arange(v, dtype=jnp.int32) if output_ids is None else output_ids
  forced_NxF = None if forced_BxF is None else jnp.repeat(forced_BxF, k, axis=0)
  beam_rows_Bxk = jnp.arange(nk).reshape(b, k)

  def record(book, out, i):
    logp_NxV = jax.nn.log_softmax(out["logits"].astype(jnp.float32), axis=-1)
    if forced_NxF is not None:
      forced_N = _forced_at(forced_NxF, i)
      logp_NxV = jnp.where((forced_N[:, None] < 0) | (token_of_V[None] == forced_N[:, None]),
                           logp_NxV, -jnp.inf)
    done_N = book["done"]
    cand_NxV = jnp.where(done_N[:, None], -jnp.inf, book["score"][:, None] + logp_NxV)
    stay_Nx1 = jnp.where(done_N, book["score"], -jnp.inf)[:, None]  # an ended beam, padded
    cand_BxkV1 = jnp.concatenate([cand_NxV, stay_Nx1], axis=1).reshape(b, k * (v + 1))
    score_Bxk, flat_Bxk = jax.lax.top_k(cand_BxkV1, k)
    parent_N = beam_rows_Bxk[:, :1] + flat_Bxk // (v + 1)  # the row each winner extends
    parent_N, col_N = parent_N.reshape(nk), (flat_Bxk % (v + 1)).reshape(nk)
    book = jax.tree.map(lambda x: x[parent_N] if x.ndim else x, book)
    done_N = book["done"]
    tok_N = jnp.where(done_N | (col_N == v), pad_id, token_of_V[jnp.minimum(col_N, v - 1)])
    is_stop_N = functools.reduce(jnp.logical_or, [tok_N == stop_S[j] for j in range(len(stop_S))])
    ended_N = ~done_N & is_stop_N
    put = lambda buf, x: jax.lax.dynamic_update_index_in_dim(buf, x, i, axis=1)
    book = {**book,
            "tokens": put(book["tokens"], tok_N),
            "lengths": jnp.where(ended_N, i, book["lengths"]),
            "done": done_N | ended_N,
            "in_expl": book["in_expl"] | (tok_N == because_id),
            "score": score_Bxk.reshape(nk)}
    if trace:
      book["vad"] = put(book["vad"], out["vad"][parent_N])
      book["attention"] = put(book["attention"], out["attention"][parent_N])
    return tok_N, parent_N, book

  # Only the first beam of an image is alive at the start (the others would repeat it).
  book = {"tokens": jnp.full((nk, n), pad_id, jnp.int32),
          "lengths": jnp.full((nk,), n, jnp.int32),
          "done": jnp.zeros((nk,), bool), "in_expl": jnp.zeros((nk,), bool),
          "score": jnp.where(jnp.arange(nk) % k == 0, 0.0, -jnp.inf)}
  if trace:
    book["vad"] = jnp.zeros((nk, n, 3), jnp.float32)
    book["attention"] = jnp.zeros((nk, n, patches_BxPxD.shape[1]), jnp.float32)
  tok_N, parent_N, book = record(book, first, 0)
  model_state = _gather_rows(model_state, parent_N)

  def cond(carry):
    i, _, _, book = carry
    return (i < n) & ~jnp.all(book["done"])

  def body(carry):
    i, tok_N, model_state, book = carry
    seg_N = jnp.where(book["in_expl"], expl, emo)
    out, model_state = advance(model_state, tok_N, seg_N, i)
    tok_N, parent_N, book = record(book, out, i)
    return i + 1, tok_N, _gather_rows(model_state, parent_N), book

  _, _, _, book = jax.lax.while_loop(cond, body, (jnp.int32(1), tok_N, model_state, book))
  lengths_N = jnp.minimum(book["lengths"], n)
  counted_N = lengths_N + book["done"].astype(jnp.int32)  # the stop token's log-prob counts
  normalised_Bxk = (book["score"] / counted_N.astype(jnp.float32) ** length_penalty).reshape(b, k)
  best_B = beam_rows_Bxk[jnp.arange(b), jnp.argmax(normalised_Bxk, axis=1)]
  extras = {"scores": normalised_Bxk.reshape(nk)[best_B]}
  if trace:
    extras.update(vad=book["vad"][best_B], attention=book["attention"][best_B],
                  first_logits=first["logits"][::k])
  return book["tokens"][best_B], lengths_N[best_B], extras


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


METHODS = ("greedy", "top_p", "beam")


def generate(model: SEVLM, params, images_or_patches, vad_table_Vx3, prompt_ids, *,
             max_new_tokens: int = 25, because_id: int, eos_id: int | Sequence[int], pad_id: int,
             method: str = "greedy", top_p: float = 0.9, temperature: float = 1.0,
             rng: jax.Array | None = None, return_logits: bool = False, output_ids=None,
             steps_per_check: int = 1, beam_width: int = 4, length_penalty: float = 1.0):
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
  method: 'greedy' (the paper's), 'top_p' (nucleus sampling at `temperature`, needs rng) or
  'beam' (beam_width beams, length_penalty; see generate_details for its scores).
  """
  if method == "beam" and return_logits:
    raise ValueError("return_logits is not available with method='beam'")
  out = generate_details(
      model, params, images_or_patches, vad_table_Vx3, prompt_ids, max_new_tokens=max_new_tokens,
      because_id=because_id, eos_id=eos_id, pad_id=pad_id, method=method, top_p=top_p,
      temperature=temperature, rng=rng, output_ids=output_ids, steps_per_check=steps_per_check,
      beam_width=beam_width, length_penalty=length_penalty, _return_logits=return_logits)
  if return_logits:
    return out["tokens"], out["lengths"], out["logits"]
  return out["tokens"], out["lengths"]


def generate_details(model: SEVLM, params, images_or_patches, vad_table_Vx3, prompt_ids, *,
                     max_new_tokens: int = 25, because_id: int, eos_id: int | Sequence[int],
                     pad_id: int, method: str = "greedy", top_p: float = 0.9,
                     temperature: float = 1.0, rng: jax.Array | None = None, output_ids=None,
                     steps_per_check: int = 1, beam_width: int = 4, length_penalty: float = 1.0,
                     forced_ids=None, trace: bool = False, _return_logits: bool = False):
  """generate, returning a dict, with two more choices.

  forced_ids: BxF int, the tokens each sequence must start with after the prompt, -1 where it
  is free (rows of different lengths end in -1): e.g. " fear because" for an explanation of a
  chosen emotion. The forced tokens are fed like generated ones (their segments too).
  trace: also returns, per generated token (aligned with tokens), 'vad' BxNx3, the VAD head's
  prediction for that token (made at the position before it), and 'attention' BxNxP, that
  position's cross-attention over the image patches (mean over heads and over all decoder
  layers, see models.sevlm.mean_cross_attention); and 'first_logits' BxV, the logits after the
  prompt. Tracing compiles its own loop, so the default decoding loop does no extra work.

  Returns {'tokens', 'lengths'} (+ 'scores' B for beam search: the winning beam's summed
  log-probability of its tokens, stop token included, over lengths+1 (or N without a stop
  token) ** length_penalty; + the traced arrays; + 'logits' with _return_logits).
  """
  if method not in METHODS:
    raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
  if method == "top_p" and rng is None:
    raise ValueError("method='top_p' samples: pass rng=jax.random.key(...)")
  if method == "beam" and int(beam_width) < 1:
    raise ValueError(f"beam_width must be >= 1, got {beam_width}")
  prompt_L = _check_inputs(model, images_or_patches, vad_table_Vx3, prompt_ids, max_new_tokens,
                           steps_per_check)
  forced = None
  if forced_ids is not None:
    forced = jnp.asarray(forced_ids, jnp.int32)
    batch = np.shape(images_or_patches)[0]
    if forced.ndim != 2 or forced.shape[0] != batch or forced.shape[1] > max_new_tokens:
      raise ValueError(f"forced_ids must be {batch}xF with F <= max_new_tokens={max_new_tokens},"
                       f" got shape {tuple(forced.shape)}")
  use_cache = model.config.vad.causal or not model.config.use_vad_embedding
  common = (model, params, jnp.asarray(images_or_patches),
            jnp.asarray(vad_table_Vx3, jnp.float32), prompt_L)
  ids = (jnp.int32(because_id), jnp.asarray(_stop_ids(eos_id), jnp.int32), jnp.int32(pad_id),
         None if output_ids is None else jnp.asarray(output_ids, jnp.int32), forced)
  if method == "beam":
    tokens, lengths, extras = _beam_search(
        *common, jnp.float32(length_penalty), *ids, max_new_tokens=int(max_new_tokens),
        beam_width=int(beam_width), use_cache=use_cache, trace=bool(trace))
    return {"tokens": tokens, "lengths": lengths, **extras}
  tokens, lengths, logits, extras = _generate(
      *common, jax.random.key(0) if rng is None else rng, jnp.float32(top_p),
      jnp.float32(temperature), *ids, max_new_tokens=int(max_new_tokens), method=method,
      use_cache=use_cache, return_logits=_return_logits, steps_per_check=int(steps_per_check),
      trace=bool(trace))
  out = {"tokens": tokens, "lengths": lengths, **extras}
  if _return_logits:
    out["logits"] = logits
  return out


def decoding_options(eval_cfg: ml_collections.ConfigDict) -> dict:
  """generate's decoding keywords from the eval config (fields absent from older runs' configs
  take their defaults: greedy, beam width 4, length penalty 1)."""
  return {"method": eval_cfg.decoding, "top_p": eval_cfg.top_p,
          "temperature": eval_cfg.temperature, "beam_width": int(eval_cfg.get("beam_width", 4)),
          "length_penalty": float(eval_cfg.get("length_penalty", 1.0)),
          "max_new_tokens": eval_cfg.max_new_tokens}


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
        model, params, patches, vad_table, prompt_ids, because_id=tokenizer.because_id,
        eos_id=stops, pad_id=vocab.PAD_ID, rng=rng, output_ids=output_ids,
        steps_per_check=steps_per_check, **decoding_options(eval_cfg))
    return tokens

  return generate_tokens


def make_details_fn(model, eval_cfg: ml_collections.ConfigDict, tokenizer, output_ids=None,
                    trace: bool = True):
  """Jitted (params, images, vad_table, rng, forced_ids or None) -> generate_details' dict.

  Its own compile: the loop of make_generate_fn is left as it is."""
  prompt_ids = jnp.asarray(tokenizer.prompt_ids, jnp.int32)
  output_ids = None if output_ids is None else jnp.asarray(output_ids, jnp.int32)
  steps_per_check = int(eval_cfg.get("steps_per_check", 1))

  @jax.jit
  def details(params, images, vad_table, rng, forced_ids):
    params = cast_for_decoding(params, model.config)
    patches = model.apply({"params": params}, images, method=model.encode_image)
    return generate_details(
        model, params, patches, vad_table, prompt_ids, because_id=tokenizer.because_id,
        eos_id=stop_ids(eval_cfg.get("stop_on", "eos")), pad_id=vocab.PAD_ID, rng=rng, output_ids=output_ids,
        steps_per_check=steps_per_check, forced_ids=forced_ids, trace=trace,
        **decoding_options(eval_cfg))

  return details


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

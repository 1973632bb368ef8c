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

The methods sit in METHODS: greedy (the paper's choice and the default) and top_p sampling
choose each token in `_generate`'s loop; beam search (`_beam_search`, over the same cache, rows
reordered by gathering) ranks whole beams. Both loops share their bookkeeping (`Book`).
`generate_details` also forces each sequence's first tokens (an explanation of a chosen emotion)
and, with trace=True, records each token's cross-attention map and VAD prediction in a
separately compiled loop, so the default loop is the same program as without these features.

DecodeOptions holds the eval config's decoding fields, checked once; make_decode_fn turns them
into the jitted function that evaluation and the predictor call. The generated text is parsed in
inference/sentences.py.
"""

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sevlm_jax import vocab
from sevlm_jax.errors import ConfigError
from sevlm_jax.inference import sentences
from sevlm_jax.models.sevlm import SEVLM, mean_cross_attention


# --- methods: how tokens are chosen ---------------------------------------------------------


def top_p_filter(logits_BxV: jax.Array, top_p: float | jax.Array) -> jax.Array:
  """Keeps the smallest set of most likely tokens whose mass reaches top_p; the rest -> -inf."""
  sorted_BxV = -jnp.sort(-logits_BxV, axis=-1)
  probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
  before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV  # mass of more likely tokens
  keep_BxV = before_BxV <= top_p  # the most likely token is always kept
  cutoff_Bx1 = jnp.min(jnp.where(keep_BxV, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits_BxV < cutoff_Bx1, -jnp.inf, logits_BxV)


def _greedy(logits_BxV, knobs, rng, i):
  del knobs, rng, i
  return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)


def _top_p(logits_BxV, knobs, rng, i):
  """Nucleus sampling at a temperature; token i draws from rng folded with i."""
  filtered_BxV = top_p_filter(logits_BxV / knobs["temperature"], knobs["top_p"])
  return jax.random.categorical(jax.random.fold_in(rng, i), filtered_BxV).astype(jnp.int32)


class Method(NamedTuple):
  """A decoding method. A new one is an entry in METHODS, its settings as DecodeOptions fields
  (with their _RULES) and keywords of generate / generate_details, and their config defaults."""
  # (logits_BxV, knobs, rng, i) -> int32 B: the logit column each row takes as its token i, in
  # _generate's token-by-token loop. None: beam search, which ranks whole beams in its own loop.
  select: Callable[..., jax.Array] | None
  # The float settings it reads, handed to the loop as traced scalars (no recompile per value).
  knobs: tuple[str, ...] = ()
  samples: bool = False  # draws random numbers: generate needs an rng


METHODS = {
    "greedy": Method(_greedy),
    "top_p": Method(_top_p, knobs=("top_p", "temperature"), samples=True),
    "beam": Method(None, knobs=("length_penalty",)),
}


# --- options: the eval config's decoding fields ---------------------------------------------

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


def _is_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
          and math.isfinite(v))


def _one_of(names) -> tuple[Callable[[Any], bool], str]:
  return (lambda v: isinstance(v, str) and v in names), f"one of {', '.join(names)}"


# Each DecodeOptions field's test, and what it allows (for the error messages).
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "method": _one_of(METHODS),
    "top_p": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "temperature": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "beam_width": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "length_penalty": (_is_number, "a finite number"),
    "max_new_tokens": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "steps_per_check": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "stop_on": _one_of(STOP_IDS),
    "explanation_after": _one_of(sentences.EXPLANATION_AFTER),
    "seed": (_is_int, "an integer"),
}
_CONFIG_NAMES = {"method": "decoding"}  # a field's name in the eval config, where it differs


def _config_names() -> dict[str, str]:
  """DecodeOptions field -> its name in the eval config."""
  return {f.name: _CONFIG_NAMES.get(f.name, f.name) for f in dataclasses.fields(DecodeOptions)}


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
  """How evaluation and the predictor decode: the eval config's decoding fields, checked when
  made (ConfigError naming the field and what it allows). Named as in the config, except
  method (eval.decoding); the defaults are generate's."""
  method: str = "greedy"  # eval.decoding: a name in METHODS
  top_p: float = 0.9  # top_p: the probability mass sampled from
  temperature: float = 1.0  # top_p: what the logits are divided by
  beam_width: int = 4  # beam: beams per image
  length_penalty: float = 1.0  # beam: the winner has the best summed log-prob / length ** this
  max_new_tokens: int = 25  # tokens generated after the prompt
  steps_per_check: int = 1  # tokens between two "has every row ended?" tests; 0: none
  stop_on: str = "eos"  # a name in STOP_IDS: what ends a generation
  explanation_after: str = "first_because"  # where the text's explanation starts (sentences.py)
  seed: int = 0  # the random numbers of sampling

  def __post_init__(self):
    for field, name in _config_names().items():
      value = getattr(self, field)
      if not _RULES[field][0](value):
        raise ConfigError(f"eval.{name}={value!r}; choose {_RULES[field][1]}")

  @classmethod
  def from_config(cls, eval_cfg: ml_collections.ConfigDict) -> "DecodeOptions":
    """From the eval section of a current config (config/migrate.py updates older ones)."""
    names = _config_names()
    missing = [f"eval.{name}" for name in names.values() if name not in eval_cfg]
    if missing:
      raise ConfigError(f"the config lacks {', '.join(missing)} (configs/sevlm.py has defaults)")
    return cls(**{field: eval_cfg[name] for field, name in names.items()})

  def replace(self, **config_fields) -> "DecodeOptions":
    """These options with some changed, named as in the eval config (decoding=, top_p=, ...);
    an unknown name or a bad value -> ConfigError."""
    fields = {name: field for field, name in _config_names().items()}
    unknown = sorted(set(config_fields) - set(fields))
    if unknown:
      raise ConfigError(f"unknown decoding option(s) {unknown}: choose from {list(fields)}")
    for name, value in config_fields.items():  # in the caller's words: keywords, not eval.*
      test, allowed = _RULES[fields[name]]
      if not test(value):
        raise ConfigError(f"{name} must be {allowed}; got {value!r}")
    return dataclasses.replace(self, **{fields[k]: v for k, v in config_fields.items()})

  def generate_kwargs(self) -> dict[str, Any]:
    """generate's keywords for these options (eos_id: the stop tokens of stop_on)."""
    return {"method": self.method, "top_p": self.top_p, "temperature": self.temperature,
            "beam_width": self.beam_width, "length_penalty": self.length_penalty,
            "max_new_tokens": self.max_new_tokens, "steps_per_check": self.steps_per_check,
            "eos_id": stop_ids(self.stop_on)}


def check_config(eval_cfg: ml_collections.ConfigDict) -> None:
  """ConfigError for an eval section whose decoding fields cannot run (eval.decoding, top_p,
  temperature, beam_width, length_penalty, max_new_tokens, steps_per_check, stop_on,
  explanation_after, seed), before any data or compilation work."""
  DecodeOptions.from_config(eval_cfg)


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


# --- the loops' bookkeeping -----------------------------------------------------------------


@flax.struct.dataclass
class Book:
  """What a decoding loop records, one row per sequence (per beam in beam search), carried
  through the loop; an optional field is None when not asked for, so it is not carried."""
  tokens: jax.Array  # RxN int32: the chosen tokens; pad_id after the stop token
  lengths: jax.Array  # R int32: the tokens before the stop token (N while none came)
  done: jax.Array  # R bool: the stop token came
  in_expl: jax.Array  # R bool: " because" came (it included): tokens fed from now on explain
  logits: jax.Array | None = None  # RxNxV float32 (return_logits): each token's logits
  vad: jax.Array | None = None  # RxNx3 (trace): the VAD head's prediction for each token
  attention: jax.Array | None = None  # RxNxP (trace): the choosing position's cross-attention
  score: jax.Array | None = None  # R float32 (beam search): the summed log-probability so far


def _new_book(rows: int, width: int, n: int, pad_id, *, vocab_size: int | None = None,
              patches: int | None = None) -> Book:
  """Nothing chosen yet in width token slots per row (lengths n: no stop token); logits over
  vocab_size and the trace over patches only when given."""
  zeros = lambda *shape: jnp.zeros((rows, width, *shape), jnp.float32)
  return Book(tokens=jnp.full((rows, width), pad_id, jnp.int32),
              lengths=jnp.full((rows,), n, jnp.int32),
              done=jnp.zeros((rows,), bool), in_expl=jnp.zeros((rows,), bool),
              logits=None if vocab_size is None else zeros(vocab_size),
              vad=None if patches is None else zeros(3),
              attention=None if patches is None else zeros(patches))


def _put(buf_RxN, x_R, i):
  """buf[:, i] = x (in place inside the loop)."""
  return jax.lax.dynamic_update_index_in_dim(buf_RxN, x_R, i, axis=1)


def _is_stop(tok_R, stop_S):
  # Each stop id compared in turn (stop_S is short): elementwise, where isin is a reduction.
  return functools.reduce(jnp.logical_or, [tok_R == stop_S[j] for j in range(len(stop_S))])


def _record(book: Book, tok_R, i, stop_S, because_id) -> Book:
  """Token i of every row (pad_id already put in place of ended rows'), and what it ends."""
  ended_R = ~book.done & _is_stop(tok_R, stop_S)
  return book.replace(tokens=_put(book.tokens, tok_R, i),
                      lengths=jnp.where(ended_R, i, book.lengths),
                      done=book.done | ended_R,
                      in_expl=book.in_expl | (tok_R == because_id))


def _record_trace(book: Book, out, i, rows_R=None) -> Book:
  """The step's VAD and attention for token i (of rows rows_R, where rows were reordered)."""
  if book.vad is None:
    return book
  pick = (lambda x: x) if rows_R is None else (lambda x: x[rows_R])
  return book.replace(vad=_put(book.vad, pick(out["vad"]), i),
                      attention=_put(book.attention, pick(out["attention"]), i))


def _segments(book: Book, config):
  """The segment of the tokens fed next: <explanation> from " because" on, else <emotion>."""
  return jnp.where(book.in_expl, jnp.int32(config.explanation_segment_id),
                   jnp.int32(config.emotion_segment_id))


def _loop(body, carry, n: int, steps_per_check: int):
  """Runs body over carry = (i, last tokens, decoder state, book) from token 1: while i < n and
  some row runs, tested every steps_per_check tokens (each body makes that many); with
  steps_per_check=0, n - 1 bodies in a loop whose trip count XLA knows, so that on a GPU the host
  enqueues the steps without waiting for a loop condition copied back from the device."""
  if not steps_per_check:
    return jax.lax.fori_loop(1, n, lambda _, c: body(c), carry)
  return jax.lax.while_loop(lambda c: (c[0] < n) & ~jnp.all(c[-1].done), body, carry)


# --- the jitted loops -----------------------------------------------------------------------


def _choose(logits_BxV, i, method, knobs, rng, output_ids, forced_BxF):
  """Token i of every row: the method's choice from the logits, or the forced token."""
  choice_B = METHODS[method].select(logits_BxV, knobs, rng, i)
  if output_ids is not None:  # restricted output vocabulary: logit index -> token id
    choice_B = output_ids[choice_B]
  if forced_BxF is not None:
    forced_B = _forced_at(forced_BxF, i)
    choice_B = jnp.where(forced_B >= 0, forced_B, choice_B)
  return choice_B


@functools.partial(jax.jit, static_argnames=(
    "model", "max_new_tokens", "method", "use_cache", "return_logits", "steps_per_check",
    "trace"))
def _generate(model: SEVLM, params, images_or_patches, vad_table_Vx3, prompt_L, knobs,
              because_id, stop_S, pad_id, output_ids, forced_BxF, rng, *, max_new_tokens, method,
              use_cache, return_logits, steps_per_check, trace):
  """The token-by-token loop of a method with a select; token ids are traced scalars (stop_S an
  array) and knobs traced float32 scalars, so they cost no recompile.

  Each loop iteration generates steps_per_check tokens before the "all ended?" test.
  Tokens past max_new_tokens (at most steps_per_check - 1) are computed and dropped.
  steps_per_check=0: no test; a loop of max_new_tokens - 1 iterations, whose trip count XLA
  knows, so the GPU runtime never copies a loop condition back to the host and waits for it.
  forced_BxF: tokens each row must start with (-1: free), e.g. "{emotion} because".
  trace: also records each token's VAD prediction and cross-attention map, and the first step's
  logits (a separate compile; the default loop has none of it). Returns generate_details' dict.
  """
  variables = {"params": params}
  patches_BxPxD = _patches(model, variables, images_or_patches)
  b, lp, n = patches_BxPxD.shape[0], prompt_L.shape[0], max_new_tokens
  per_pass = max(steps_per_check, 1)  # tokens per loop iteration
  n_buf = n + per_pass - 1  # room for the overshoot of the last iteration
  first, model_state, advance = _decoder(
      model, variables, patches_BxPxD, vad_table_Vx3, jnp.broadcast_to(prompt_L, (b, lp)), pad_id,
      output_ids, lp + n_buf, use_cache, trace)

  def record(book, out, i):
    """Chooses token i of every row from its logits and records it."""
    choice_B = _choose(out["logits"], i, method, knobs, rng, output_ids, forced_BxF)
    tok_B = jnp.where(book.done, pad_id, choice_B)
    book = _record(book, tok_B, i, stop_S, because_id)
    if return_logits:
      book = book.replace(logits=_put(book.logits, out["logits"], i))
    return tok_B, _record_trace(book, out, i)

  book = _new_book(b, n_buf, n, pad_id,
                   vocab_size=first["logits"].shape[-1] if return_logits else None,
                   patches=patches_BxPxD.shape[1] if trace else None)
  tok_B, book = record(book, first, 0)

  def body(carry):
    i, tok_B, model_state, book = carry
    for _ in range(per_pass):
      out, model_state = advance(model_state, tok_B, _segments(book, model.config), i)
      tok_B, book = record(book, out, i)
      i = i + 1
    return i, tok_B, model_state, book

  _, _, _, book = _loop(body, (jnp.int32(1), tok_B, model_state, book), n, steps_per_check)
  out = {"tokens": book.tokens[:, :n], "lengths": jnp.minimum(book.lengths, n)}
  if return_logits:
    out["logits"] = book.logits[:, :n]
  if trace:
    out.update(vad=book.vad[:, :n], attention=book.attention[:, :n],
               first_logits=first["logits"])
  return out


def _gather_rows(state, rows_N):
  """The decoder state of the sequences rows_N (the image's cross-attention K/V, the same for
  every beam of an image, are left where they are)."""
  def gather(path, x):
    if any(getattr(k, "key", None) in ("cross_k", "cross_v") for k in path) or x.ndim == 0:
      return x
    return x[rows_N]
  return jax.tree_util.tree_map_with_path(gather, state)


def _beam_log_probs(logits_NxV, forced_NxF, token_of_V, i):
  """float32 log-probabilities of each beam's next token; a forced token leaves only itself."""
  logp_NxV = jax.nn.log_softmax(logits_NxV.astype(jnp.float32), axis=-1)
  if forced_NxF is None:
    return logp_NxV
  forced_N = _forced_at(forced_NxF, i)
  return jnp.where((forced_N[:, None] < 0) | (token_of_V[None] == forced_N[:, None]), logp_NxV,
                   -jnp.inf)


def _best_continuations(book: Book, logp_NxV, k: int):
  """(score_N, parent_N, col_N): the k best continuations of each image's k beams, their
  summed log-probabilities, the rows they extend and the logit column they take (column V: an
  ended beam, extended by padding, keeping its sum)."""
  nk, v = logp_NxV.shape
  cand_NxV = jnp.where(book.done[:, None], -jnp.inf, book.score[:, None] + logp_NxV)
  stay_Nx1 = jnp.where(book.done, book.score, -jnp.inf)[:, None]
  cand_BxkV1 = jnp.concatenate([cand_NxV, stay_Nx1], axis=1).reshape(nk // k, k * (v + 1))
  score_Bxk, flat_Bxk = jax.lax.top_k(cand_BxkV1, k)
  parent_Bxk = jnp.arange(nk).reshape(nk // k, k)[:, :1] + flat_Bxk // (v + 1)
  return score_Bxk.reshape(nk), parent_Bxk.reshape(nk), (flat_Bxk % (v + 1)).reshape(nk)


def _best_beams(book: Book, n: int, k: int, length_penalty):
  """(rows B, their length-normalised scores B, lengths N): each image's winning beam."""
  nk = book.score.shape[0]
  lengths_N = jnp.minimum(book.lengths, n)
  counted_N = lengths_N + book.done.astype(jnp.int32)  # the stop token's log-prob counts
  normalised_Bxk = (book.score / counted_N.astype(jnp.float32) ** length_penalty).reshape(-1, k)
  best_B = jnp.arange(nk).reshape(-1, k)[jnp.arange(nk // k), jnp.argmax(normalised_Bxk, axis=1)]
  return best_B, normalised_Bxk.reshape(nk)[best_B], lengths_N


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "beam_width",
                                             "use_cache", "trace"))
def _beam_search(model: SEVLM, params, images_or_patches, vad_table_Vx3, prompt_L, knobs,
                 because_id, stop_S, pad_id, output_ids, forced_BxF, *, max_new_tokens,
                 beam_width, use_cache, trace):
  """Beam search over the KV cache: k beams per image, rows b*k .. b*k+k-1 of image b.

  Beams are ranked by the sum of their tokens' log-probabilities while searching; an ended beam
  keeps its sum and is extended only by padding (one extra candidate column per beam). At the
  end each image's beam with the best length-normalised score sum / L**length_penalty wins, L
  counting the generated tokens including the stop token.
  """
  k, n = beam_width, max_new_tokens
  variables = {"params": params}
  patches_BxPxD = _patches(model, variables, images_or_patches)
  b, lp = patches_BxPxD.shape[0], prompt_L.shape[0]
  nk = b * k
  first, model_state, advance = _decoder(
      model, variables, jnp.repeat(patches_BxPxD, k, axis=0), vad_table_Vx3,
      jnp.broadcast_to(prompt_L, (nk, lp)), pad_id, output_ids, lp + n, use_cache, trace)
  v = first["logits"].shape[-1]
  token_of_V = jnp.arange(v, dtype=jnp.int32) if output_ids is None else output_ids
  forced_NxF = None if forced_BxF is None else jnp.repeat(forced_BxF, k, axis=0)

  def record(book, out, i):
    logp_NxV = _beam_log_probs(out["logits"], forced_NxF, token_of_V, i)
    score_N, parent_N, col_N = _best_continuations(book, logp_NxV, k)
    book = jax.tree.map(lambda x: x[parent_N], book)
    tok_N = jnp.where(book.done | (col_N == v), pad_id, token_of_V[jnp.minimum(col_N, v - 1)])
    book = _record(book, tok_N, i, stop_S, because_id).replace(score=score_N)
    return tok_N, parent_N, _record_trace(book, out, i, parent_N)

  # Only the first beam of an image is alive at the start (the others would repeat it).
  book = _new_book(nk, n, n, pad_id, patches=patches_BxPxD.shape[1] if trace else None).replace(
      score=jnp.where(jnp.arange(nk) % k == 0, 0.0, -jnp.inf))
  tok_N, parent_N, book = record(book, first, 0)

  def body(carry):
    i, tok_N, model_state, book = carry
    out, model_state = advance(model_state, tok_N, _segments(book, model.config), i)
    tok_N, parent_N, book = record(book, out, i)
    return i + 1, tok_N, _gather_rows(model_state, parent_N), book

  carry = (jnp.int32(1), tok_N, _gather_rows(model_state, parent_N), book)
  _, _, _, book = _loop(body, carry, n, steps_per_check=1)
  best_B, scores_B, lengths_N = _best_beams(book, n, k, knobs["length_penalty"])
  out = {"tokens": book.tokens[best_B], "lengths": lengths_N[best_B], "scores": scores_B}
  if trace:
    out.update(vad=book.vad[best_B], attention=book.attention[best_B],
               first_logits=first["logits"][::k])
  return out


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


def _check_method(method: str, rng, beam_width, return_logits: bool) -> Method:
  """METHODS' entry for method, once generate's arguments suit it."""
  if method not in METHODS:
    raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
  m = METHODS[method]
  if m.samples and rng is None:
    raise ValueError(f"method={method!r} samples: pass rng=jax.random.key(...)")
  if m.select is None and int(beam_width) < 1:
    raise ValueError(f"beam_width must be >= 1, got {beam_width}")
  if m.select is None and return_logits:
    raise ValueError(f"return_logits is not available with method={method!r}")
  return m


def _check_forced(forced_ids, images_or_patches, max_new_tokens):
  if forced_ids is None:
    return None
  forced = jnp.asarray(forced_ids, jnp.int32)
  batch = np.shape(images_or_patches)[0]
  if forced.ndim != 2 or forced.shape[0] != batch or forced.shape[1] > max_new_tokens:
    raise ValueError(f"forced_ids must be {batch}xF with F <= max_new_tokens={max_new_tokens},"
                     f" got shape {tuple(forced.shape)}")
  return forced


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
  method: a name in METHODS: 'greedy' (the paper's), 'top_p' (nucleus sampling at
  `temperature`, needs rng) or 'beam' (beam_width beams, length_penalty; see generate_details
  for its scores).
  """
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
  prompt. Tracing compiles its own loop, so the default decoding loop does no extra work; it
  chooses the same tokens from the same rng.

  Returns {'tokens', 'lengths'} (+ 'scores' B for beam search: the winning beam's summed
  log-probability of its tokens, stop token included, over lengths+1 (or N without a stop
  token) ** length_penalty; + the traced arrays; + 'logits' with _return_logits).
  """
  m = _check_method(method, rng, beam_width, _return_logits)
  prompt_L = _check_inputs(model, images_or_patches, vad_table_Vx3, prompt_ids, max_new_tokens,
                           steps_per_check)
  settings = {"top_p": top_p, "temperature": temperature, "length_penalty": length_penalty}
  args = (model, params, jnp.asarray(images_or_patches), jnp.asarray(vad_table_Vx3, jnp.float32),
          prompt_L, {name: jnp.float32(settings[name]) for name in m.knobs},
          jnp.int32(because_id), jnp.asarray(_stop_ids(eos_id), jnp.int32), jnp.int32(pad_id),
          None if output_ids is None else jnp.asarray(output_ids, jnp.int32),
          _check_forced(forced_ids, images_or_patches, max_new_tokens))
  kw = {"max_new_tokens": int(max_new_tokens), "trace": bool(trace),
        "use_cache": model.config.vad.causal or not model.config.use_vad_embedding}
  if m.select is None:  # beam search
    return _beam_search(*args, beam_width=int(beam_width), **kw)
  return _generate(*args, jax.random.key(0) if rng is None else rng, method=method,
                   return_logits=_return_logits, steps_per_check=int(steps_per_check), **kw)


def make_decode_fn(model: SEVLM, options: DecodeOptions, tokenizer, output_ids=None, *,
                   trace: bool = False) -> Callable:
  """Jitted (params, images, vad_table, rng, forced_ids=None) -> {'tokens': BxN int32, ...}.

  trace=False: the tokens only, from the default loop. trace=True: all of generate_details'
  dict ('lengths', each token's 'vad' and 'attention', 'first_logits', beam search's
  'scores'), from the traced loop (its own compile), which chooses the same tokens from the
  same rng. forced_ids: generate_details' (None and an array compile separately).
  """
  prompt_L = jnp.asarray(tokenizer.prompt_ids, jnp.int32)
  output_ids = None if output_ids is None else jnp.asarray(output_ids, jnp.int32)
  kwargs = options.generate_kwargs()

  @jax.jit
  def decode(params, images, vad_table, rng, forced_ids=None):
    params = cast_for_decoding(params, model.config)  # once, not once per token
    patches = model.apply({"params": params}, images, method=model.encode_image)
    out = generate_details(
        model, params, patches, vad_table, prompt_L, because_id=tokenizer.because_id,
        pad_id=vocab.PAD_ID, rng=rng, output_ids=output_ids, forced_ids=forced_ids, trace=trace,
        **kwargs)
    return out if trace else {"tokens": out["tokens"]}

  return decode

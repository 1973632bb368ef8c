"""Decoding beside greedy: forced starts, beam search, the per-token trace (cross-attention map
and VAD prediction), each checked against a plain full pass with no KV cache; the traced loop's
tokens; DecodeOptions, the eval config's decoding fields, and the methods' registry."""

import dataclasses
import functools
import inspect

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sevlm_jax import errors
from sevlm_jax import vocab
from sevlm_jax.data import tokenizer as tokenizer_lib
from sevlm_jax.inference import decode
from sevlm_jax.inference.decode import generate, generate_details
from sevlm_jax.models import SEVLM, ModelConfig, model_config_dict
from sevlm_jax.models.sevlm import mean_cross_attention
from helpers import load_config

PROMPT = [vocab.BOS_ID, 262, 9942, 318]  # "<bos> the emotion is"
N = 8
NEVER = vocab.PREFIX_ID


@pytest.fixture(autouse=True, scope="module")
def highest_precision():
  with jax.default_matmul_precision("highest"):
    yield


@pytest.fixture(scope="module")
def setup(tiny_decoding):
  return tiny_decoding


def run(config, params, images, vad_table, **kw):
  kw = {"max_new_tokens": N, "because_id": NEVER, "eos_id": NEVER, "pad_id": vocab.PAD_ID, **kw}
  out = generate_details(SEVLM(config), params, images, vad_table, PROMPT, **kw)
  return {k: np.asarray(v) for k, v in out.items()}


@functools.partial(jax.jit, static_argnums=0)
def full_pass_traced(config, params, images, ids_BxL, segs_BxL, vad_table, length=None):
  """Teacher-forced pass, no cache, with the cross-attention weights sown; over the first
  `length` tokens only when given (the rest masked as padding)."""
  model = SEVLM(config)
  patches = model.apply({"params": params}, images, method=SEVLM.encode_image)
  mask_BxL = jnp.ones_like(ids_BxL)
  if length is not None:
    mask_BxL = (jnp.arange(ids_BxL.shape[1]) < length)[None].astype(jnp.int32) * mask_BxL
  out, inter = model.apply({"params": params}, patches, ids_BxL, segs_BxL, vad_table[ids_BxL],
                           mask_BxL, mutable=["intermediates"])
  return out, mean_cross_attention(inter["intermediates"], patches.shape[1])


def prefix_passes(config, params, images, ids, segs, vad_table):
  """(vad BxNx3, attention BxNxP) of each generated token from a full pass over the prefix
  that chose it: a bidirectional VAD encoder changes earlier positions as tokens arrive, so
  one pass over the whole sequence is not what the model saw when it chose token i."""
  vads, maps = [], []
  for i in range(N):
    end = len(PROMPT) + i
    full, attention_BxLxP = full_pass_traced(config, params, images, ids, segs, vad_table, end)
    vads.append(np.asarray(full["vad_pred"])[:, end - 1])
    maps.append(np.asarray(attention_BxLxP)[:, end - 1])
  return np.stack(vads, 1), np.stack(maps, 1)


def sequences(config, tokens, because_id):
  """Prompt + generated tokens, with generate's segment rule (explanation from because on,
  because included)."""
  b = tokens.shape[0]
  ids = np.concatenate([np.tile(PROMPT, (b, 1)), tokens], 1).astype(np.int32)
  segs = np.full(ids.shape, config.emotion_segment_id, np.int32)
  for row in range(b):
    hit = np.flatnonzero(ids[row, len(PROMPT):] == because_id)
    if hit.size:
      segs[row, len(PROMPT) + hit[0]:] = config.explanation_segment_id
  return ids, segs


@pytest.mark.parametrize("causal", [True, False])
def test_trace_equals_full_pass_attention_and_vad(setup, causal):
  """Token i's attention map and VAD prediction are those of position prompt+i-1 in a full pass
  (cached decoding, and the full-recompute loop of a bidirectional VAD encoder)."""
  config, params, images, vad_table = setup
  config = dataclasses.replace(config, vad=dataclasses.replace(config.vad, causal=causal))
  plain = run(config, params, images, vad_table)
  because = int(plain["tokens"][0, 1])
  got = run(config, params, images, vad_table, because_id=because, trace=True)
  ids, segs = sequences(config, got["tokens"], because)
  vad_BxNx3, attention_BxNxP = prefix_passes(config, params, images, ids, segs, vad_table)
  grid = config.vision.image_size // config.vision.patch_size
  assert got["attention"].shape == (3, N, grid * grid)
  np.testing.assert_allclose(got["attention"], attention_BxNxP, atol=1e-5)
  np.testing.assert_allclose(got["attention"].sum(-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(got["vad"], vad_BxNx3, atol=1e-5)
  full, _ = full_pass_traced(config, params, images, ids, segs, vad_table, len(PROMPT))
  np.testing.assert_allclose(got["first_logits"], np.asarray(full["logits"])[:, len(PROMPT) - 1],
                             rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("causal", [True, False])
def test_trace_has_one_weight_per_patch_when_the_full_pass_pads_them(make_random_params, causal):
  """25 patches: the full pass pads them to 32 for its GEMMs (gpt2.pad_patches); the maps still
  cover exactly the 25 patches, sum to 1 and equal the full pass's."""
  base = ModelConfig.from_dict(model_config_dict("tiny"))
  config = dataclasses.replace(base, vision=dataclasses.replace(base.vision, image_size=40),
                               vad=dataclasses.replace(base.vad, causal=causal))
  params = make_random_params(config, seed=1, std=0.3)
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
  vad_table = rng.uniform(-1, 1, (config.decoder.vocab_size, 3)).astype(np.float32)
  plain = run(config, params, images, vad_table)
  because = int(plain["tokens"][0, 1])
  got = run(config, params, images, vad_table, because_id=because, trace=True)
  ids, segs = sequences(config, got["tokens"], because)
  _, attention_BxNxP = prefix_passes(config, params, images, ids, segs, vad_table)
  assert got["attention"].shape == attention_BxNxP.shape == (2, N, 25)
  np.testing.assert_allclose(got["attention"].sum(-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(got["attention"], attention_BxNxP, atol=1e-5)


def test_trace_does_not_change_the_tokens(setup):
  config, params, images, vad_table = setup
  plain = run(config, params, images, vad_table)
  traced = run(config, params, images, vad_table, trace=True)
  np.testing.assert_array_equal(plain["tokens"], traced["tokens"])
  np.testing.assert_array_equal(plain["lengths"], traced["lengths"])


def test_forced_tokens_start_each_row(setup):
  """Rows of different forced lengths; the rest continues greedily from the forced prefix."""
  config, params, images, vad_table = setup
  forced = np.asarray([[11, 22, 33], [44, -1, -1], [-1, -1, -1]], np.int32)
  got = run(config, params, images, vad_table, forced_ids=forced)
  np.testing.assert_array_equal(got["tokens"][0, :3], [11, 22, 33])
  assert got["tokens"][1, 0] == 44
  free = run(config, params, images, vad_table)
  np.testing.assert_array_equal(got["tokens"][2], free["tokens"][2])  # nothing forced
  # The continuation is greedy given the forced prefix: a full pass picks the same argmax.
  ids, segs = sequences(config, got["tokens"], NEVER)
  full, _ = full_pass_traced(config, params, images, ids, segs, vad_table)
  pick = np.argmax(np.asarray(full["logits"])[:, len(PROMPT) - 1:-1], -1)
  np.testing.assert_array_equal(got["tokens"][0, 3:], pick[0, 3:])
  np.testing.assert_array_equal(got["tokens"][1, 1:], pick[1, 1:])


def test_beam_of_width_one_is_greedy(setup):
  config, params, images, vad_table = setup
  first = [int(t) for t in run(config, params, images, vad_table)["tokens"][:, 3]]
  for eos in (NEVER, first):  # without and with stops (rows end at step 3 or earlier)
    greedy = run(config, params, images, vad_table, eos_id=eos)
    beam = run(config, params, images, vad_table, eos_id=eos, method="beam", beam_width=1)
    np.testing.assert_array_equal(beam["tokens"], greedy["tokens"])
    np.testing.assert_array_equal(beam["lengths"], greedy["lengths"])


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 0.6])
def test_beam_score_is_the_length_normalised_log_probability(setup, length_penalty):
  """score = sum of log p(token) over the generated tokens (the stop token included) / L ** lp,
  from a full pass."""
  config, params, images, vad_table = setup
  greedy = run(config, params, images, vad_table)
  eos = (int(greedy["tokens"][0, 4]), NEVER)  # row 0 may stop early
  got = run(config, params, images, vad_table, eos_id=eos, method="beam", beam_width=3,
            length_penalty=length_penalty)
  ids, segs = sequences(config, got["tokens"], NEVER)
  full, _ = full_pass_traced(config, params, images, ids, segs, vad_table)
  logp = jax.nn.log_softmax(np.asarray(full["logits"], np.float64)[:, len(PROMPT) - 1:-1], -1)
  for row in range(3):
    counted = min(int(got["lengths"][row]) + 1, N)  # the stop token, if one came
    tok = got["tokens"][row, :counted]
    total = float(np.sum(np.asarray(logp)[row, np.arange(counted), tok]))
    np.testing.assert_allclose(got["scores"][row], total / counted ** length_penalty, rtol=1e-4)


def test_beam_with_forced_start_and_trace(setup):
  config, params, images, vad_table = setup
  forced = np.asarray([[11, 22], [44, -1], [-1, -1]], np.int32)
  got = run(config, params, images, vad_table, method="beam", beam_width=2, forced_ids=forced,
            trace=True)
  np.testing.assert_array_equal(got["tokens"][0, :2], [11, 22])
  assert got["tokens"][1, 0] == 44
  assert got["attention"].shape[:2] == (3, N) and np.all(np.isfinite(got["scores"]))
  ids, segs = sequences(config, got["tokens"], NEVER)
  vad_BxNx3, attention_BxNxP = prefix_passes(config, params, images, ids, segs, vad_table)
  np.testing.assert_allclose(got["attention"], attention_BxNxP, atol=1e-5)
  np.testing.assert_allclose(got["vad"], vad_BxNx3, atol=1e-5)


def test_sampling_is_seeded(setup):
  config, params, images, vad_table = setup
  kw = dict(method="top_p", top_p=1.0, temperature=1.5)
  a = run(config, params, images, vad_table, rng=jax.random.key(3), **kw)
  b = run(config, params, images, vad_table, rng=jax.random.key(3), **kw)
  c = run(config, params, images, vad_table, rng=jax.random.key(4), **kw)
  np.testing.assert_array_equal(a["tokens"], b["tokens"])
  assert not np.array_equal(a["tokens"], c["tokens"])


def test_decoding_choice_errors(setup):
  config, params, images, vad_table = setup
  with pytest.raises(ValueError, match="method must be one of greedy, top_p, beam"):
    run(config, params, images, vad_table, method="nucleus")
  with pytest.raises(ValueError, match="beam_width must be >= 1"):
    run(config, params, images, vad_table, method="beam", beam_width=0)
  with pytest.raises(ValueError, match="forced_ids must be 3xF"):
    run(config, params, images, vad_table, forced_ids=np.zeros((2, 1), np.int32))
  with pytest.raises(ValueError, match="return_logits is not available"):
    generate(SEVLM(config), params, images, vad_table, PROMPT, max_new_tokens=N, because_id=NEVER,
             eos_id=NEVER, pad_id=vocab.PAD_ID, method="beam", return_logits=True)


@pytest.mark.parametrize("method", list(decode.METHODS))
@pytest.mark.parametrize("steps_per_check", [0, 1])
def test_the_traced_decode_fn_chooses_the_default_loops_tokens(setup, method, steps_per_check):
  """Evaluation takes the predictions of the images it traces from the traced loop: for every
  method, it chooses the tokens of the default loop from the same random numbers."""
  config, params, images, vad_table = setup
  options = decode.DecodeOptions(method=method, top_p=0.95, temperature=1.5, beam_width=2,
                                 max_new_tokens=N, steps_per_check=steps_per_check)
  tokenizer = tokenizer_lib.load_tokenizer()
  rng = jax.random.key(7)
  plain = decode.make_decode_fn(SEVLM(config), options, tokenizer)(params, images, vad_table, rng)
  traced = decode.make_decode_fn(SEVLM(config), options, tokenizer, trace=True)(
      params, images, vad_table, rng)
  assert set(plain) == {"tokens"} and {"lengths", "attention", "vad"} <= set(traced)
  np.testing.assert_array_equal(plain["tokens"], traced["tokens"])


def test_decode_options_come_from_the_eval_config_and_are_checked():
  eval_cfg = load_config("demo").eval
  options = decode.DecodeOptions.from_config(eval_cfg)
  assert (options.method, options.beam_width, options.steps_per_check, options.seed) == (
      eval_cfg.decoding, eval_cfg.beam_width, eval_cfg.steps_per_check, eval_cfg.seed)
  decode.check_config(eval_cfg)
  for name, value, message in [
      ("decoding", "nucleus", "eval.decoding='nucleus'; choose one of greedy, top_p, beam"),
      ("stop_on", "newline", "eval.stop_on='newline'; choose one of eos, any_special"),
      ("explanation_after", "middle", "eval.explanation_after='middle'; choose one of "
       "first_because, last_because"),
      ("beam_width", 0, "eval.beam_width=0; choose an integer >= 1"),
      ("top_p", 0.0, r"eval.top_p=0.0; choose a number in \(0, 1\]"),
      ("temperature", 0.0, "eval.temperature=0.0; choose a number > 0"),
      ("max_new_tokens", 0, "eval.max_new_tokens=0; choose an integer >= 1"),
      ("steps_per_check", -1, "eval.steps_per_check=-1; choose an integer >= 0"),
  ]:
    bad = ml_collections.ConfigDict({**eval_cfg.to_dict(), name: value})
    with pytest.raises(errors.ConfigError, match=message):
      decode.check_config(bad)
  older = {k: v for k, v in eval_cfg.to_dict().items() if k != "beam_width"}
  with pytest.raises(errors.ConfigError, match="the config lacks eval.beam_width"):
    decode.check_config(ml_collections.ConfigDict(older))


def test_decode_options_replace_by_config_names():
  options = decode.DecodeOptions()
  assert options.replace(decoding="beam", beam_width=2) == dataclasses.replace(
      options, method="beam", beam_width=2)
  with pytest.raises(errors.ConfigError, match="unknown decoding option"):
    options.replace(beams=3)
  with pytest.raises(errors.ConfigError, match="beam_width must be an integer >= 1; got 1.5"):
    options.replace(beam_width=1.5)


def test_every_methods_settings_are_options_and_generate_keywords():
  """A method's knobs reach the loop from DecodeOptions through generate_details' keywords."""
  fields = {f.name for f in dataclasses.fields(decode.DecodeOptions)}
  keywords = set(inspect.signature(generate_details).parameters)
  handed = set(decode.DecodeOptions().generate_kwargs())
  assert handed <= keywords
  for name, method in decode.METHODS.items():
    assert set(method.knobs) <= fields & handed, name

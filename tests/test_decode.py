"""KV-cached decoding equals the full pass; generation rules; parsing of generated text."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sevlm_jax import vocab
from sevlm_jax.inference.decode import cast_for_decoding, generate, top_p_filter
from sevlm_jax.inference.sentences import parse_generation
from sevlm_jax.models import SEVLM, ModelConfig, model_config_dict
from oracles import full_pass, generate_reference

PROMPT = [vocab.BOS_ID, 262, 9942, 318]  # "<bos> the emotion is"
N = 10
NEVER = vocab.PREFIX_ID  # a token these tests treat as never generated


@pytest.fixture(autouse=True, scope="module")
def highest_precision():
  with jax.default_matmul_precision("highest"):
    yield


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def setup(make_random_params):
  config = ModelConfig.from_dict(model_config_dict("tiny"))
  # Larger weights than GPT-2's init so that greedy outputs vary with the input.
  params = make_random_params(config, seed=0, std=0.3)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  vad_table = rng.uniform(-1, 1, (config.decoder.vocab_size, 3)).astype(np.float32)
  vad_table[rng.random(config.decoder.vocab_size) < 0.5] = 0.0  # words missing from the lexicon
  return config, params, images, vad_table


@functools.partial(jax.jit, static_argnums=0)
def patches_of(config, params, images):
  return SEVLM(config).apply({"params": params}, images, method=SEVLM.encode_image)


def test_decode_step_equals_full_pass(setup):
  config, params, images, vad_table = setup
  model = SEVLM(config)
  patches = patches_of(config, params, images)
  b = images.shape[0]
  rng = np.random.default_rng(1)
  words = rng.integers(0, vocab.GPT2_VOCAB_SIZE, (b, N))
  ids = np.concatenate([np.tile(PROMPT, (b, 1)), words], 1).astype(np.int32)
  segs = np.full(ids.shape, config.emotion_segment_id, np.int32)
  segs[0, 6:] = segs[1, 9:] = config.explanation_segment_id  # rows switch at different steps
  # The shapes of generate_reference's passes, so the compiled pass is shared with it.
  full = full_pass(model, params, patches, ids, segs, vad_table, np.ones_like(ids))

  step = jax.jit(functools.partial(model.apply, method=SEVLM.decode_step))
  cache = model.apply({"params": params}, patches, ids.shape[1] + 2, method=SEVLM.init_cache)
  outs = []
  chunks = [(0, 4), (4, 5), (5, 8)] + [(i, i + 1) for i in range(8, ids.shape[1])]
  for start, stop in chunks:  # the prompt, one token, three tokens, then one at a time
    out, cache = step({"params": params}, cache, ids[:, start:stop], segs[:, start:stop],
                      vad_table[ids[:, start:stop]])
    outs.append(out)
  inc = jax.tree.map(lambda *x: jnp.concatenate(x, axis=1), *outs)
  assert int(cache["index"]) == ids.shape[1]
  for k in ("logits", "hidden", "vad_pred"):
    assert rel_err(inc[k], full[k]) <= 1e-5, k


def greedy_both(config, params, images, vad_table, **kw):
  tokens, lengths, logits = generate(SEVLM(config), params, images, vad_table, PROMPT,
                                     max_new_tokens=N, pad_id=vocab.PAD_ID, return_logits=True,
                                     **kw)
  ref = generate_reference(SEVLM(config), params, patches_of(config, params, images), vad_table,
                           PROMPT, max_new_tokens=N, pad_id=vocab.PAD_ID, **kw)
  return (np.asarray(tokens), np.asarray(lengths), np.asarray(logits)), ref


def check_same(got, ref):
  np.testing.assert_array_equal(got[0], ref[0])
  np.testing.assert_array_equal(got[1], ref[1])
  assert rel_err(got[2], ref[2]) <= 1e-5


def check_conventions(tokens, lengths, stop):
  for row, n in zip(tokens, lengths):
    assert not np.isin(row[:n], stop).any()
    if n < N:
      assert row[n] in stop and np.all(row[n + 1:] == vocab.PAD_ID)


@pytest.mark.parametrize("causal", [True, False])
def test_greedy_generation_equals_reference(setup, causal):
  """Cached (causal) or full-recompute (bidirectional VAD) generation vs the no-cache reference."""
  config, params, images, vad_table = setup
  config = dataclasses.replace(config, vad=dataclasses.replace(config.vad, causal=causal))
  got, ref = greedy_both(config, params, images, vad_table, because_id=NEVER, eos_id=NEVER)
  check_same(got, ref)
  # Make " because" a token that row 0 generates at step 1, so later tokens switch segment,
  # and stop on a token that row 1 generates afterwards.
  because = int(ref[0][0, 1])
  _, ref = greedy_both(config, params, images, vad_table, because_id=because, eos_id=NEVER)
  assert not np.array_equal(ref[0][0], got[0][0])  # the segment switch changed row 0
  eos = int(ref[0][1, 5])
  got, ref = greedy_both(config, params, images, vad_table, because_id=because,
                         eos_id=(eos, NEVER))
  check_same(got, ref)
  assert because in got[0][0, :2] and got[1][1] <= 5
  check_conventions(got[0], got[1], [eos, NEVER])


@pytest.mark.parametrize("steps_per_check", [0, 3, 4])
def test_steps_per_check_do_not_change_results(setup, steps_per_check):
  """Several tokens per loop test (N is not a multiple of 3 or 4), or none (0: a loop of
  known trip count): same tokens, lengths and logits as one token per test, with and
  without stops inside the overshoot."""
  config, params, images, vad_table = setup
  for eos in (NEVER, None):
    kw = dict(because_id=NEVER, eos_id=NEVER if eos else None)
    got, _ = greedy_both(config, params, images, vad_table, because_id=NEVER, eos_id=NEVER)
    if eos is None:  # stop on row 1's token at the last step: ends inside the last iteration
      kw["eos_id"] = (int(got[0][1, N - 1]), NEVER)
      got, _ = greedy_both(config, params, images, vad_table, **kw)
    tokens, lengths, logits = generate(SEVLM(config), params, images, vad_table, PROMPT,
                                       max_new_tokens=N, pad_id=vocab.PAD_ID, return_logits=True,
                                       steps_per_check=steps_per_check, **kw)
    check_same((np.asarray(tokens), np.asarray(lengths), np.asarray(logits)), got)


def test_no_loop_test_runs_every_step_with_the_same_tokens(setup):
  """steps_per_check=0 never exits early: the tokens and lengths are those of an early exit,
  and the logits of the steps after every sequence ended are computed, not zeros."""
  config, params, images, vad_table = setup
  got, _ = greedy_both(config, params, images, vad_table, because_id=NEVER, eos_id=NEVER)
  first = [int(t) for t in got[0][:, 0]]
  kw = dict(max_new_tokens=N, because_id=NEVER, eos_id=first, pad_id=vocab.PAD_ID,
            return_logits=True)
  tests = generate(SEVLM(config), params, images, vad_table, PROMPT, steps_per_check=1, **kw)
  fixed = generate(SEVLM(config), params, images, vad_table, PROMPT, steps_per_check=0, **kw)
  np.testing.assert_array_equal(fixed[0], tests[0])
  np.testing.assert_array_equal(fixed[1], tests[1])
  np.testing.assert_array_equal(fixed[2][:, 0], tests[2][:, 0])
  assert np.all(tests[2][:, 1:] == 0) and np.all(np.asarray(fixed[2][:, 1:]) != 0)


def test_early_exit(setup):
  config, params, images, vad_table = setup
  got, ref = greedy_both(config, params, images, vad_table, because_id=NEVER, eos_id=NEVER)
  first = [int(t) for t in got[0][:, 0]]
  got, ref = greedy_both(config, params, images, vad_table, because_id=NEVER, eos_id=first)
  check_same(got, ref)
  np.testing.assert_array_equal(got[1], 0)
  np.testing.assert_array_equal(got[0][:, 1:], vocab.PAD_ID)
  assert np.all(got[2][:, 1:] == 0)  # the loop ran no further step


def test_top_p(setup):
  config, params, images, vad_table = setup
  model = SEVLM(config)
  kw = dict(max_new_tokens=N, because_id=NEVER, eos_id=NEVER, pad_id=vocab.PAD_ID)
  greedy = generate(model, params, images, vad_table, PROMPT, return_logits=True, **kw)[0]
  sample = lambda rng, top_p: np.asarray(generate(
      model, params, images, vad_table, PROMPT, method="top_p", top_p=top_p, rng=rng, **kw)[0])
  np.testing.assert_array_equal(sample(jax.random.key(0), 1e-6), greedy)
  a, b = sample(jax.random.key(1), 1.0), sample(jax.random.key(1), 1.0)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, greedy)
  with pytest.raises(ValueError, match="pass rng"):
    generate(model, params, images, vad_table, PROMPT, method="top_p", **kw)


def test_top_p_filter():
  logits = jnp.log(jnp.asarray([[0.1, 0.4, 0.2, 0.3], [0.25, 0.25, 0.25, 0.25]]))
  kept = np.isfinite(np.asarray(top_p_filter(logits, 0.65)))
  np.testing.assert_array_equal(kept[0], [False, True, False, True])  # 0.4 + 0.3 >= 0.65
  kept = np.isfinite(np.asarray(top_p_filter(logits, 0.0)))
  assert kept.sum(-1).tolist() == [1, 4]  # the most likely token always stays; so do its ties


def test_generate_input_errors(setup):
  config, params, images, vad_table = setup
  model = SEVLM(config)
  kw = dict(because_id=NEVER, eos_id=NEVER, pad_id=vocab.PAD_ID)
  with pytest.raises(ValueError, match="vad_table must be 50261x3"):
    generate(model, params, images, vad_table[:100], PROMPT, **kw)
  with pytest.raises(ValueError, match="exceeds model.decoder.max_positions=64"):
    generate(model, params, images, vad_table, PROMPT, max_new_tokens=61, **kw)
  with pytest.raises(ValueError, match="non-empty 1-D"):
    generate(model, params, images, vad_table, [], **kw)
  with pytest.raises(ValueError, match="one of greedy, top_p, beam; got 'sample'"):
    generate(model, params, images, vad_table, PROMPT, method="sample", **kw)
  bidirectional = dataclasses.replace(config, vad=dataclasses.replace(config.vad, causal=False))
  with pytest.raises(ValueError, match=r"needs model\.vad\.causal=True"):
    jax.eval_shape(lambda: SEVLM(bidirectional).apply(
        {"params": params}, np.zeros((1, 16, 64), np.float32), 8, method=SEVLM.init_cache))


@pytest.mark.parametrize("text, expected", [
    (" sadness because the sky is dark", ("sadness", "the sky is dark")),
    ("something else because it is odd, because why not", ("something else",
                                                           "it is odd, because why not")),
    ("the emotion is awe because   it is vast ", ("awe", "it is vast")),
    ("Fear the dark alley", ("Fear", "the dark alley")),
    ("something else entirely", ("something else", "entirely")),
    ("contentment", ("contentment", "")),
    ("", ("", "")),
    ("gibberish words", ("gibberish words", "")),
    ("awe becausethe", ("awe", "becausethe")),
])
def test_parse_generation(text, expected):
  assert parse_generation(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("something else because it is odd, because why not", ("something else", "why not")),
    (" sadness because the sky is dark", ("sadness", "the sky is dark")),
    ("something else entirely", ("something else", "entirely")),
])
def test_parse_generation_after_the_last_because(text, expected):
  """The public code's split: the emotion before the first "because", the explanation after the last."""
  assert parse_generation(text, "last_because") == expected


def test_unknown_explanation_rule_is_refused():
  with pytest.raises(ValueError, match="explanation_after"):
    parse_generation("awe because x", "middle_because")


def test_stop_on_any_special_stops_on_each_of_the_five_added_or_eos_tokens(monkeypatch):
  """make_decode_fn hands generate_details the stop tokens eval.stop_on names."""
  from sevlm_jax.data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  from sevlm_jax.inference import decode  # pylint: disable=import-outside-toplevel
  assert decode.stop_ids("eos") == (vocab.EOS_ID,)
  assert set(decode.stop_ids("any_special")) == {vocab.EOS_ID, *range(vocab.PAD_ID, vocab.VOCAB_SIZE)}
  with pytest.raises(ValueError, match="stop_on"):
    decode.stop_ids("newline")
  seen = []

  def fake_generate_details(model, params, patches, vad_table, prompt_ids, **kw):
    seen.append(kw["eos_id"])
    return {"tokens": jnp.zeros((patches.shape[0], 2), jnp.int32)}

  monkeypatch.setattr(decode, "generate_details", fake_generate_details)
  monkeypatch.setattr(SEVLM, "encode_image", lambda self, images: images)
  model = SEVLM(ModelConfig.from_dict(model_config_dict("tiny")))
  for stop_on in ("eos", "any_special"):
    options = decode.DecodeOptions(max_new_tokens=2, steps_per_check=1, stop_on=stop_on)
    fn = decode.make_decode_fn(model, options, tokenizer_lib.load_tokenizer())
    fn({}, jnp.zeros((1, 4, 8)), jnp.zeros((vocab.VOCAB_SIZE, 3)), jax.random.key(0))
    assert seen[-1] == decode.stop_ids(stop_on)


def test_prediction_of_a_generation_stopped_by_a_segment_token():
  """Tokens after a stop are padding; neither they nor the stop token reach the text."""
  from sevlm_jax.data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  from sevlm_jax.inference import sentences  # pylint: disable=import-outside-toplevel
  tok = tokenizer_lib.load_tokenizer()
  ids = tok.encode(" awe because it is vast because of the sky") + [vocab.EMOTION_SEGMENT_ID,
                                                                     vocab.PAD_ID, vocab.PAD_ID]
  assert sentences.prediction(tok, np.asarray(ids)) == {
      "emotion": "awe", "explanation": "it is vast because of the sky",
      "text": "the emotion is awe because it is vast because of the sky"}
  assert sentences.prediction(tok, np.asarray(ids), "last_because")["explanation"] == "of the sky"


def test_weights_cast_once_for_bfloat16_decoding(setup):
  """Casting the towers' weights before the loop gives what casting at each use gives."""
  config, params, images, vad_table = setup
  bf16 = dataclasses.replace(config, dtype="bfloat16")
  cast = cast_for_decoding(params, bf16)
  block = cast["decoder"]["h_0"]
  assert block["mlp"]["c_fc"]["kernel"].dtype == jnp.bfloat16
  assert block["mlp"]["c_fc"]["bias"].dtype == jnp.bfloat16
  assert block["ln_1"]["scale"].dtype == jnp.float32  # LayerNorms and embeddings: float32
  assert cast["decoder"]["wte"]["embedding"].dtype == jnp.float32
  assert cast["vad_head"]["kernel"].dtype == jnp.float32  # computes in float32: left alone
  assert cast_for_decoding(params, config) is params
  kw = dict(max_new_tokens=N, because_id=NEVER, eos_id=NEVER, pad_id=vocab.PAD_ID,
            return_logits=True)
  per_use = generate(SEVLM(bf16), params, images, vad_table, PROMPT, **kw)
  once = generate(SEVLM(bf16), cast, images, vad_table, PROMPT, **kw)
  np.testing.assert_array_equal(once[0], per_use[0])
  np.testing.assert_array_equal(once[2], per_use[2])

"""Greedy generation as the public code runs it (artEmisX_train.py's sample_sequences), beside
ours with the `official` decoding settings: the same texts, also for a row that meets no stop
token and runs to the cap.

The public loop starts each row's output with a -1 placeholder, generates max_len=25 tokens and
keeps output[1:end_idx], where end_idx is the step after the first stop token, else 25: a row
that never stops keeps its first 24 tokens. eval.max_new_tokens=24 (configs/sevlm.py's OFFICIAL)
gives the same. The restatement (tests/public_sevlm_torch.py) runs in float64 with the weights
the Flax model imports from the files it writes; VAD features come from one token table on both
sides.
"""

import dataclasses

import jax
import numpy as np
import pytest

from sevlm_jax import vocab
from sevlm_jax.data import tokenizer as tokenizer_lib
from sevlm_jax.inference import decode
from sevlm_jax.inference import sentences
from sevlm_jax.models import SEVLM, ModelConfig, model_config_dict
from sevlm_jax.models.sevlm import init_params
from sevlm_jax.weights import load_pretrained

torch = pytest.importorskip("torch")
public = pytest.importorskip("public_sevlm_torch")

PUBLIC_MAX_LEN = 25  # artEmisX_train.py: max_len = 25
PROMPT = np.array([vocab.BOS_ID, 262, 9942, 318], np.int64)  # "<bos> the emotion is"
BECAUSE_ID = 780
STOPPER = vocab.PREFIX_ID  # the stop token row 0 is made to generate (never an input here)
ROWS = 3


@pytest.fixture(autouse=True, scope="module")
def highest_precision():
  with jax.default_matmul_precision("highest"):
    yield


def official_model_config() -> ModelConfig:
  """The tiny model with the public code's model switches (configs/sevlm.py's OFFICIAL)."""
  base = ModelConfig.from_dict(model_config_dict("tiny"))
  return dataclasses.replace(
      base, fixed_emotion_len=6,
      vad=dataclasses.replace(base.vad, causal=False, mask_padding=False),
      contrastive=dataclasses.replace(base.contrastive, mean_over_padding=True))


def public_sample(model, emo, patches, table, max_len=PUBLIC_MAX_LEN) -> list[list[int]]:
  """sample_sequences restated, greedy: each step re-runs the whole sequence; a row's segment is
  <emotion> until it generates " because" (that token included in <explanation>); the stop
  tokens are <|endoftext|> and the 4 added ones; the kept ids are output[1:end_idx]."""
  stops = {vocab.EOS_ID, vocab.PAD_ID, vocab.PREFIX_ID, vocab.EMOTION_SEGMENT_ID,
           vocab.EXPLANATION_SEGMENT_ID}
  bt = patches.shape[0]
  ids = torch.tensor(np.tile(PROMPT, (bt, 1)))
  segs = torch.full(ids.shape, vocab.EMOTION_SEGMENT_ID, dtype=torch.long)
  output = torch.full((bt, 1), -1, dtype=torch.long)
  end_idx, always_exp = [max_len] * bt, [False] * bt
  patches = torch.tensor(patches, dtype=torch.float64)
  table = torch.tensor(table, dtype=torch.float64)
  with torch.no_grad():
    for step in range(max_len):
      logits = model(ids, segs, patches, emo(table[ids]))["logits"][:, -1]
      prev = torch.argmax(logits, -1, keepdim=True)
      ids = torch.cat([ids, prev], 1)
      output = torch.cat([output, prev], 1)
      new_segment = torch.empty((bt, 1), dtype=torch.long)
      for j in range(bt):
        if prev[j].item() in stops and end_idx[j] == max_len:
          end_idx[j] = step + 1
        always_exp[j] = always_exp[j] or prev[j].item() == BECAUSE_ID
        new_segment[j] = vocab.EXPLANATION_SEGMENT_ID if always_exp[j] else vocab.EMOTION_SEGMENT_ID
      segs = torch.cat([segs, new_segment], 1)
  return [output[k, 1:end_idx[k]].tolist() for k in range(bt)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """(our config and params, patches, VAD table, the public loop's ids of each row), where row 0
  of the batch stops early and rows 1 and 2 meet no stop token in the public loop's 25 steps."""
  config = official_model_config()
  d = config.decoder
  model = public.PublicSEVLM(d.vocab_size, d.width, d.layers, d.heads, d.mlp_dim, d.max_positions,
                             config.contrastive.hidden)
  emo = public.VADTransformer(config.vad.width, config.vad.layers, config.vad.heads,
                              config.vad.mlp_dim)
  public.randomize(model, seed=0, std=0.3)  # large enough for outputs to vary with the image
  public.randomize(emo, seed=1)
  model, emo = model.double().eval(), emo.double().eval()
  rng = np.random.default_rng(0)
  patches = rng.standard_normal((ROWS, 16, d.width))
  table = rng.uniform(-1, 1, (d.vocab_size, 3))
  table[rng.random(d.vocab_size) < 0.4] = 0  # words outside the lexicon
  # Random weights never choose one of 5 stop ids among 50,261: <prefix> scores 10% above a
  # token that row 0 generates at its 4th step, so that row 0 stops there (the other rows then
  # meet no stop token: the first test checks it).
  free = public_sample(model, emo, patches, table)
  with torch.no_grad():
    model.transformer.wte.weight[STOPPER] = 1.1 * model.transformer.wte.weight[free[0][3]]
  directory = tmp_path_factory.mktemp("public_decoding")
  public.save_public_checkpoint(model.float(), emo.float(), str(directory), name="1")
  params = load_pretrained(init_params(config, jax.random.PRNGKey(0)), config, sevlm=str(directory))
  patches, table = patches.astype(np.float32), table.astype(np.float32)
  # The public side in float64 on the float32 weights both sides now hold.
  ref = public_sample(model.double(), emo.double(), patches.astype(np.float64), table.astype(np.float64))
  return config, params, patches, table, ref


def ours(config, params, patches, table, max_new_tokens) -> list[list[int]]:
  tokens, lengths = decode.generate(
      SEVLM(config), params, patches, table, PROMPT.astype(np.int32),
      max_new_tokens=max_new_tokens, because_id=BECAUSE_ID,
      eos_id=decode.stop_ids("any_special"), pad_id=vocab.PAD_ID)
  tokens, lengths = np.asarray(tokens), np.asarray(lengths)
  return [tokens[k, :lengths[k]].tolist() for k in range(len(lengths))]


def test_public_loop_keeps_24_tokens_of_a_row_that_never_stops(models):
  got = models[-1]
  assert len(got[0]) == 3  # row 0 met the stop token at its 4th step
  assert [len(g) for g in got[1:]] == [PUBLIC_MAX_LEN - 1] * 2  # the cap: 24 tokens, not 25


def test_max_new_tokens_24_gives_the_public_texts(models):
  config, params, patches, table, ref = models
  tokenizer = tokenizer_lib.load_tokenizer()
  got = ours(config, params, patches, table, max_new_tokens=24)
  assert got == ref
  padded = np.full((ROWS, 24), vocab.PAD_ID)
  for k, ids in enumerate(got):
    padded[k, :len(ids)] = ids
  # The public text: tokenizer.decode(output[1:end_idx], skip_special_tokens=True).lstrip().
  assert [sentences.token_text(tokenizer, row).lstrip() for row in padded] == [
      tokenizer.decode(ids).lstrip() for ids in ref]


def test_max_new_tokens_25_adds_a_token_to_the_row_that_runs_to_the_cap(models):
  config, params, patches, table, ref = models
  got = ours(config, params, patches, table, max_new_tokens=25)
  assert got[0] == ref[0]
  for k in (1, 2):
    assert len(got[k]) == 25 and got[k][:24] == ref[k]

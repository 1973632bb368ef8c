"""The public code's behaviour behind switches: parity with a PyTorch restatement of it, the
import of its released checkpoint layout, and the switches' own pieces.

The restatement (tests/public_sevlm_torch.py) runs in float64 with the weights the Flax model
imports from the files it writes; the Flax side runs in float32. Relative differences are
max |a - b| / max |b|.
"""

import dataclasses

import jax
import ml_collections
import numpy as np
import pytest

from sevlm_jax import vocab
from sevlm_jax.errors import CheckpointError
from sevlm_jax.models import SEVLM, ModelConfig, model_config_dict
from sevlm_jax.models.sevlm import init_params
from sevlm_jax.training import losses
from sevlm_jax.training import step as step_lib
from sevlm_jax.weights import load_pretrained
from sevlm_jax.weights import torch_zip

torch = pytest.importorskip("torch")
public = pytest.importorskip("public_sevlm_torch")

TOL = 1e-5
EMOTION_LENGTHS = (5, 6, 5, 6, 6, 5)  # "<bos> the emotion is X": 5 tokens, 6 for two emotions
EXPLANATION_LENGTHS = (9, 10, 6, 4, 10, 7)  # " because ... <eos>"
LENGTH = 16  # rows 1 and 4 fill it; the others are right-padded
BECAUSE_ID = 780


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def config_with(fixed_emotion_len=0, causal=True, mask_padding=True, mean_over_padding=False):
  base = ModelConfig.from_dict(model_config_dict("tiny"))
  return dataclasses.replace(
      base, fixed_emotion_len=fixed_emotion_len,
      vad=dataclasses.replace(base.vad, causal=causal, mask_padding=mask_padding),
      contrastive=dataclasses.replace(base.contrastive, mean_over_padding=mean_over_padding))


OFFICIAL = dict(fixed_emotion_len=6, causal=False, mask_padding=False, mean_over_padding=True)


def torch_models(config: ModelConfig):
  d = config.decoder
  model = public.PublicSEVLM(d.vocab_size, d.width, d.layers, d.heads, d.mlp_dim, d.max_positions,
                             config.contrastive.hidden)
  emo = public.VADTransformer(config.vad.width, config.vad.layers, config.vad.heads,
                              config.vad.mlp_dim)
  public.randomize(model, seed=0)
  public.randomize(emo, seed=1)
  with torch.no_grad():  # VAD features and scores large enough for differences to show
    model.transformer.VAD_linear.weight[:, -3:] *= 10
    for p in model.sim_mlp.parameters():
      p *= 10
  return model.eval(), emo.eval()


@pytest.fixture(scope="module")
def released(tmp_path_factory):
  """The restatement with random weights, saved in the public code's layout."""
  config = config_with(**OFFICIAL)
  model, emo = torch_models(config)
  directory = tmp_path_factory.mktemp("released")
  public.save_public_checkpoint(model, emo, str(directory), name="11")
  return model.double(), emo.double(), directory


@pytest.fixture(scope="module")
def vad_table():
  rng = np.random.default_rng(3)
  table = rng.uniform(-1, 1, (vocab.VOCAB_SIZE, 3)).astype(np.float32)
  table[rng.random(vocab.VOCAB_SIZE) < 0.4] = 0  # words outside the lexicon
  table[[vocab.PAD_ID, vocab.BOS_ID, BECAUSE_ID]] = 0  # NRC-VAD v1 has no "because"
  return table


def pair_batch(seed=0):
  """3 images x 2 sequences mixing 5- and 6-token emotion parts, with right padding."""
  rng = np.random.default_rng(seed)
  n = len(EMOTION_LENGTHS)
  ids = np.full((n, LENGTH), vocab.PAD_ID, np.int32)
  segs = np.full((n, LENGTH), vocab.PAD_ID, np.int32)
  mask = np.zeros((n, LENGTH), np.int32)
  for row, (e, x) in enumerate(zip(EMOTION_LENGTHS, EXPLANATION_LENGTHS)):
    words = rng.integers(0, vocab.GPT2_VOCAB_SIZE - 1, e + x)
    words[0], words[e], words[e + x - 1] = vocab.BOS_ID, BECAUSE_ID, vocab.EOS_ID
    ids[row, :e + x] = words
    segs[row, :e], segs[row, e:e + x] = vocab.EMOTION_SEGMENT_ID, vocab.EXPLANATION_SEGMENT_ID
    mask[row, :e + x] = 1
  labels = np.where(mask > 0, ids, -1)
  labels[:, 0] = -1
  patches = rng.standard_normal((n // 2, 16, 64)).astype(np.float32)
  return {"input_ids": ids, "segment_ids": segs, "token_mask": mask, "labels": labels,
          "patches": patches}


def run_public(model, emo, batch, table, other_rows):
  """The restatement on the public code's inputs: padding has <pad> ids, the explanation
  segment, -100 labels; each image is repeated for its two sequences."""
  t = lambda x, dtype=torch.long: torch.tensor(np.asarray(x), dtype=dtype)
  segs = np.where(batch["token_mask"] > 0, batch["segment_ids"], vocab.EXPLANATION_SEGMENT_ID)
  vad = t(table[batch["input_ids"]], torch.float64)
  with torch.no_grad():
    out = model(t(batch["input_ids"]), t(segs),
                t(np.repeat(batch["patches"], 2, axis=0), torch.float64), emo(vad),
                labels=t(np.where(batch["labels"] >= 0, batch["labels"], -100)), vad_labels=vad,
                other_rows=t(other_rows))
  return {k: v.numpy() for k, v in out.items()}


def run_flax(config, params, batch, table, eps, negatives, rng):
  model = SEVLM(config)
  pairs = {k: v.reshape(-1, 2, LENGTH) for k, v in batch.items() if k != "patches"}
  loss_cfg = ml_collections.ConfigDict({"lm_weight": 1.0, "vad_weight": 1.0,
                                        "contrastive_weight": 1.0, "contrastive_eps": eps})
  with jax.default_matmul_precision("highest"):
    out = model.apply({"params": params}, batch["patches"], batch["input_ids"],
                      batch["segment_ids"], table[batch["input_ids"]], batch["token_mask"])
    _, metrics = step_lib.sevlm_loss(model, params, pairs, table, loss_cfg, rng,
                                     patches=batch["patches"], deterministic=True, pad_vocab_to=1,
                                     negatives=negatives)
  _, negative_rng = jax.random.split(rng)
  other = np.asarray(step_lib.other_image_rows(negative_rng, 3, negatives))
  return ({"logits": np.asarray(out["logits"]), "lm": float(metrics["loss_lm"]),
           "vad": float(metrics["loss_vad"]), "contrastive": float(metrics["loss_contrastive"])},
          other)


def imported_params(config, directory):
  params = init_params(config, jax.random.PRNGKey(0))
  return load_pretrained(params, config, sevlm=str(directory))


# --- parity -------------------------------------------------------------------------------------


def test_official_switches_match_the_public_forward_pass_and_losses(released, vad_table):
  model, emo, directory = released
  config = config_with(**OFFICIAL)
  batch = pair_batch()
  ours, other = run_flax(config, imported_params(config, directory), batch, vad_table, 1e-8,
                         "public", jax.random.PRNGKey(5))
  ref = run_public(model, emo, batch, vad_table, other)
  # Every position, padding included: the explanation mean reads the padding's hidden states.
  assert rel_err(ours["logits"], ref["logits"]) <= TOL
  for name in ("lm", "vad", "contrastive"):
    assert abs(ours[name] - ref[name]) <= TOL * abs(ref[name]), name


def test_defaults_differ_from_the_public_code_only_where_documented(released, vad_table):
  model, emo, directory = released
  config = config_with()  # causal VAD encoder, parts from segment ids, masked means
  batch = pair_batch()
  ours, other = run_flax(config, imported_params(config, directory), batch, vad_table, 0.0,
                         "random", jax.random.PRNGKey(5))
  ref = run_public(model, emo, batch, vad_table, other)
  scale = np.max(np.abs(ref["logits"]))
  diff_BxL = np.max(np.abs(ours["logits"] - ref["logits"]), axis=-1) / scale
  for row, e in enumerate(EMOTION_LENGTHS):
    # Up to the first fused position (5 for 5-token emotions, where " because" is
    # explanation here and emotion there; 6 otherwise) nothing differs; from there on the
    # causal VAD encoder (and for 5-token rows the fused " because") changes the logits.
    first_fused = 5 if e == 5 else 6
    real = int(batch["token_mask"][row].sum())
    assert np.all(diff_BxL[row, :first_fused] <= TOL), row
    assert np.max(diff_BxL[row, first_fused:real]) > 10 * TOL, row
    if e == 5:
      assert diff_BxL[row, 5] > 0.1, row
  for name in ("lm", "vad", "contrastive"):
    assert abs(ours[name] - ref[name]) > TOL * abs(ref[name]), name


def test_bidirectional_encoder_alone_matches_6_token_rows_without_padding(released, vad_table):
  model, emo, directory = released
  config = config_with(causal=False)
  batch = pair_batch()
  ours, other = run_flax(config, imported_params(config, directory), batch, vad_table, 0.0,
                         "random", jax.random.PRNGKey(5))
  ref = run_public(model, emo, batch, vad_table, other)
  row = 4  # 6-token emotion part, no padding
  assert rel_err(ours["logits"][row], ref["logits"][row]) <= TOL
  assert rel_err(ours["logits"][0], ref["logits"][0]) > 1e-3  # 5-token part and padding


# --- the released checkpoint's layout -------------------------------------------------------------


def test_import_from_safetensors_layout_and_model_dir(released, vad_table, tmp_path):
  model, emo, _ = released
  public.save_public_checkpoint(model.float(), emo.float(), str(tmp_path), "3", safetensors=True)
  model.double()
  emo.double()
  config = config_with(**OFFICIAL)
  # An nle_model_* directory itself picks that model; its stats file is its sibling.
  params = load_pretrained(init_params(config, jax.random.PRNGKey(0)), config,
                           sevlm=str(tmp_path / "nle_model_3"))
  batch = pair_batch(seed=1)
  out = SEVLM(config).apply({"params": params}, batch["patches"], batch["input_ids"],
                            batch["segment_ids"], vad_table[batch["input_ids"]],
                            batch["token_mask"])
  ref = run_public(model, emo, batch, vad_table, np.arange(6))
  assert rel_err(out["logits"], ref["logits"]) <= TOL


def test_torch_free_reader_equals_torch_load(released):
  _, _, directory = released
  ours = torch_zip.load(directory / "ckpt_stats_11.tar")
  ref = torch.load(directory / "ckpt_stats_11.tar", weights_only=True)
  assert set(ours["emo_encoder_state_dict"]) == set(ref["emo_encoder_state_dict"])
  for k, v in ref["emo_encoder_state_dict"].items():
    np.testing.assert_array_equal(ours["emo_encoder_state_dict"][k], v.numpy())
  assert ours["best_acc"] == 0.5 and ours["epoch"] == 11
  weights = torch_zip.load(directory / "nle_model_11" / "pytorch_model.bin")
  np.testing.assert_array_equal(weights["lm_head.weight"], weights["transformer.wte.weight"])


def _rewrite(directory, tmp_path, edit_model=None, edit_encoder=None):
  """A copy of the released files with the state dicts edited."""
  out = tmp_path / "edited"
  (out / "nle_model_11").mkdir(parents=True)
  (out / "nle_model_11" / "config.json").write_bytes(
      (directory / "nle_model_11" / "config.json").read_bytes())
  state = torch.load(directory / "nle_model_11" / "pytorch_model.bin", weights_only=True)
  stats = torch.load(directory / "ckpt_stats_11.tar", weights_only=True)
  if edit_model:
    edit_model(state)
  if edit_encoder:
    edit_encoder(stats["emo_encoder_state_dict"])
  torch.save(state, out / "nle_model_11" / "pytorch_model.bin")
  torch.save(stats, out / "ckpt_stats_11.tar")
  return out


@pytest.mark.parametrize("edit, match", [
    (dict(edit_model=lambda s: s.pop("VAD_head.bias")), "missing key 'VAD_head.bias'"),
    (dict(edit_model=lambda s: s.update(extra=torch.zeros(2))), "unexpected key 'extra'"),
    (dict(edit_model=lambda s: s.update({"sim_mlp.pred.8.weight": torch.zeros(2, 64)})),
     r"'sim_mlp.pred.8.weight' has shape \(2, 64\)"),
    (dict(edit_encoder=lambda s: s.pop("encoder.layers.2.norm2.bias")),
     "missing key 'encoder.layers.2.norm2.bias'"),
    (dict(edit_encoder=lambda s: s.update({"encoder.layers.3.fc.0.bias": torch.zeros(3)})),
     "unexpected key 'encoder.layers.3.fc.0.bias'"),
])
def test_missing_extra_or_misshaped_keys_are_named(released, tmp_path, edit, match):
  _, _, directory = released
  config = config_with(**OFFICIAL)
  source = _rewrite(directory, tmp_path, **edit)
  with pytest.raises(CheckpointError, match=match):
    load_pretrained(init_params(config, jax.random.PRNGKey(0)), config, sevlm=str(source))


def test_missing_stats_file_and_absent_directory(released, tmp_path):
  _, _, directory = released
  config = config_with(**OFFICIAL)
  params = init_params(config, jax.random.PRNGKey(0))
  (tmp_path / "nle_model_7").mkdir()
  with pytest.raises(CheckpointError, match="ckpt_stats_7.tar is missing"):
    load_pretrained(params, config, sevlm=str(tmp_path))
  with pytest.raises(CheckpointError, match="does not exist"):
    load_pretrained(params, config, sevlm=str(tmp_path / "nowhere" / "x"))


# --- the switches' pieces -------------------------------------------------------------------------


def test_public_negatives_follow_the_public_draw():
  images = [np.asarray(step_lib.public_negative_images(jax.random.PRNGKey(s), 32))
            for s in range(20)]
  for ids in images:
    assert ids[0] == 16
    assert sorted(ids[1:16]) == list(range(17, 32))
    assert sorted(ids[16:]) == list(range(16))
  assert len({tuple(ids) for ids in images}) > 1  # random beyond the fixed structure
  rows = np.asarray(step_lib.other_image_rows(jax.random.PRNGKey(0), 32, "public"))
  assert rows[0] == 32 and rows[1] % 2 == 1 and np.all(rows // 2 != np.arange(64) // 2)
  np.testing.assert_array_equal(
      rows, np.asarray(step_lib.other_image_rows(jax.random.PRNGKey(0), 32, "public")))
  with pytest.raises(ValueError, match="train.negatives"):
    step_lib.other_image_rows(jax.random.PRNGKey(0), 4, "nearest")


def test_contrastive_eps_is_the_public_form_and_stays_finite():
  pos = np.array([0.3, -20.0, 100.0, 2.0], np.float32)
  neg = np.array([[0.1, -0.2], [5.0, 6.0], [99.0, 101.0], [1.0, 2.5]], np.float32)
  p, n = pos.astype(np.float64), neg.astype(np.float64)
  public_form = -np.log(1e-8 + np.exp(p) / (1e-8 + np.exp(p) + np.exp(n).sum(-1)))
  got = float(losses.contrastive_loss(pos, neg, eps=1e-8))
  assert got == pytest.approx(public_form.mean(), rel=1e-6)
  saturated = float(losses.contrastive_loss(np.array([-30.0]), np.array([[10.0, 10.0]]), eps=1e-8))
  assert saturated == pytest.approx(-np.log(1e-8), rel=1e-6)
  grad = jax.grad(lambda x: losses.contrastive_loss(x, np.array([[10.0, 10.0]]), eps=1e-8))(
      np.array([-30.0], np.float32))
  assert np.all(np.isfinite(grad)) and abs(float(grad[0])) < 1e-4
  # Scores of ~1000: the public float32 exponentials overflow (inf / inf); here it is finite.
  assert np.isfinite(float(losses.contrastive_loss(pos * 10, neg * 10, eps=1e-8)))


def test_invalid_switch_values_are_named():
  base = ModelConfig.from_dict(model_config_dict("tiny")).to_dict()
  for field, value, match in (("fixed_emotion_len", -1, "model.fixed_emotion_len"),
                              ("fixed_emotion_len", "6", "model.fixed_emotion_len")):
    with pytest.raises(ValueError, match=match):
      ModelConfig.from_dict({**base, field: value})
  with pytest.raises(ValueError, match="model.vad.mask_padding"):
    ModelConfig.from_dict({**base, "vad": {**base["vad"], "mask_padding": "no"}})
  with pytest.raises(ValueError, match="model.contrastive.mean_over_padding"):
    ModelConfig.from_dict({**base, "contrastive": {**base["contrastive"],
                                                   "mean_over_padding": 1}})
  with pytest.raises(ValueError, match="eps must be >= 0"):
    losses.contrastive_loss(np.zeros(2), np.zeros((2, 2)), eps=-1.0)


# --- evaluating and predicting with the released model ---------------------------------------------


def test_evaluate_and_predict_the_released_model_without_a_training_checkpoint(tmp_path_factory):
  from sevlm_jax import main as main_lib  # pylint: disable=import-outside-toplevel
  from sevlm_jax.inference import predictor as inference  # pylint: disable=import-outside-toplevel
  import helpers  # pylint: disable=import-outside-toplevel
  demo_root = helpers.demo_root(tmp_path_factory)
  overrides = {"model.contrastive.layers": 4, "model.fixed_emotion_len": 6,
               "model.vad.causal": False, "model.vad.mask_padding": False,
               "model.contrastive.mean_over_padding": True}
  config = helpers.tiny_config(demo_root, **overrides)
  model_config = ModelConfig.from_dict(config.model)
  model, emo = torch_models(model_config)
  released_dir = tmp_path_factory.mktemp("released_tiny")
  public.save_public_checkpoint(model, emo, str(released_dir), name="2")
  config.pretrained.sevlm = str(released_dir)
  workdir = tmp_path_factory.mktemp("evaluate_released")
  results = main_lib.evaluate(config, str(workdir))
  assert results["checkpoint"] == {"kind": "pretrained.sevlm", "step": 0}
  assert 0.0 <= results["ACC"] <= 1.0
  # The workdir now holds config.json and the VAD table: prediction runs the same weights.
  predictor = inference.Predictor.from_workdir(str(workdir))
  np.testing.assert_allclose(np.asarray(predictor.params["vad_head"]["kernel"]),
                             model.VAD_head.weight.detach().numpy().T)
  image = np.zeros((32, 32, 3), np.uint8)
  (pred,) = predictor.predict([image])
  assert set(pred) >= {"emotion", "explanation"}


@pytest.mark.parametrize("switches", [OFFICIAL, dict(fixed_emotion_len=6)],
                         ids=["public_switches_full_pass", "fixed_emotion_len_kv_cache"])
def test_generation_equals_the_full_pass_over_the_tokens_so_far(vad_table, switches):
  """With the public switches generation re-runs the full pass, and the unfilled slots stay
  masked even with vad.mask_padding=False, as the public code generates over the exact prefix;
  with a causal encoder the KV-cached steps fuse VAD from position fixed_emotion_len on."""
  from sevlm_jax.inference.decode import generate  # pylint: disable=import-outside-toplevel
  from conftest import random_params  # pylint: disable=import-outside-toplevel
  config = config_with(**switches)
  params = random_params(config, seed=2, std=0.2)
  model = SEVLM(config)
  patches = np.random.default_rng(0).standard_normal((2, 16, 64)).astype(np.float32)
  prompt = np.array([vocab.BOS_ID, 262, 9942, 318], np.int32)
  n = 5
  tokens, lengths, logits = generate(model, params, patches, vad_table, prompt, max_new_tokens=n,
                                     because_id=BECAUSE_ID, eos_id=vocab.EOS_ID,
                                     pad_id=vocab.PAD_ID, return_logits=True)
  tokens, logits = np.asarray(tokens), np.asarray(logits)
  steps = min(n, int(np.min(lengths)) + 1)  # while no sequence has ended
  assert steps >= 4  # prefixes reach position 6, the first fused one in fixed mode
  for i in range(steps):
    ids = np.concatenate([np.tile(prompt, (2, 1)), tokens[:, :i]], axis=1)
    segs = np.full(ids.shape, vocab.EMOTION_SEGMENT_ID, np.int32)
    for row in range(2):  # from a generated " because" on: explanation
      hits = np.flatnonzero(ids[row] == BECAUSE_ID)
      if hits.size:
        segs[row, hits[0]:] = vocab.EXPLANATION_SEGMENT_ID
    ref = model.apply({"params": params}, patches, ids, segs, vad_table[ids],
                      np.ones(ids.shape, np.int32))["logits"][:, -1]
    assert rel_err(logits[:, i], ref) <= TOL, i


def test_config_fields_default_to_our_behaviour_and_bad_values_are_named():
  from sevlm_jax import main as main_lib  # pylint: disable=import-outside-toplevel
  from sevlm_jax.errors import ConfigError  # pylint: disable=import-outside-toplevel
  import helpers  # pylint: disable=import-outside-toplevel
  config = helpers.load_config("artemis_v1")
  assert config.model.fixed_emotion_len == 0 and config.model.vad.mask_padding
  assert not config.model.contrastive.mean_over_padding
  assert config.loss.contrastive_eps == 0.0 and config.train.negatives == "random"
  assert config.pretrained.sevlm == ""
  main_lib.check_config(config)
  for field, value, match in (("train.negatives", "nearest", "train.negatives='nearest'"),
                              ("loss.contrastive_eps", -1e-8, "loss.contrastive_eps=-1e-08")):
    bad = helpers.load_config("artemis_v1")
    section, name = field.split(".")
    bad[section][name] = value
    with pytest.raises(ConfigError, match=match):
      main_lib.check_config(bad)


def test_the_official_variant_sets_the_switches_parity_is_proven_with():
  """configs/sevlm.py:official carries exactly the model switches and eps proven above."""
  from helpers import load_config  # pylint: disable=import-outside-toplevel
  for arg in ("official", "demo,official"):
    config = load_config(arg)
    model = ModelConfig.from_dict(config.model)
    got = dict(fixed_emotion_len=model.fixed_emotion_len, causal=model.vad.causal,
               mask_padding=model.vad.mask_padding,
               mean_over_padding=model.contrastive.mean_over_padding)
    assert got == OFFICIAL, arg
    assert config.loss.contrastive_eps == 1e-8 and config.train.negatives == "public"

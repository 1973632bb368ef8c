"""SEVLM modules: config, parameter layout and counts, outputs, VAD fusion and encoder masking."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sevlm_jax import vocab
from sevlm_jax.models import (SEVLM, HeadConfig, ModelConfig, VADConfig, init_params,
                              model_config_dict)
from sevlm_jax.models.vad import VADEncoder

COLLECTIONS = {"vision", "decoder", "vad_encoder", "vad_fusion", "vad_head", "contrastive_head"}


def tiny_config(**overrides) -> ModelConfig:
  return dataclasses.replace(ModelConfig.from_dict(model_config_dict("tiny")), **overrides)


def count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def batch(config, seed=0, b=2, length=10, expl_start=(4, 6)):
  """Inputs with explanation segments starting at different positions and right padding in row 1."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, vocab.GPT2_VOCAB_SIZE, (b, length)).astype(np.int32)
  segs = np.full((b, length), config.emotion_segment_id, np.int32)
  for i, start in enumerate(expl_start[:b]):
    segs[i, start:] = config.explanation_segment_id
  mask = np.ones((b, length), np.int32)
  mask[1, -3:] = 0
  token_vad = rng.uniform(-1, 1, (b, length, 3)).astype(np.float32)
  patches = rng.standard_normal((b, config.vision.num_patches, config.decoder.width))
  return patches.astype(np.float32), ids, segs, token_vad, mask


@pytest.fixture(scope="module")
def tiny(make_random_params):
  config = tiny_config()
  return config, make_random_params(config, std=0.1)


@pytest.fixture(scope="module")
def forward(tiny):
  config, _ = tiny
  return jax.jit(lambda p, *a: SEVLM(config).apply({"params": p}, *a))


# --- config --------------------------------------------------------------------------------


def test_presets_and_overrides():
  d = model_config_dict("tiny")
  assert isinstance(d, ml_collections.ConfigDict)
  d.vad.causal = False
  d.image_norm = "imagenet"
  c = ModelConfig.from_dict(d)
  assert c.vad == VADConfig(max_positions=64, causal=False)
  assert c.image_norm == "imagenet" and c.vision.image_size == 32
  base = ModelConfig.from_dict(model_config_dict("base"))
  assert base == ModelConfig()
  assert base.vision.num_patches == 196 and base.decoder.vocab_size == vocab.VOCAB_SIZE
  assert hash(base) == hash(ModelConfig())  # usable as a static jit argument
  with pytest.raises(ValueError, match="unknown model preset 'huge'"):
    model_config_dict("huge")


@pytest.mark.parametrize("d, match", [
    ({"vision": {"widht": 3}}, r"unknown model config field 'model\.vision\.widht'"),
    ({"use_vad": True}, r"unknown model config field 'model\.use_vad'"),
    ({"image_norm": "caffe"}, r"model\.image_norm='caffe'"),
    ({"dtype": "float16"}, r"model\.dtype='float16'"),
    ({"vision": {"width": 64, "heads": 4, "mlp_dim": 128}}, r"model\.vision\.width=64 must equal"),
    ({"decoder": {"heads": 5}}, r"model\.decoder\.width=768 is not divisible"),
    ({"explanation_segment_id": 60000}, r"model\.explanation_segment_id=60000 is outside"),
])
def test_bad_config_fields(d, match):
  with pytest.raises(ValueError, match=match):
    ModelConfig.from_dict(d)


# --- parameters ------------------------------------------------------------------------------


def test_param_collections_and_base_counts():
  shapes = jax.eval_shape(lambda r: init_params(ModelConfig(), r), jax.random.key(0))
  assert set(shapes) == COLLECTIONS
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(shapes))
  assert shapes["decoder"]["wte"]["embedding"].shape == (vocab.VOCAB_SIZE, 768)
  assert shapes["vad_fusion"]["kernel"].shape == (771, 768)
  assert shapes["vad_head"]["kernel"].shape == (768, 3)
  assert shapes["contrastive_head"]["hidden_0"]["kernel"].shape == (3 * 768, 768)
  assert count(shapes["contrastive_head"]) == (3 * 768 + 1) * 768 + 3 * 769 * 768 + 769
  no_vad = jax.eval_shape(
      lambda r: init_params(dataclasses.replace(ModelConfig(), use_vad_embedding=False), r),
      jax.random.key(0))
  assert set(no_vad) == COLLECTIONS - {"vad_encoder", "vad_fusion"}


def test_tower_counts_equal_reference_models():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  shapes = jax.eval_shape(lambda r: init_params(ModelConfig(), r), jax.random.key(0))
  with torch.device("meta"):  # shapes only, no memory, no init time
    vit = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        image_size=224, patch_size=16, hidden_size=768, intermediate_size=3072,
        num_hidden_layers=12, num_attention_heads=12))
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=vocab.VOCAB_SIZE, n_layer=6, add_cross_attention=True))
  assert count(shapes["vision"]) == sum(p.numel() for p in vit.parameters()) == 85_799_424
  assert count(shapes["decoder"]) == sum(p.numel() for p in gpt2.parameters())


def test_init_params_runs():
  """A real (not abstract) init, on a 1-layer config to keep compile time short."""
  tiny = tiny_config()
  config = dataclasses.replace(
      tiny, vision=dataclasses.replace(tiny.vision, layers=1),
      decoder=dataclasses.replace(tiny.decoder, layers=1),
      vad=dataclasses.replace(tiny.vad, layers=1),
      contrastive=HeadConfig(hidden=16, layers=1))
  with jax.threefry_partitionable(False):  # same init, about half the compile time on CPU
    params = jax.jit(init_params, static_argnums=0)(config, jax.random.key(0))
  shapes = jax.eval_shape(lambda r: init_params(config, r), jax.random.key(0))
  assert jax.tree.structure(params) == jax.tree.structure(shapes)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))
  wte = params["decoder"]["wte"]["embedding"]
  assert 0.015 < float(jnp.std(wte)) < 0.025  # GPT-2's N(0, 0.02)
  # from_dict input is accepted too
  assert jax.tree.structure(jax.eval_shape(
      lambda r: init_params(config.to_dict(), r), jax.random.key(0))) == jax.tree.structure(shapes)


# --- forward -----------------------------------------------------------------------------------


def test_outputs(tiny, forward):
  config, params = tiny
  patches, ids, segs, token_vad, mask = batch(config)
  out = forward(params, patches, ids, segs, token_vad, mask)
  b, l = ids.shape
  d = config.decoder.width
  assert out["logits"].shape == (b, l, vocab.VOCAB_SIZE) and out["logits"].dtype == jnp.float32
  assert out["hidden"].shape == (b, l, d)
  assert out["vad_pred"].shape == (b, l, 3)
  for k in ("image_feat", "emotion_feat", "explanation_feat"):
    assert out[k].shape == (b, d) and out[k].dtype == jnp.float32
  np.testing.assert_allclose(out["image_feat"], patches.mean(1), rtol=1e-6, atol=1e-6)
  hidden = np.asarray(out["hidden"])
  real = mask.astype(bool)
  for i in range(b):
    emo = real[i] & (segs[i] == config.emotion_segment_id)
    expl = real[i] & (segs[i] == config.explanation_segment_id)
    np.testing.assert_allclose(out["emotion_feat"][i], hidden[i, emo].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["explanation_feat"][i], hidden[i, expl].mean(0), rtol=1e-5,
                               atol=1e-6)
  scores = SEVLM(config).apply({"params": params}, out["image_feat"], out["emotion_feat"],
                               out["explanation_feat"], method=SEVLM.score)
  assert scores.shape == (b,) and scores.dtype == jnp.float32


@pytest.mark.parametrize("causal", [True, False])
def test_padding_does_not_leak(tiny, causal):
  config, params = tiny
  config = dataclasses.replace(config, vad=dataclasses.replace(config.vad, causal=causal))
  patches, ids, segs, token_vad, mask = batch(config)
  other_ids, other_vad = ids.copy(), token_vad.copy()
  other_ids[1, -3:] = 7
  other_vad[1, -3:] = 0.9
  fwd = jax.jit(lambda *a: SEVLM(config).apply({"params": params}, *a))
  a = fwd(patches, ids, segs, token_vad, mask)
  b = fwd(patches, other_ids, segs, other_vad, mask)
  real = mask.astype(bool)
  np.testing.assert_allclose(a["logits"][real], b["logits"][real], rtol=1e-6, atol=1e-6)
  for k in ("emotion_feat", "explanation_feat"):
    np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-6)


def test_vad_fusion_only_on_explanation_tokens(tiny):
  config, params = tiny
  _, ids, segs, token_vad, mask = batch(config)
  embed = jax.jit(lambda c, *a: SEVLM(c).apply({"params": params}, *a, method=SEVLM.embed_inputs),
                  static_argnums=0)
  fused = np.asarray(embed(config, ids, segs, token_vad, mask))
  plain = np.asarray(embed(dataclasses.replace(config, use_vad_embedding=False), ids, segs,
                           token_vad, mask))
  other = np.asarray(embed(config, ids, segs, token_vad[:, ::-1] + 0.5, mask))
  is_expl = segs == config.explanation_segment_id
  assert is_expl[0].tolist() != is_expl[1].tolist()  # explanation starts differ per row
  np.testing.assert_array_equal(fused[~is_expl], plain[~is_expl])
  np.testing.assert_array_equal(other[~is_expl], plain[~is_expl])
  assert np.all(np.abs(fused[is_expl] - plain[is_expl]).max(-1) > 1e-4)
  assert np.all(np.abs(other[is_expl] - fused[is_expl]).max(-1) > 1e-6)
  # The fusion is Linear([embedding, vad_encoder(vad)]) at exactly those positions.
  enc = VADEncoder(config.vad).apply({"params": params["vad_encoder"]}, token_vad, mask)
  k, bias = params["vad_fusion"]["kernel"], params["vad_fusion"]["bias"]
  manual = np.concatenate([plain, np.asarray(enc)], -1) @ k + bias
  np.testing.assert_allclose(fused[is_expl], manual[is_expl], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
def test_vad_encoder_causality(tiny, causal):
  config, params = tiny
  vc = dataclasses.replace(config.vad, causal=causal)
  rng = np.random.default_rng(3)
  vad = rng.uniform(-1, 1, (1, 8, 3)).astype(np.float32)
  changed = vad.copy()
  changed[0, 5:] = -vad[0, 5:]
  mask = np.ones((1, 8), np.int32)
  enc = jax.jit(lambda x: VADEncoder(vc).apply({"params": params["vad_encoder"]}, x, mask))
  a, b = np.asarray(enc(vad)), np.asarray(enc(changed))
  if causal:
    np.testing.assert_array_equal(a[0, :5], b[0, :5])
  else:
    assert np.all(np.abs(a[0, :5] - b[0, :5]).max(-1) > 1e-6)
  assert np.all(np.abs(a[0, 5:] - b[0, 5:]).max(-1) > 1e-6)


def test_dropout_and_bfloat16(tiny, forward):
  config, params = tiny
  patches, ids, segs, token_vad, mask = batch(config)
  model = SEVLM(config)
  # Dropout draws from the 'dropout' rng (checked on the input embeddings: a small graph).
  run = jax.jit(lambda rng: model.apply({"params": params}, ids, segs, token_vad, mask,
                                        deterministic=False, method=SEVLM.embed_inputs,
                                        rngs={"dropout": rng}))
  a, b = run(jax.random.key(1)), run(jax.random.key(2))
  assert float(jnp.mean(a == 0)) > 0.05 and float(jnp.abs(a - b).max()) > 1e-3
  bf16 = dataclasses.replace(config, dtype="bfloat16")
  out = jax.jit(lambda: SEVLM(bf16).apply({"params": params}, patches, ids, segs, token_vad,
                                          mask))()
  ref = forward(params, patches, ids, segs, token_vad, mask)
  assert out["logits"].dtype == jnp.float32 and out["hidden"].dtype == jnp.bfloat16
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  real = mask.astype(bool)
  assert float(jnp.abs(out["logits"] - ref["logits"])[real].max()) < 0.1 * float(
      jnp.abs(ref["logits"]).max())


def test_images_shared_by_groups_of_sequences(tiny, forward):
  """One image per pair of sequences (the train step's layout) equals repeating the image."""
  config, params = tiny
  _, ids, segs, token_vad, mask = batch(config, b=4, expl_start=(4, 6, 5, 3))
  mask[1] = 1
  mask[3, -2:] = 0
  patches_2xPxD = np.random.default_rng(3).standard_normal(
      (2, config.vision.num_patches, config.decoder.width)).astype(np.float32)
  shared = forward(params, patches_2xPxD, ids, segs, token_vad, mask)
  repeated = forward(params, np.repeat(patches_2xPxD, 2, axis=0), ids, segs, token_vad, mask)
  for key in ("logits", "hidden", "vad_pred", "image_feat", "explanation_feat"):
    np.testing.assert_allclose(shared[key], repeated[key], rtol=1e-5, atol=1e-5, err_msg=key)
  with pytest.raises(ValueError, match="patches must be"):
    forward(params, patches_2xPxD[:1].repeat(3, 0), ids, segs, token_vad, mask)


def test_padding_patches_changes_no_output_or_gradient(tiny, monkeypatch):
  """13 patches padded to 16 and masked out of cross-attention: the outputs and the gradients
  of the unpadded model."""
  from sevlm_jax.models import gpt2  # pylint: disable=import-outside-toplevel
  config, params = tiny
  _, ids, segs, token_vad, mask = batch(config)
  patches = np.random.default_rng(5).standard_normal((2, 13, config.decoder.width))
  patches = patches.astype(np.float32)

  def run(p):
    out = SEVLM(config).apply({"params": p}, patches, ids, segs, token_vad, mask)
    return jnp.sum(out["logits"] ** 2) + jnp.sum(out["explanation_feat"]), out

  def outputs_and_grads():
    return jax.jit(jax.value_and_grad(run, has_aux=True))(params)

  assert gpt2.pad_patches(jnp.asarray(patches))[0].shape == (2, 16, config.decoder.width)
  (_, padded), padded_grads = outputs_and_grads()
  monkeypatch.setattr(gpt2, "pad_patches", lambda p: (p, None))
  (_, plain), plain_grads = outputs_and_grads()
  for key in ("logits", "hidden", "vad_pred", "explanation_feat"):
    np.testing.assert_allclose(padded[key], plain[key], rtol=1e-5, atol=1e-6, err_msg=key)
  cross = lambda g: g["decoder"]["h_0"]["crossattention"]["c_attn"]["kernel"]
  assert float(jnp.abs(cross(plain_grads)).max()) > 0
  # Float32 rounding of the sums changes with their length; it is amplified in the 3-wide VAD
  # encoder's LayerNorms, so the tolerance is relative to the largest gradient.
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(plain_grads))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * scale),
               padded_grads, plain_grads)


def test_one_pass_softmax_equals_softmax_with_its_gradient():
  """The single-query attention's softmax (one reduction for max and sum): jax.nn.softmax's
  values and gradients, a row of only masked logits included (uniform, as softmax gives)."""
  from sevlm_jax.models.layers import softmax_one_pass  # pylint: disable=import-outside-toplevel
  logits = 30 * np.random.default_rng(6).standard_normal((2, 3, 1, 197)).astype(np.float32)
  logits[0, 1, 0] = np.finfo(np.float32).min
  weights = np.random.default_rng(7).standard_normal(logits.shape).astype(np.float32)
  got = jax.jit(softmax_one_pass)(logits)
  np.testing.assert_allclose(got, jax.nn.softmax(logits, axis=-1), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(got[0, 1, 0], np.full(197, 1 / 197), rtol=1e-5)
  loss = lambda f: lambda x: jnp.sum(f(x) * weights)
  np.testing.assert_allclose(jax.jit(jax.grad(loss(softmax_one_pass)))(logits),
                             jax.grad(loss(lambda x: jax.nn.softmax(x, axis=-1)))(logits),
                             rtol=1e-4, atol=1e-6)


def test_bfloat16_logits_on_request(tiny):
  config, params = tiny
  patches, ids, segs, token_vad, mask = batch(config)
  bf16 = dataclasses.replace(config, dtype="bfloat16")
  out = jax.jit(lambda: SEVLM(bf16).apply({"params": params}, patches, ids, segs, token_vad, mask,
                                          logits_dtype=jnp.bfloat16))()
  assert out["logits"].dtype == jnp.bfloat16


def test_padded_vocabulary(tiny, forward):
  """Padded logits: the real columns unchanged, the padding never chosen, the same LM loss."""
  from sevlm_jax import losses  # pylint: disable=import-outside-toplevel
  config, params = tiny
  patches, ids, segs, token_vad, mask = batch(config)
  padded = jax.jit(lambda: SEVLM(config).apply({"params": params}, patches, ids, segs, token_vad,
                                               mask, pad_vocab_to=128))()["logits"]
  ref = forward(params, patches, ids, segs, token_vad, mask)["logits"]
  v = config.decoder.vocab_size
  assert padded.shape[-1] % 128 == 0 and padded.shape[-1] - v < 128
  np.testing.assert_allclose(padded[..., :v], ref, rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(padded[..., v:]) == np.finfo(np.float32).min)
  labels = np.where(mask > 0, ids, -1)
  np.testing.assert_allclose(losses.lm_loss(padded, labels), losses.lm_loss(ref, labels),
                             rtol=1e-5)


def test_images(tiny):
  config, params = tiny
  rng = np.random.default_rng(4)
  images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  enc = lambda c, x: SEVLM(c).apply({"params": params}, x, method=SEVLM.encode_image)
  patches = enc(config, images)
  assert patches.shape == (2, config.vision.num_patches, config.vision.width)
  np.testing.assert_allclose(enc(config, images.astype(np.float32) / 255.0), patches, rtol=1e-5,
                             atol=1e-5)
  imagenet = enc(dataclasses.replace(config, image_norm="imagenet"), images)
  assert float(jnp.abs(imagenet - patches).max()) > 1e-3
  with pytest.raises(ValueError, match=r"images must be Bx32x32x3"):
    enc(config, images[:, :16])


def test_input_shape_errors(tiny):
  config, params = tiny
  patches, ids, segs, token_vad, mask = batch(config)
  model = SEVLM(config)
  with pytest.raises(ValueError, match=r"token_vad shape"):
    jax.eval_shape(lambda: model.apply({"params": params}, patches, ids, segs, token_vad[..., :2],
                                       mask))
  with pytest.raises(ValueError, match=r"patches must be 2xPx64"):
    jax.eval_shape(lambda: model.apply({"params": params}, patches[..., :32], ids, segs,
                                       token_vad, mask))
  long = np.zeros((1, 65), np.int32)
  with pytest.raises(ValueError, match=r"exceeds model\.decoder\.max_positions=64"):
    jax.eval_shape(lambda: model.apply({"params": params}, patches[:1], long, long,
                                       np.zeros((1, 65, 3)), long))

"""Pretrained-weight import: parity with transformers' PyTorch models, and strict errors."""

import dataclasses

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from sevlm_jax import vocab
from sevlm_jax.models import SEVLM, ModelConfig, model_config_dict
from sevlm_jax.errors import CheckpointError
from sevlm_jax.weights import load_pretrained
from sevlm_jax.weights import gpt2 as gpt2_map

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-5


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def tiny_config(**overrides) -> ModelConfig:
  # No VAD fusion: these tests compare the bare towers with their HF originals.
  return dataclasses.replace(ModelConfig.from_dict(model_config_dict("tiny")),
                             use_vad_embedding=False, **overrides)


def hf_gpt2(config: ModelConfig, cross_attention=True, resize=True):
  d = config.decoder
  torch.manual_seed(0)
  cfg = transformers.GPT2Config(
      vocab_size=vocab.GPT2_VOCAB_SIZE, n_positions=d.max_positions, n_embd=d.width,
      n_layer=d.layers, n_head=d.heads, n_inner=d.mlp_dim, add_cross_attention=cross_attention,
      attn_implementation="eager")
  model = transformers.GPT2LMHeadModel(cfg).eval()
  if resize:
    model.resize_token_embeddings(d.vocab_size, mean_resizing=False)
  return model


def hf_clip_vision(config: ModelConfig):
  v = config.vision
  torch.manual_seed(1)
  cfg = transformers.CLIPVisionConfig(
      image_size=v.image_size, patch_size=v.patch_size, hidden_size=v.width,
      intermediate_size=v.mlp_dim, num_hidden_layers=v.layers, num_attention_heads=v.heads,
      attn_implementation="eager")
  return transformers.CLIPVisionModel(cfg).eval()


def text_inputs(config: ModelConfig, batch=2, length=9, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, vocab.GPT2_VOCAB_SIZE, (batch, length)).astype(np.int32)
  segs = np.full((batch, length), config.emotion_segment_id, np.int32)
  segs[:, 5:] = config.explanation_segment_id
  mask = np.ones((batch, length), np.int32)
  mask[1, length - 3:] = 0  # right padding in the second row
  patches = rng.standard_normal((batch, config.vision.num_patches, config.decoder.width))
  return ids, segs, mask, patches.astype(np.float32)


def check_gpt2_parity(config, params, hf_model):
  ids, segs, mask, patches = text_inputs(config)
  with torch.no_grad():
    ref = hf_model(input_ids=torch.tensor(ids, dtype=torch.long),
                   token_type_ids=torch.tensor(segs, dtype=torch.long),
                   attention_mask=torch.tensor(mask), encoder_hidden_states=torch.tensor(patches),
                   output_hidden_states=True)
  with jax.default_matmul_precision("highest"):
    out = jax.jit(SEVLM(config).apply)({"params": params}, patches, ids, segs,
                                       np.zeros(ids.shape + (3,), np.float32), mask)
  real = mask.astype(bool)
  v = ref.logits.shape[-1]  # the checkpoint's vocabulary: 50257 rows, or 50261 once resized
  assert rel_err(out["logits"][..., :v][real], ref.logits.numpy()[real]) <= TOL
  assert rel_err(out["hidden"][real], ref.hidden_states[-1].numpy()[real]) <= TOL


def check_clip_parity(config, params, hf_model, batch=2):
  rng = np.random.default_rng(2)
  s = config.vision.image_size
  images = rng.uniform(0, 1, (batch, s, s, 3)).astype(np.float32)
  mean = np.asarray([0.48145466, 0.4578275, 0.40821073], np.float32)
  std = np.asarray([0.26862954, 0.26130258, 0.27577711], np.float32)
  pixels = torch.tensor(((images - mean) / std).transpose(0, 3, 1, 2))
  with torch.no_grad():
    ref = hf_model(pixel_values=pixels)
    # HF's last_hidden_state is before post_layernorm; SEVLM's patches are after it.
    ref_patches = hf_model.post_layernorm(ref.last_hidden_state[:, 1:]).numpy()
  with jax.default_matmul_precision("highest"):
    patches, pooled = jax.jit(lambda p, x: SEVLM(config).apply(
        {"params": p}, x, method=lambda m, x: m.vision(x)))(params, images)
  assert rel_err(patches, ref_patches) <= TOL
  assert rel_err(pooled, ref.pooler_output.numpy()) <= TOL


# --- tiny parity ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(make_random_params):
  config = tiny_config()
  return config, make_random_params(config)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory, tiny):
  config, _ = tiny
  model = hf_gpt2(config)
  path = tmp_path_factory.mktemp("gpt2")
  model.save_pretrained(path)
  return path, model


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory, tiny):
  config, _ = tiny
  model = hf_clip_vision(config)
  path = tmp_path_factory.mktemp("clip")
  model.save_pretrained(path)
  return path, model


def test_gpt2_parity_tiny(tiny, gpt2_dir):
  config, params = tiny
  path, model = gpt2_dir
  loaded = load_pretrained(params, config, gpt2=str(path))
  check_gpt2_parity(config, loaded, model)


def test_clip_vision_parity_tiny(tiny, clip_dir):
  config, params = tiny
  path, model = clip_dir
  loaded = load_pretrained(params, config, clip=path)
  check_clip_parity(config, loaded, model)
  # Only the vision tower changed.
  np.testing.assert_array_equal(loaded["decoder"]["wte"]["embedding"],
                                params["decoder"]["wte"]["embedding"])


def test_clip_model_file_with_text_tower(tiny, clip_dir, tmp_path):
  """A CLIPModel file: vision keys under 'vision_model.', text tower and projections ignored."""
  config, params = tiny
  path, model = clip_dir
  tensors = load_file(path / "model.safetensors")
  full = {"vision_model." + k: v for k, v in tensors.items()}
  full["text_model.embeddings.token_embedding.weight"] = np.zeros((10, 8), np.float32)
  full["text_projection.weight"] = np.zeros((4, 8), np.float32)
  full["visual_projection.weight"] = np.zeros((4, config.vision.width), np.float32)
  full["logit_scale"] = np.zeros((), np.float32)
  save_file(full, tmp_path / "model.safetensors")
  loaded = load_pretrained(params, config, clip=tmp_path)
  check_clip_parity(config, loaded, model)


def to_openai_layout(tensors, config, with_text=True):
  """An OpenAI CLIP state dict equivalent to an HF CLIPVisionModel one."""
  out = {
      "visual.class_embedding": tensors["embeddings.class_embedding"],
      "visual.positional_embedding": tensors["embeddings.position_embedding.weight"],
      "visual.conv1.weight": tensors["embeddings.patch_embedding.weight"],
      "visual.proj": np.zeros((config.vision.width, 8), np.float32),
  }
  for ours, theirs in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
    for p in ("weight", "bias"):
      out[f"visual.{ours}.{p}"] = tensors[f"{theirs}.{p}"]
  for i in range(config.vision.layers):
    src, dst = f"encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
    for p in ("weight", "bias"):
      out[dst + f"attn.in_proj_{p}"] = np.concatenate(
          [tensors[src + f"self_attn.{x}_proj.{p}"] for x in "qkv"])
      out[dst + f"attn.out_proj.{p}"] = tensors[src + f"self_attn.out_proj.{p}"]
      out[dst + f"ln_1.{p}"] = tensors[src + f"layer_norm1.{p}"]
      out[dst + f"ln_2.{p}"] = tensors[src + f"layer_norm2.{p}"]
      out[dst + f"mlp.c_fc.{p}"] = tensors[src + f"mlp.fc1.{p}"]
      out[dst + f"mlp.c_proj.{p}"] = tensors[src + f"mlp.fc2.{p}"]
  if with_text:
    out.update({"token_embedding.weight": np.zeros((10, 8), np.float32),
                "positional_embedding": np.zeros((7, 8), np.float32),
                "transformer.resblocks.0.ln_1.weight": np.ones((8,), np.float32),
                "ln_final.weight": np.ones((8,), np.float32),
                "text_projection": np.zeros((8, 8), np.float32),
                "logit_scale": np.zeros((), np.float32)})
  return out


def test_openai_clip_layouts(tiny, clip_dir, tmp_path):
  config, params = tiny
  path, _ = clip_dir
  tensors = load_file(path / "model.safetensors")
  expected = load_pretrained(params, config, clip=path)["vision"]
  openai = to_openai_layout(tensors, config)
  np.savez(tmp_path / "clip.npz", **openai)
  torch.save({k: torch.tensor(v) for k, v in openai.items()}, tmp_path / "clip.pt")
  save_file({k[len("visual."):]: v for k, v in openai.items() if k.startswith("visual.")},
            tmp_path / "visual_only.safetensors")
  for name in ("clip.npz", "clip.pt", "visual_only.safetensors"):
    loaded = load_pretrained(params, config, clip=tmp_path / name)["vision"]
    jax.tree.map(np.testing.assert_array_equal, loaded, expected)


def test_plain_gpt2_gets_new_weights(tiny, tmp_path):
  """No cross-attention in the checkpoint, 50257 rows: those parts are new in SEVLM."""
  config, params = tiny
  model = hf_gpt2(config, cross_attention=False, resize=False)
  model.save_pretrained(tmp_path)
  loaded = load_pretrained(params, config, gpt2=tmp_path)["decoder"]
  wte = model.transformer.wte.weight.detach().numpy()
  got = np.asarray(loaded["wte"]["embedding"])
  assert got.shape == (vocab.VOCAB_SIZE, config.decoder.width)
  np.testing.assert_array_equal(got[:vocab.GPT2_VOCAB_SIZE], wte)
  np.testing.assert_allclose(got[vocab.GPT2_VOCAB_SIZE:],
                             np.broadcast_to(wte.mean(0), (4, wte.shape[1])), rtol=1e-6, atol=1e-7)
  for i in range(config.decoder.layers):
    jax.tree.map(np.testing.assert_array_equal, loaded[f"h_{i}"]["crossattention"],
                 params["decoder"][f"h_{i}"]["crossattention"])
  np.testing.assert_array_equal(loaded["h_0"]["attn"]["c_attn"]["kernel"],
                                model.transformer.h[0].attn.c_attn.weight.detach().numpy())


def test_normal_new_token_rows_are_independent_draws_from_the_seed(tiny, tmp_path):
  """new_token_init='normal': N(0, 0.02) rows as transformers 4.x's resize_token_embeddings."""
  config, params = tiny
  model = hf_gpt2(config, cross_attention=False, resize=False)
  model.save_pretrained(tmp_path)
  wte = model.transformer.wte.weight.detach().numpy()
  new_rows = lambda seed: np.asarray(load_pretrained(
      params, config, gpt2=tmp_path, new_token_init="normal", seed=seed)["decoder"]["wte"]["embedding"])
  got = new_rows(0)
  np.testing.assert_array_equal(got[:vocab.GPT2_VOCAB_SIZE], wte)
  np.testing.assert_array_equal(new_rows(0), got)
  assert not np.allclose(new_rows(1)[vocab.GPT2_VOCAB_SIZE:], got[vocab.GPT2_VOCAB_SIZE:])
  assert len({tuple(r) for r in got[vocab.GPT2_VOCAB_SIZE:]}) == 4  # not one shared row
  # The draw itself: 4 x 768 values of N(0, 0.02).
  grown = gpt2_map.grow_word_table(vocab.VOCAB_SIZE, "normal", seed=0)(
      np.ones((vocab.GPT2_VOCAB_SIZE, 768), np.float32))
  drawn = grown[vocab.GPT2_VOCAB_SIZE:]
  assert drawn.dtype == np.float32 and abs(drawn.mean()) < 0.002
  np.testing.assert_allclose(drawn.std(), 0.02, rtol=0.05)
  with pytest.raises(ValueError, match="new_token_init"):
    gpt2_map.grow_word_table(vocab.VOCAB_SIZE, "zeros")


# --- errors -----------------------------------------------------------------------------------


@pytest.fixture
def gpt2_tensors(gpt2_dir):
  path, _ = gpt2_dir
  return load_file(path / "model.safetensors")


def expect_error(params, config, match, **sources):
  with pytest.raises(CheckpointError, match=match):
    load_pretrained(params, config, **sources)


def test_missing_key(tiny, gpt2_tensors, tmp_path):
  config, params = tiny
  del gpt2_tensors["transformer.h.1.mlp.c_fc.bias"]
  save_file(gpt2_tensors, tmp_path / "model.safetensors")
  expect_error(params, config, r"missing key 'transformer\.h\.1\.mlp\.c_fc\.bias'", gpt2=tmp_path)


def test_partial_cross_attention(tiny, gpt2_tensors, tmp_path):
  config, params = tiny
  del gpt2_tensors["transformer.h.0.crossattention.q_attn.weight"]
  save_file(gpt2_tensors, tmp_path / "model.safetensors")
  expect_error(params, config,
               r"missing key 'transformer\.h\.0\.crossattention\.q_attn\.weight'.*partial",
               gpt2=tmp_path)


def test_wrong_shape(tiny, gpt2_tensors, tmp_path):
  config, params = tiny
  gpt2_tensors["transformer.h.0.attn.c_proj.weight"] = np.zeros((64, 65), np.float32)
  save_file(gpt2_tensors, tmp_path / "model.safetensors")
  expect_error(params, config,
               r"'transformer\.h\.0\.attn\.c_proj\.weight' has shape \(64, 65\)"
               r".*expected \(64, 64\)", gpt2=tmp_path)


def test_extra_key(tiny, gpt2_tensors, tmp_path):
  config, params = tiny
  gpt2_tensors["transformer.h.2.ln_1.weight"] = np.ones((64,), np.float32)  # a third layer
  save_file(gpt2_tensors, tmp_path / "model.safetensors")
  expect_error(params, config, r"unexpected key 'transformer\.h\.2\.ln_1\.weight'.*2 layers",
               gpt2=tmp_path)


def test_untied_head(tiny, gpt2_tensors, tmp_path):
  config, params = tiny
  gpt2_tensors["lm_head.weight"] = gpt2_tensors["transformer.wte.weight"] + 1.0
  save_file(gpt2_tensors, tmp_path / "model.safetensors")
  expect_error(params, config, r"lm_head\.weight", gpt2=tmp_path)


def test_unreadable_and_absent_files(tiny, tmp_path):
  config, params = tiny
  bad = tmp_path / "model.safetensors"
  bad.write_bytes(b"this is not a safetensors file")
  expect_error(params, config, r"model\.safetensors: cannot read", gpt2=bad)
  expect_error(params, config, r"does not exist", gpt2=tmp_path / "nope.safetensors")
  expect_error(params, config, r"unsupported checkpoint format '\.txt'",
               clip=_write(tmp_path / "w.txt", b"x"))
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "pytorch_model.bin.txt").write_bytes(b"")
  expect_error(params, config, r"holds no model\.safetensors", gpt2=empty)


def test_wrong_kind_of_checkpoint(tiny, gpt2_dir, clip_dir):
  config, params = tiny
  expect_error(params, config, r"not a CLIP vision checkpoint", clip=gpt2_dir[0])
  expect_error(params, config, r"missing key 'wte\.weight'", gpt2=clip_dir[0])


def _write(path, data: bytes):
  path.write_bytes(data)
  return path


# --- full size ------------------------------------------------------------------------------


def zeros_like_params(config):
  from sevlm_jax.models import init_params  # pylint: disable=import-outside-toplevel
  shapes = jax.eval_shape(lambda r: init_params(config, r), jax.random.key(0))
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


@pytest.mark.slow
def test_gpt2_parity_distilgpt2_size(tmp_path):
  """distilgpt2's layout (50257 rows, grown to 50261 on import); segments from GPT-2's vocabulary."""
  config = dataclasses.replace(ModelConfig(), use_vad_embedding=False, emotion_segment_id=100,
                               explanation_segment_id=200)
  model = hf_gpt2(config, resize=False)
  model.save_pretrained(tmp_path)
  params = load_pretrained(zeros_like_params(config), config, gpt2=tmp_path)
  check_gpt2_parity(config, params, model)


@pytest.mark.slow
def test_clip_parity_vit_b16_size(tmp_path):
  config = dataclasses.replace(ModelConfig(), use_vad_embedding=False)
  model = hf_clip_vision(config)
  model.save_pretrained(tmp_path)
  params = load_pretrained(zeros_like_params(config), config, clip=tmp_path)
  check_clip_parity(config, params, model, batch=1)

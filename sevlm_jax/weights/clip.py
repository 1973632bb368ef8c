"""Key maps: CLIP vision tower checkpoints -> params['vision'].

Two layouts are read:
- Hugging Face: CLIPModel files (vision keys under 'vision_model.', text tower
  and projections ignored) and CLIPVisionModel files (no prefix from recent
  transformers, 'vision_model.' from older ones). Linear weights (out, in) are
  transposed; the patch conv (D, 3, p, p) becomes (p, p, 3, D).
- OpenAI CLIP state dicts ('visual.' prefix in full-model files, text tower
  and 'visual.proj' ignored): the fused attention in_proj (3D, D) is split into
  q, k, v.
"""

import numpy as np

from sevlm_jax.models.config import VisionConfig
from sevlm_jax.errors import CheckpointError
from sevlm_jax.weights.mapping import KeyMap, Rule, chunk, conv_to_hwio, transpose

HF = "huggingface"
OPENAI = "openai"

_OPENAI_TEXT_PREFIXES = ("transformer.", "token_embedding.", "ln_final.")
_OPENAI_TEXT_KEYS = ("positional_embedding", "text_projection", "logit_scale", "input_resolution",
                     "context_length", "vocab_size")
_HF_OTHER_KEYS = ("text_projection.weight", "visual_projection.weight", "logit_scale")


def detect_layout(tensors: dict[str, np.ndarray], where: str) -> tuple[str, str]:
  """(layout, key prefix) of a CLIP checkpoint."""
  for prefix in ("vision_model.", ""):
    if prefix + "embeddings.patch_embedding.weight" in tensors:
      return HF, prefix
  for prefix in ("visual.", ""):
    if prefix + "conv1.weight" in tensors:
      return OPENAI, prefix
  raise CheckpointError(
      f"{where}: not a CLIP vision checkpoint: it has neither"
      " '[vision_model.]embeddings.patch_embedding.weight' (Hugging Face) nor"
      f" '[visual.]conv1.weight' (OpenAI CLIP); first keys: {sorted(tensors)[:5]}")


def _norm(rules, src, dst):
  rules.append(Rule(src + ".weight", dst + ("scale",)))
  rules.append(Rule(src + ".bias", dst + ("bias",)))


def _linear(rules, src, dst):
  rules.append(Rule(src + ".weight", dst + ("kernel",), transpose))
  rules.append(Rule(src + ".bias", dst + ("bias",)))


def _hint(config: VisionConfig) -> str:
  return (f"Expected a CLIP ViT with {config.layers} layers, width {config.width}, patch"
          f" {config.patch_size} at {config.image_size}px (model.vision.*).")


def hf_key_map(config: VisionConfig, prefix: str) -> KeyMap:
  p = prefix
  rules = [
      Rule(p + "embeddings.class_embedding", ("class_embedding",)),
      Rule(p + "embeddings.patch_embedding.weight", ("patch_embedding", "kernel"), conv_to_hwio),
      Rule(p + "embeddings.position_embedding.weight", ("position_embedding",)),
  ]
  _norm(rules, p + "pre_layrnorm", ("ln_pre",))
  for i in range(config.layers):
    src, dst = f"{p}encoder.layers.{i}.", (f"layers_{i}",)
    _norm(rules, src + "layer_norm1", dst + ("ln_1",))
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
      _linear(rules, src + "self_attn." + proj, dst + ("attn", proj))
    _norm(rules, src + "layer_norm2", dst + ("ln_2",))
    _linear(rules, src + "mlp.fc1", dst + ("fc1",))
    _linear(rules, src + "mlp.fc2", dst + ("fc2",))
  _norm(rules, p + "post_layernorm", ("ln_post",))

  def ignore(key: str) -> bool:
    return (key == p + "embeddings.position_ids" or key.startswith("text_model.")
            or key in _HF_OTHER_KEYS)

  return KeyMap(tuple(rules), ignore, _hint(config))


def openai_key_map(config: VisionConfig, prefix: str) -> KeyMap:
  p = prefix
  rules = [
      Rule(p + "class_embedding", ("class_embedding",)),
      Rule(p + "positional_embedding", ("position_embedding",)),
      Rule(p + "conv1.weight", ("patch_embedding", "kernel"), conv_to_hwio),
  ]
  _norm(rules, p + "ln_pre", ("ln_pre",))
  for i in range(config.layers):
    src, dst = f"{p}transformer.resblocks.{i}.", (f"layers_{i}",)
    _norm(rules, src + "ln_1", dst + ("ln_1",))
    for j, proj in enumerate(("q_proj", "k_proj", "v_proj")):
      rules.append(Rule(src + "attn.in_proj_weight", dst + ("attn", proj, "kernel"),
                        chunk(j, 3, transpose)))
      rules.append(Rule(src + "attn.in_proj_bias", dst + ("attn", proj, "bias"), chunk(j, 3)))
    _linear(rules, src + "attn.out_proj", dst + ("attn", "out_proj"))
    _norm(rules, src + "ln_2", dst + ("ln_2",))
    _linear(rules, src + "mlp.c_fc", dst + ("fc1",))
    _linear(rules, src + "mlp.c_proj", dst + ("fc2",))
  _norm(rules, p + "ln_post", ("ln_post",))

  def ignore(key: str) -> bool:
    if key == p + "proj":  # projection into the joint space: not used by SEVLM
      return True
    # The text tower of a full-model file (its keys have no 'visual.' prefix).
    return p == "visual." and (key.startswith(_OPENAI_TEXT_PREFIXES) or key in _OPENAI_TEXT_KEYS)

  return KeyMap(tuple(rules), ignore, _hint(config))


def key_map(config: VisionConfig, tensors: dict[str, np.ndarray], where: str) -> KeyMap:
  layout, prefix = detect_layout(tensors, where)
  return (hf_key_map if layout == HF else openai_key_map)(config, prefix)

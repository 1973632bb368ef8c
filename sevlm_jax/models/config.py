"""Model configuration: frozen dataclasses, presets, strict conversion from dicts.

Configs files hold the model section as an ml_collections.ConfigDict
(`model_config_dict(preset)` then field overrides); `ModelConfig.from_dict`
turns it into the frozen, hashable dataclasses the modules take. Unknown
fields are errors, so a typo in a config file never passes silently.
"""

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp
import ml_collections

from sevlm_jax import vocab

IMAGE_NORMS = ("clip", "imagenet")
VAD_INITS = ("flax", "public")
DTYPES = ("float32", "bfloat16")
ATTENTION_IMPLS = ("xla", "cudnn")
DECODE_KERNEL_IMPLS = ("xla", "pallas", "pallas_interpret")  # models/decode_kernels.py


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """CLIP ViT image tower (pre-LN, class token, QuickGELU)."""
  image_size: int = 224
  patch_size: int = 16
  width: int = 768
  layers: int = 12
  heads: int = 12
  mlp_dim: int = 3072

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """GPT-2 decoder with a cross-attention sub-layer in every block."""
  vocab_size: int = vocab.VOCAB_SIZE
  max_positions: int = 1024
  width: int = 768
  layers: int = 6
  heads: int = 12
  mlp_dim: int = 3072
  dropout: float = 0.1


@dataclasses.dataclass(frozen=True)
class VADConfig:
  """Tiny transformer over per-token (valence, arousal, dominance) vectors."""
  width: int = 3
  layers: int = 3
  heads: int = 1
  mlp_dim: int = 128
  max_positions: int = 1024
  causal: bool = True  # False reproduces the public code's bidirectional encoder
  # False: padding keys are attended to as well, as the public encoder is given no mask
  # (with causal=False, real tokens then see the padding after them).
  mask_padding: bool = True
  dropout: float = 0.1
  # Initial weights of its Dense layers: 'flax' (lecun_normal kernels, zero biases) | 'public'
  # (as the public code's module starts: PyTorch nn.Linear's U(+-1/sqrt(fan_in)) kernels and
  # biases, and every layer a copy of the first; see models/vad.py).
  init: str = "flax"


@dataclasses.dataclass(frozen=True)
class HeadConfig:
  """Contrastive MLP over (image, emotion, explanation) features."""
  hidden: int = 768
  layers: int = 4  # hidden Linear+ReLU layers before the scalar output
  # True: the explanation mean also covers the padding positions, as in the public code (the
  # decoder then computes padding positions as the public code does, see SEVLM.__call__).
  mean_over_padding: bool = False


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vision: VisionConfig = VisionConfig()
  decoder: DecoderConfig = DecoderConfig()
  vad: VADConfig = VADConfig()
  contrastive: HeadConfig = HeadConfig()
  use_vad_embedding: bool = True
  image_norm: str = "clip"  # 'imagenet' reproduces the public code
  dtype: str = "float32"  # compute dtype; parameters stay float32
  # The vision tower's attention: 'xla' (einsums, any device) or 'cudnn' (fused kernel;
  # NVIDIA GPU with dtype bfloat16).
  vision_attention: str = "xla"
  # A decoding step's attentions and VAD encoder: 'xla' XLA's path everywhere (the default
  # until the kernels have run on a GPU: README, "Speed"), 'pallas' one Pallas kernel each where
  # the program is compiled for an NVIDIA GPU of sm_80 or later (XLA's path elsewhere),
  # 'pallas_interpret' the kernels interpreted on any device (slow; for checking them).
  decode_kernels: str = "xla"
  # The image-blind control: every image is replaced by a constant mid grey before the tower.
  blank_images: bool = False
  emotion_segment_id: int = vocab.EMOTION_SEGMENT_ID
  explanation_segment_id: int = vocab.EXPLANATION_SEGMENT_ID
  # 0: the emotion / explanation parts come from the segment ids. N > 0: the first N positions
  # are the emotion part and the rest (padding included) the explanation part, for the VAD
  # fusion, the VAD loss and the contrastive means; the public code hard-codes 6, so for the
  # seven 5-token emotions " because" counts as emotion part.
  fixed_emotion_len: int = 0

  def __post_init__(self):
    _validate(self)

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any] | ml_collections.ConfigDict) -> "ModelConfig":
    """Builds a ModelConfig from a (possibly nested) dict or ConfigDict; unknown fields raise."""
    if isinstance(d, ModelConfig):
      return d
    return _from_dict(cls, _as_dict(d), prefix="model")

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


_SUB_CONFIGS = {"vision": VisionConfig, "decoder": DecoderConfig, "vad": VADConfig,
                "contrastive": HeadConfig}


def _as_dict(d) -> dict[str, Any]:
  if isinstance(d, ml_collections.ConfigDict):
    return d.to_dict()
  if not isinstance(d, Mapping):
    raise TypeError(f"model config must be a dict or ConfigDict, got {type(d).__name__}")
  return dict(d)


def _from_dict(cls, d: dict[str, Any], prefix: str):
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(d) - set(fields))
  if unknown:
    raise ValueError(f"unknown model config field '{prefix}.{unknown[0]}'"
                     f" (known fields of {prefix}: {', '.join(fields)})")
  kwargs = {}
  for name, value in d.items():
    sub = _SUB_CONFIGS.get(name) if cls is ModelConfig else None
    if sub is not None and not isinstance(value, sub):
      value = _from_dict(sub, _as_dict(value), prefix=f"{prefix}.{name}")
    kwargs[name] = value
  return cls(**kwargs)


def _validate(c: ModelConfig) -> None:
  def fail(msg):
    raise ValueError(f"invalid model config: {msg}")

  if c.image_norm not in IMAGE_NORMS:
    fail(f"model.image_norm={c.image_norm!r}; expected one of {IMAGE_NORMS}")
  if c.vad.init not in VAD_INITS:
    fail(f"model.vad.init={c.vad.init!r}; expected one of {VAD_INITS}")
  if c.dtype not in DTYPES:
    fail(f"model.dtype={c.dtype!r}; expected one of {DTYPES}")
  if c.vision_attention not in ATTENTION_IMPLS:
    fail(f"model.vision_attention={c.vision_attention!r}; expected one of {ATTENTION_IMPLS}")
  if c.decode_kernels not in DECODE_KERNEL_IMPLS:
    fail(f"model.decode_kernels={c.decode_kernels!r}; expected one of"
         f" {DECODE_KERNEL_IMPLS}")
  if c.vision_attention == "cudnn" and c.dtype != "bfloat16":
    fail("model.vision_attention='cudnn' needs model.dtype='bfloat16' (cuDNN's fused attention"
         " has no float32 kernel)")
  if c.vision.image_size % c.vision.patch_size:
    fail(f"model.vision.image_size={c.vision.image_size} is not a multiple of"
         f" model.vision.patch_size={c.vision.patch_size}")
  for name, width, heads in (("vision", c.vision.width, c.vision.heads),
                             ("decoder", c.decoder.width, c.decoder.heads),
                             ("vad", c.vad.width, c.vad.heads)):
    if width % heads:
      fail(f"model.{name}.width={width} is not divisible by model.{name}.heads={heads}")
  if c.vision.width != c.decoder.width:
    # Cross-attention K/V (HF GPT-2 layout) and the contrastive head take patch
    # features of the decoder's width.
    fail(f"model.vision.width={c.vision.width} must equal model.decoder.width={c.decoder.width}")
  for name in ("emotion_segment_id", "explanation_segment_id"):
    if not 0 <= getattr(c, name) < c.decoder.vocab_size:
      fail(f"model.{name}={getattr(c, name)} is outside the vocabulary"
           f" (model.decoder.vocab_size={c.decoder.vocab_size})")
  if c.emotion_segment_id == c.explanation_segment_id:
    fail("model.emotion_segment_id and model.explanation_segment_id must differ")
  for name, value in (("vad.mask_padding", c.vad.mask_padding),
                      ("contrastive.mean_over_padding", c.contrastive.mean_over_padding)):
    if not isinstance(value, bool):
      fail(f"model.{name}={value!r}; expected True or False")
  if (isinstance(c.fixed_emotion_len, bool) or not isinstance(c.fixed_emotion_len, int)
      or not 0 <= c.fixed_emotion_len < c.decoder.max_positions):
    fail(f"model.fixed_emotion_len={c.fixed_emotion_len!r}; expected 0 (parts from the segment"
         " ids) or the number of leading emotion-part positions (6 in the public code), below"
         f" model.decoder.max_positions={c.decoder.max_positions}")


def _preset(preset: str) -> ModelConfig:
  if preset == "base":
    # CLIP ViT-B/16 at 224 + distilgpt2 + the VAD encoder of the paper.
    return ModelConfig()
  if preset == "tiny":
    return ModelConfig(
        vision=VisionConfig(image_size=32, patch_size=8, width=64, layers=2, heads=4, mlp_dim=128),
        decoder=DecoderConfig(max_positions=64, width=64, layers=2, heads=4, mlp_dim=256),
        vad=VADConfig(max_positions=64),
        contrastive=HeadConfig(hidden=64),
    )
  raise ValueError(f"unknown model preset {preset!r}; expected 'base' or 'tiny'")


def model_config_dict(preset: str = "base") -> ml_collections.ConfigDict:
  """The model section of a config file for a preset ('base' or 'tiny'), ready to override."""
  return ml_collections.ConfigDict(_preset(preset).to_dict())

"""Key maps: the authors' released SEVLM checkpoint -> every part of the params but the vision tower.

The public code saves (artEmisX_train.py, save_checkpoint) into one directory:

  nle_model_<name>/        save_pretrained of its GPT-2 subclass: config.json and
                           pytorch_model.bin (model.safetensors from newer transformers):
                           'transformer.*' (decoder with cross-attention, 'transformer.VAD_linear'),
                           'VAD_head.*', 'sim_mlp.pred.{0,2,4,6,8}.*' (the contrastive head),
                           causal-mask buffers and 'lm_head.weight' (tied to the word table)
  ckpt_stats_<name>.tar    torch.save of a dict whose 'emo_encoder_state_dict' is the VAD encoder
                           ('pos_encoder', 'norm', 'encoder.layers.{i}.*'; its 'decoder' Linear(3, 1)
                           is never used by the model), beside the optimiser and scheduler states
  nle_gpt2_tokenizer_0/    the tokenizer: GPT-2's BPE plus the same 4 added tokens (not read)

Both torch files are read without torch (weights.torch_zip). Every key must map onto a
parameter of the right shape and every parameter must be in the checkpoint.
"""

import json
import pathlib
import re

import numpy as np

from sevlm_jax import io_utils
from sevlm_jax.errors import CheckpointError
from sevlm_jax.models.config import ModelConfig
from sevlm_jax.weights import io as weights_io
from sevlm_jax.weights import torch_zip
from sevlm_jax.weights.mapping import KeyMap, Rule, transpose

HUB_PATTERNS = ("nle_model_*/*", "ckpt_stats_*.tar")
MODEL_DIR = re.compile(r"^nle_model_(.+)$")
DECODER_PARTS = ("decoder", "vad_fusion", "vad_head", "contrastive_head")
_CONTRASTIVE_LAYERS = (0, 2, 4, 6, 8)  # the Linear layers of sim_mlp.pred (ReLUs between)


# --- finding the files ------------------------------------------------------------------------


def locate(source: str) -> tuple[pathlib.Path, pathlib.Path]:
  """(nle_model_<name> directory, ckpt_stats_<name>.tar) of a source.

  source: a hub name (downloaded), a directory holding one nle_model_<name>/ and its
  ckpt_stats_<name>.tar, or an nle_model_<name> directory itself (to pick one of several).
  """
  if not io_utils.is_local(source) and io_utils.as_path(source).exists():
    source = io_utils.local_copy_tree(source)  # gs://...: read from a local copy, downloaded once
  path = pathlib.Path(source).expanduser()
  if not path.exists():
    if weights_io.looks_like_hub_name(source):
      path = weights_io.download(source, HUB_PATTERNS,
                                 "a local directory holding nle_model_<name>/ and"
                                 " ckpt_stats_<name>.tar")
    else:
      raise CheckpointError(f"pretrained.sevlm: '{source}' does not exist")
  if not path.is_dir():
    raise CheckpointError(f"pretrained.sevlm: '{path}' is not a directory; pass the directory"
                          " holding nle_model_<name>/ and ckpt_stats_<name>.tar")
  match = MODEL_DIR.match(path.name)
  if match:
    model_dir, root = path, path.parent
  else:
    found = sorted(p for p in path.iterdir() if p.is_dir() and MODEL_DIR.match(p.name))
    if not found:
      raise CheckpointError(f"{path}: no nle_model_<name>/ directory (the public code's"
                            " save_pretrained output); pass the directory the authors' checkpoint"
                            " was downloaded to")
    if len(found) > 1:
      raise CheckpointError(f"{path} holds several models ({', '.join(p.name for p in found)});"
                            " pass one of them, e.g. --config.pretrained.sevlm="
                            f"{found[-1]}")
    model_dir, root = found[0], path
    match = MODEL_DIR.match(model_dir.name)
  stats = root / f"ckpt_stats_{match.group(1)}.tar"
  if not stats.is_file():
    raise CheckpointError(f"{stats} is missing: the VAD encoder of {model_dir.name} is saved"
                          " there ('emo_encoder_state_dict')")
  return model_dir, stats


def _weights_file(model_dir: pathlib.Path) -> pathlib.Path:
  for name in ("model.safetensors", "pytorch_model.bin"):
    if (model_dir / name).is_file():
      return model_dir / name
  if (model_dir / "pytorch_model.bin.index.json").is_file() or (
      model_dir / "model.safetensors.index.json").is_file():
    raise CheckpointError(f"{model_dir}: sharded checkpoints are not supported here")
  raise CheckpointError(f"{model_dir}: neither model.safetensors nor pytorch_model.bin")


def read_decoder_tensors(model_dir: pathlib.Path) -> tuple[dict[str, np.ndarray], str]:
  """The GPT-2 subclass's tensors (float32 numpy), after checking its config.json."""
  config_path = model_dir / "config.json"
  if config_path.is_file():
    try:
      cfg = json.loads(config_path.read_text("utf-8"))
    except ValueError as e:  # invalid JSON or not UTF-8
      raise CheckpointError(f"{config_path}: not a readable JSON file ({e})") from None
    if cfg.get("len_prefix") or 0:
      raise CheckpointError(f"{config_path}: len_prefix={cfg['len_prefix']}; only models trained"
                            " without the CLIP prefix (the public default, 0) can be imported")
  path = _weights_file(model_dir)
  try:
    if path.suffix == ".safetensors":
      from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
      tensors = load_file(str(path))
    else:
      tensors = torch_zip.load(path)
  except CheckpointError:
    raise
  except Exception as e:  # corrupt or truncated files raise many different types
    raise CheckpointError(f"{path}: cannot read it ({type(e).__name__}: {e})") from None
  if not isinstance(tensors, dict):
    raise CheckpointError(f"{path}: expected a state dict, found {type(tensors).__name__}")
  return tensors, str(path)


def read_vad_encoder_tensors(stats: pathlib.Path) -> tuple[dict[str, np.ndarray], str]:
  try:
    saved = torch_zip.load(stats)
  except CheckpointError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f"{stats}: cannot read it ({type(e).__name__}: {e})") from None
  state = saved.get("emo_encoder_state_dict") if isinstance(saved, dict) else None
  if not isinstance(state, dict):
    raise CheckpointError(f"{stats}: no 'emo_encoder_state_dict' (a model trained without the"
                          " VAD encoder); import it with --config.model.use_vad_embedding=False")
  return dict(state), f"{stats} ['emo_encoder_state_dict']"


# --- key maps ---------------------------------------------------------------------------------


def _linear(src: str, dst: tuple[str, ...]) -> list[Rule]:
  return [Rule(src + ".weight", dst + ("kernel",), transpose), Rule(src + ".bias", dst + ("bias",))]


def decoder_key_map(config: ModelConfig, gpt2_key_map: KeyMap) -> KeyMap:
  """nle_model_* keys -> params paths under DECODER_PARTS (cross-attention required).

  gpt2_key_map: weights.gpt2.key_map(config.decoder, 'transformer.'), whose rules are the
  decoder's and whose ignore predicate skips the causal-mask buffers and the tied lm_head.
  """
  rules = []
  for r in gpt2_key_map.rules:
    # The word table already has SEVLM's 50261 rows: no growing, and nothing optional.
    transform = (lambda x: x) if r.target == ("wte", "embedding") else r.transform
    rules.append(Rule(r.source, ("decoder",) + r.target, transform))
  rules += _linear("transformer.VAD_linear", ("vad_fusion",))
  rules += _linear("VAD_head", ("vad_head",))
  names = [f"hidden_{i}" for i in range(config.contrastive.layers)] + ["out"]
  if len(names) != len(_CONTRASTIVE_LAYERS):
    raise CheckpointError(f"model.contrastive.layers={config.contrastive.layers}; the public"
                          f" contrastive head has {len(_CONTRASTIVE_LAYERS) - 1}")
  for index, name in zip(_CONTRASTIVE_LAYERS, names):
    rules += _linear(f"sim_mlp.pred.{index}", ("contrastive_head", name))
  return KeyMap(tuple(rules), gpt2_key_map.ignore,
                hint=f"Expected the public SEVLM GPT-2 subclass with {config.decoder.layers} layers,"
                     f" width {config.decoder.width}, cross-attention, VAD_linear, VAD_head and"
                     " the contrastive head (model.*).")


def _first_rows(rows: int):
  """The public encoder's position table has 5000 rows; the first model.vad.max_positions are used."""
  return lambda table: table[:rows] if table.shape[0] > rows else table


def vad_encoder_key_map(config: ModelConfig) -> KeyMap:
  """emo_encoder_state_dict keys -> params['vad_encoder'] paths."""
  rules = [Rule("pos_encoder.weight", ("position_embedding",),
                _first_rows(config.vad.max_positions)),
           Rule("norm.weight", ("norm", "scale")), Rule("norm.bias", ("norm", "bias"))]
  for i in range(config.vad.layers):
    src, dst = f"encoder.layers.{i}.", (f"layers_{i}",)
    for proj in ("query", "key", "value"):
      rules += _linear(src + "self_attention." + proj, dst + (proj,))
    rules += _linear(src + "fc.0", dst + ("fc1",))
    rules += _linear(src + "fc.2", dst + ("fc2",))
    for norm in ("norm1", "norm2"):
      rules += [Rule(src + norm + ".weight", dst + (norm, "scale")),
                Rule(src + norm + ".bias", dst + (norm, "bias"))]

  def ignore(key: str) -> bool:  # the encoder's Linear(3, 1) head, unused by SEVLM
    return key in ("decoder.weight", "decoder.bias")

  return KeyMap(tuple(rules), ignore,
                hint=f"Expected the public VAD encoder with {config.vad.layers} layers, width"
                     f" {config.vad.width} (model.vad.*).")

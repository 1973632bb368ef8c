"""ArtEmis's released text-to-emotion classifier and its vocabulary, read without PyTorch.

ArtEmis's README links the classifier as `best_model.pt`: torch.save of the whole
TextEmotionClassifier (notebooks/deep_nets/emotions/utterance_to_emotion_classifier.ipynb, through
in_out/neural_net_oriented.torch_save_model). Its words are numbered by `vocabulary.pkl`, the
pickled Vocabulary that ArtEmis's `preprocess_artemis_data.py --preprocess-for-deep-nets True`
writes. Both are read by torch_module's restricted unpickler, which admits only the classes such
files hold; the module graph is then turned into an ArtemisClfSpec (the layer layout and sizes)
and Flax variables for models/artemis_text_clf.py.

    spec, variables = load_classifier("best_model.pt")
    vocab = load_vocabulary("vocabulary.pkl")
"""

import dataclasses
import os
from typing import Any

import numpy as np

from sevlm_jax.errors import CheckpointError
from sevlm_jax.models.artemis_text_clf import ArtemisClfSpec, Layer
from sevlm_jax.weights import torch_module

CLASSIFIER = "ArtEmis's text-to-emotion classifier (best_model.pt)"
VOCABULARY = "ArtEmis's vocabulary (vocabulary.pkl)"

_ARTEMIS = "artemis.neural_models."
_NN = "torch.nn.modules."
CLASSIFIER_CLASSES = (
    _ARTEMIS + "text_emotional_clf.TextEmotionClassifier", _ARTEMIS + "lstm_encoder.LSTMEncoder",
    _ARTEMIS + "mlp.MLP", _NN + "container.Sequential", _NN + "sparse.Embedding", _NN + "linear.Linear",
    _NN + "activation.ReLU", _NN + "dropout.Dropout", _NN + "batchnorm.BatchNorm1d", _NN + "rnn.LSTM",
    "torch.nn.parallel.data_parallel.DataParallel")
# ArtEmis's class; the public SEVLM code carries a copy of it in its basics.py.
VOCABULARY_CLASSES = ("artemis.utils.vocabulary.Vocabulary", "basics.Vocabulary")


@dataclasses.dataclass(frozen=True)
class ArtemisVocabulary:
  """Vocabulary's word numbering and the indices of its special symbols."""
  word2idx: dict[str, int]
  pad: int
  sos: int
  eos: int
  unk: int

  def ids(self, words) -> list[int]:
    """Vocabulary.__call__ of each word: its index, or <unk>'s."""
    return [self.word2idx.get(w, self.unk) for w in words]


def load_vocabulary(path: str | os.PathLike) -> ArtemisVocabulary:
  vocab = torch_module.load_pickle(path, VOCABULARY_CLASSES, VOCABULARY)
  state = vocab.state if isinstance(vocab, torch_module.PickledObject) else None
  word2idx = state.get("word2idx") if isinstance(state, dict) else None
  specials = {k: state.get(k) for k in ("pad", "sos", "eos", "unk")} if isinstance(state, dict) else {}
  if not (isinstance(word2idx, dict) and all(isinstance(v, int) for v in specials.values())
          and len(specials) == 4):
    raise CheckpointError(f"{path}: not a pickled ArtEmis Vocabulary (no word2idx with pad, sos, eos and unk); "
                          f"give the path of {VOCABULARY}")
  if not all(isinstance(w, str) and isinstance(i, int) for w, i in word2idx.items()):
    raise CheckpointError(f"{path}: its word2idx maps something other than words to indices; give the path of "
                          f"{VOCABULARY}")
  return ArtemisVocabulary(word2idx=dict(word2idx), **specials)


def _is(obj: Any, class_suffix: str) -> bool:
  return isinstance(obj, torch_module.PickledObject) and obj.class_path.endswith(class_suffix)


def _child(module: torch_module.PickledObject, name: str) -> Any:
  """A submodule (registered in _modules) or a plain attribute (None where ArtEmis passed None)."""
  modules = module.get("_modules") or {}
  return modules[name] if name in modules else module.get(name)


def _tensor(module, name: str, path, where: str) -> np.ndarray | None:
  for holder in ("_parameters", "_buffers"):
    table = module.get(holder) or {}
    if name in table:
      value = table[name]
      if value is not None and not isinstance(value, np.ndarray):
        raise CheckpointError(f"{path}: {where}.{name} is not a tensor")
      return value
  return None


class _Reader:
  """Walks the pickled module graph into (spec, params, batch_stats), naming the part it reads."""

  def __init__(self, path):
    self.path = path
    self.params: dict[str, Any] = {}
    self.batch_stats: dict[str, Any] = {}

  def fail(self, where: str, what: str) -> CheckpointError:
    return CheckpointError(f"{self.path}: {where} {what}; {CLASSIFIER} is not a network this reader knows")

  def need(self, module, name: str, where: str, shape: tuple | None = None) -> np.ndarray:
    value = _tensor(module, name, self.path, where)
    if value is None:
      raise self.fail(where, f"has no tensor {name}")
    if shape is not None and value.shape != shape:
      raise self.fail(where, f"{name} has shape {value.shape}, expected {shape}")
    return np.asarray(value, np.float32)

  def leaves(self, module, where: str) -> list[tuple[Any, str]]:
    """The modules of a chain in order: Sequential and MLP flattened, others as they are."""
    if _is(module, ".Sequential"):
      modules = module.get("_modules") or {}
      return [leaf for key, m in modules.items() for leaf in self.leaves(m, f"{where}.{key}")]
    if _is(module, ".MLP"):
      return self.leaves(_child(module, "net"), f"{where}.net")
    return [(module, where)]

  def chain(self, leaves, prefix: str, in_dim: int) -> tuple[tuple[Layer, ...], int]:
    """Layers of a chain (Dropout left out: the identity in evaluation) and its output width."""
    layers = []
    for module, where in leaves:
      name = f"{prefix}_{len(layers)}"
      if _is(module, ".Dropout"):
        continue
      if _is(module, ".ReLU"):
        layers.append(Layer("relu"))
      elif _is(module, ".Linear"):
        weight = self.need(module, "weight", where)
        if weight.ndim != 2 or weight.shape[1] != in_dim:
          raise self.fail(where, f"weight has shape {weight.shape}, its input is {in_dim} wide")
        self.params[name] = {"kernel": weight.T.copy()}
        bias = _tensor(module, "bias", self.path, where)
        if bias is not None:
          self.params[name]["bias"] = self.need(module, "bias", where, (weight.shape[0],))
        layers.append(Layer("linear", features=weight.shape[0], use_bias=bias is not None))
        in_dim = weight.shape[0]
      elif _is(module, ".BatchNorm1d"):
        if not module.get("track_running_stats", True):
          raise self.fail(where, "keeps no running statistics (it would normalise by each batch's)")
        shape = (in_dim,)
        self.batch_stats[name] = {"mean": self.need(module, "running_mean", where, shape),
                                  "var": self.need(module, "running_var", where, shape)}
        affine = bool(module.get("affine", True))
        if affine:
          self.params[name] = {"scale": self.need(module, "weight", where, shape),
                               "bias": self.need(module, "bias", where, shape)}
        layers.append(Layer("batchnorm", eps=float(module.get("eps", 1e-5)), affine=affine))
      else:
        raise self.fail(where, f"is a {getattr(module, 'class_path', type(module).__name__)}, not Linear, "
                        "ReLU, BatchNorm1d or Dropout")
    return tuple(layers), in_dim

  def lstm(self, rnn, in_dim: int, where: str) -> tuple[int, int, bool]:
    if not _is(rnn, ".LSTM") or rnn.get("mode", "LSTM") != "LSTM":
      raise self.fail(where, "is not an nn.LSTM")
    if rnn.get("bidirectional") or rnn.get("proj_size", 0) or not rnn.get("batch_first"):
      raise self.fail(where, "is bidirectional, projected or not batch_first (ArtEmis's is none of these)")
    hidden, layers, bias = int(rnn.get("hidden_size")), int(rnn.get("num_layers", 1)), bool(rnn.get("bias", True))
    if int(rnn.get("input_size")) != in_dim:
      raise self.fail(where, f"takes inputs {rnn.get('input_size')} wide, the word layers give {in_dim}")
    for layer in range(layers):
      width = in_dim if layer == 0 else hidden
      params = {"w_ih": self.need(rnn, f"weight_ih_l{layer}", where, (4 * hidden, width)),
                "w_hh": self.need(rnn, f"weight_hh_l{layer}", where, (4 * hidden, hidden))}
      if bias:
        params["b_ih"] = self.need(rnn, f"bias_ih_l{layer}", where, (4 * hidden,))
        params["b_hh"] = self.need(rnn, f"bias_hh_l{layer}", where, (4 * hidden,))
      self.params[f"lstm_{layer}"] = params
    return hidden, layers, bias


def load_classifier(path: str | os.PathLike) -> tuple[ArtemisClfSpec, dict, int]:
  """(spec, variables {'params', 'batch_stats'}, the <eos> index the encoder was built with)."""
  root = torch_module.load_module(path, CLASSIFIER_CLASSES, CLASSIFIER)
  reader = _Reader(path)
  if _is(root, ".DataParallel"):
    root = _child(root, "module")
  if not _is(root, ".TextEmotionClassifier"):
    raise CheckpointError(f"{path}: holds a {getattr(root, 'class_path', type(root).__name__)}, not ArtEmis's "
                          f"TextEmotionClassifier; give the path of {CLASSIFIER}")
  if _child(root, "img_encoder") is not None:
    raise reader.fail("TextEmotionClassifier", "also reads the image (img_encoder); only the text-only one "
                      "(ArtEmis's released judge) is supported")
  encoder = _child(root, "text_encoder")
  if not _is(encoder, ".LSTMEncoder"):
    raise reader.fail("text_encoder", "is not ArtEmis's LSTMEncoder")
  if _child(encoder, "init_h") is not None or _child(encoder, "init_c") is not None:
    raise reader.fail("text_encoder", "starts its LSTM from the image (init_h, init_c)")
  feature = encoder.get("feature_type")
  if feature not in ("max", "last", "mean"):
    raise reader.fail("text_encoder", f"pools with feature_type {feature!r}, not max, last or mean")

  word_leaves = reader.leaves(_child(encoder, "word_embedding"), "text_encoder.word_embedding")
  embedding, where = word_leaves[0]
  if not _is(embedding, ".Embedding") or embedding.get("max_norm") is not None:
    raise reader.fail(where, "is not an nn.Embedding without max_norm")
  table = reader.need(embedding, "weight", where)
  if table.ndim != 2:
    raise reader.fail(where, f"weight has shape {table.shape}")
  reader.params["embedding"] = {"embedding": table}
  transformation = _child(encoder, "word_transformation")
  if transformation is not None:
    word_leaves += reader.leaves(transformation, "text_encoder.word_transformation")
  word_layers, width = reader.chain(word_leaves[1:], "word", table.shape[1])
  hidden, lstm_layers, lstm_bias = reader.lstm(_child(encoder, "rnn"), width, "text_encoder.rnn")
  head_layers, out = reader.chain(reader.leaves(_child(root, "clf_head"), "clf_head"), "head", hidden)
  if out != 9 or not head_layers or head_layers[-1].kind != "linear":
    raise reader.fail("clf_head", f"ends in {out} outputs, not a Linear to the 9 emotions")
  spec = ArtemisClfSpec(vocab_size=table.shape[0], embed_dim=table.shape[1], word_layers=word_layers,
                        lstm_dim=hidden, lstm_layers=lstm_layers, lstm_bias=lstm_bias, feature=feature,
                        head_layers=head_layers)
  eos = encoder.get("eos")
  return spec, {"params": reader.params, "batch_stats": reader.batch_stats}, eos

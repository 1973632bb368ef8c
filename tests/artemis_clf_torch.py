"""A PyTorch restatement of ArtEmis's text-to-emotion classifier and its Vocabulary (for tests).

Restated from reading optas/artemis (not copied): neural_models/text_emotional_clf.py
(TextEmotionClassifier), neural_models/lstm_encoder.py (LSTMEncoder), neural_models/mlp.py (MLP),
utils/vocabulary.py (Vocabulary), the network built as notebooks/deep_nets/emotions/
utterance_to_emotion_classifier.ipynb builds it (GloVe path: a frozen Embedding.from_pretrained,
then Dropout, Linear, ReLU, Dropout, Linear to the LSTM; 'max' features; MLP [100, 9] with
BatchNorm) and EA's way of feeding it (evaluation/single_caption_per_image.py
emotional_alignment: whitespace split, Vocabulary.encode(max_len=longest), chunks of 1000).

The classes carry ArtEmis's module paths (registered in sys.modules), so torch.save(model) and
pickle.dump(vocab) write the class references ArtEmis's own files hold.
"""

import pickle
import sys
import types

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

SPECIAL_SYMBOLS = ["<pad>", "<sos>", "<eos>", "<unk>"]


class Vocabulary:
  """ArtEmis's Vocabulary: word2idx / idx2word / idx, the special symbols first, and their
  indices as attributes pad, sos, eos, unk."""

  def __init__(self):
    self.word2idx, self.idx2word, self.idx = {}, {}, 0
    self.special_symbols = SPECIAL_SYMBOLS
    for s in self.special_symbols:
      self.add_word(s)
    for s in self.special_symbols:
      setattr(self, s.strip("<>"), self(s))

  def add_word(self, word):
    if word not in self.word2idx:
      self.word2idx[word] = self.idx
      self.idx2word[self.idx] = word
      self.idx += 1

  def __call__(self, word):
    return self.word2idx.get(word, self.word2idx["<unk>"])

  def __len__(self):
    return len(self.word2idx)

  def encode(self, text, max_len=None):
    """[sos] + ids (cropped to max_len) + [eos], padded by max_len - len(text) pads."""
    encoded = [self(t) for t in text]
    if max_len is not None:
      encoded = encoded[:max_len]
    encoded = [self("<sos>")] + encoded + [self("<eos>")]
    if max_len is not None:
      encoded += [self("<pad>")] * (max_len - len(text))
    return encoded

  def save(self, path):
    with open(path, "wb") as f:
      pickle.dump(self, f, protocol=2)  # as Vocabulary.save


class MLP(nn.Module):
  """Linear layers; between them BatchNorm1d, the non-linearity and Dropout; a plain last one."""

  def __init__(self, in_feat_dims, out_channels, b_norm=True, dropout_rate=0,
               non_linearity=nn.ReLU(inplace=True)):
    super().__init__()
    ops, previous = [], in_feat_dims
    for depth, out_dim in enumerate(out_channels):
      ops.append(nn.Linear(previous, out_dim, bias=True))
      if depth < len(out_channels) - 1:
        if b_norm:
          ops.append(nn.BatchNorm1d(out_dim))
        ops.append(non_linearity)
        if dropout_rate > 0:
          ops.append(nn.Dropout(p=dropout_rate))
      previous = out_dim
    self.hidden_dimensions = out_channels[:-1]
    self.embedding_dimension = out_channels[-1]
    self.net = nn.Sequential(*ops)

  def __call__(self, x):
    return self.net(x)


class LSTMEncoder(nn.Module):
  """Embeds tokens[:, 1:] (skipping <sos>), packs them by the position of <eos>, runs the LSTM and
  pools its padded output ('last', 'max' or 'mean')."""

  def __init__(self, n_input, n_hidden, word_embedding, word_transformation=None, bidirectional=False,
               init_h=None, init_c=None, eos_symbol=None, feature_type="last"):
    super().__init__()
    self.word_embedding = word_embedding
    self.n_hidden = n_hidden
    self.eos = eos_symbol
    self.feature_type = feature_type
    self.word_transformation = word_transformation
    self.init_h = init_h
    self.init_c = init_c
    self.rnn = nn.LSTM(input_size=n_input, hidden_size=n_hidden, bidirectional=bidirectional,
                       batch_first=True)

  def __call__(self, tokens):
    w_emb = self.word_embedding(tokens[:, 1:])
    if self.word_transformation is not None:
      w_emb = self.word_transformation(w_emb)
    lengths = torch.where(tokens == self.eos)[1] - 1
    packed = pack_padded_sequence(w_emb, lengths, enforce_sorted=False, batch_first=True)
    out, _ = self.rnn(packed)
    out, _ = pad_packed_sequence(out, batch_first=True)  # zeros up to the chunk's longest
    if self.feature_type == "last":
      return out[torch.arange(len(tokens)), lengths - 1]
    if self.feature_type == "max":
      return out.max(1).values
    if self.feature_type == "mean":
      return out.sum(1) / lengths.view(-1, 1)
    raise ValueError(self.feature_type)


class TextEmotionClassifier(nn.Module):

  def __init__(self, text_encoder, clf_head, img_encoder=None):
    super().__init__()
    self.text_encoder = text_encoder
    self.clf_head = clf_head
    self.img_encoder = img_encoder

  def __call__(self, text):
    return self.clf_head(self.text_encoder(text))


_PATHS = {"artemis.neural_models.text_emotional_clf": [TextEmotionClassifier],
          "artemis.neural_models.lstm_encoder": [LSTMEncoder],
          "artemis.neural_models.mlp": [MLP],
          "artemis.utils.vocabulary": [Vocabulary]}


def _register_artemis_paths() -> None:
  """Puts the classes at ArtEmis's module paths, so that pickle names them as ArtEmis does."""
  for path, classes in _PATHS.items():
    parts = path.split(".")
    for i in range(1, len(parts) + 1):
      sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    for cls in classes:
      cls.__module__ = path
      setattr(sys.modules[path], cls.__name__, cls)


_register_artemis_paths()


def make_vocabulary(words) -> Vocabulary:
  vocab = Vocabulary()
  for w in words:
    vocab.add_word(w)
  return vocab


def make_classifier(vocab: Vocabulary, seed: int = 0, emb_dim: int = 100, lstm_dim: int = 256,
                    feature_type: str = "max", dropout_rate: float = 0.25) -> TextEmotionClassifier:
  """The notebook's network (GloVe path) with random weights and BatchNorm statistics, in eval mode."""
  torch.manual_seed(seed)
  rng = np.random.default_rng(seed)
  weights = rng.standard_normal((len(vocab), emb_dim)).astype(np.float32)
  weights[vocab.pad] = 0  # make_pretrained_embedding zeroes the padding row
  embedding = nn.Embedding.from_pretrained(torch.from_numpy(weights), freeze=True, padding_idx=vocab.pad)
  projected = nn.Sequential(embedding, nn.Dropout(dropout_rate, inplace=True), nn.Linear(emb_dim, lstm_dim),
                            nn.ReLU(), nn.Dropout(dropout_rate, inplace=True), nn.Linear(lstm_dim, lstm_dim))
  lstm = LSTMEncoder(lstm_dim, lstm_dim, projected, eos_symbol=vocab.eos, feature_type=feature_type)
  head = MLP(lstm_dim, [100, 9], dropout_rate=dropout_rate, b_norm=True)
  model = TextEmotionClassifier(lstm, head)
  with torch.no_grad():
    for p in model.parameters():
      if p.requires_grad:
        p.mul_(2.0)  # larger than the init, so that the LSTM's outputs vary in sign and size
    norm = head.net[1]
    norm.running_mean.copy_(torch.randn(100) * 0.3)
    norm.running_var.copy_(torch.rand(100) + 0.5)
    norm.num_batches_tracked.fill_(17)
  return model.eval()


def save_classifier(model, path, legacy: bool = False) -> None:
  """torch.save(model) as artemis.in_out.neural_net_oriented.torch_save_model (warnings aside);
  legacy: the pre-1.6 format ArtEmis's own PyTorch 1.3.1 wrote."""
  torch.save(model, path, _use_new_zipfile_serialization=not legacy)


@torch.no_grad()
def ea_logits(model, vocab: Vocabulary, texts, batch_size: int = 1000) -> np.ndarray:
  """Logits as ArtEmis's EA computes them: split, encode to the longest, chunks of batch_size."""
  tokenized = [t.split() for t in texts]
  max_len = max(len(t) for t in tokenized)
  ids = torch.from_numpy(np.vstack([np.array(vocab.encode(t, max_len=max_len)) for t in tokenized]))
  return torch.cat([model(ids[i:i + batch_size]) for i in range(0, len(ids), batch_size)]).numpy()

"""A PyTorch restatement of the public SEVLM code's forward pass and losses (for parity tests).

Restated from BetterZH/SEVLM-code (models/gpt.py, models/vad_encoder.py, artEmisX_train.py),
len_prefix 0, eval mode (no dropout). Module and parameter names are the public code's, so
`save_public_checkpoint` writes files in the layout its save_checkpoint writes:

- VADTransformer: the `Transformer` of vad_encoder.py (emo_encoder): learned positions,
  LayerNorm, layers of [attention without output projection + residual, norm1, ReLU MLP +
  residual, norm2] each wrapped in one more residual; no mask at all; an unused Linear(3, 1).
- PublicSEVLM: the GPT2LMHeadModel subclass of gpt.py: GPT-2 blocks with cross-attention to the
  patch tokens, given no attention mask; input embedding = word + position + segment (the
  token_type_ids embedded with the word table); positions >= 6 get VAD_linear([embedding,
  VAD-encoder output]); tied LM head; VAD_head; the contrastive head sim_mlp over
  [mean of patches, mean of hidden[:, :6], mean of hidden[:, 6:]] (padding included).
- Losses as gpt.py computes them: CrossEntropyLoss over labels[:, 1:] (-100 ignored); the VAD
  loss VAD_head(hidden[:, 5:])[:, :-1] against VAD_labels[:, 6:] where the target is not
  [0, 0, 0] (CustomMSELoss); -log(eps + e^pos / (eps + e^pos + sum e^neg)), eps 1e-8, with the
  pair partner's explanation and another image's (rows given by the caller instead of the
  public `neg_ids` draw, so that both sides use the same ones).
"""

import json
import math
import os

import torch
from torch import nn
from torch.nn import functional as F

EPSILON = 1e-8
EMOTION_LEN = 6  # hard-coded in the public gpt.py


class Conv1D(nn.Module):
  """transformers' Conv1D: weight (in, out), y = x @ W + b."""

  def __init__(self, nf, nx):
    super().__init__()
    self.weight = nn.Parameter(torch.empty(nx, nf).normal_(std=0.02))
    self.bias = nn.Parameter(torch.zeros(nf))

  def forward(self, x):
    return x @ self.weight + self.bias


class GPT2Attention(nn.Module):

  def __init__(self, width, heads, max_positions, is_cross_attention=False):
    super().__init__()
    # Buffers of the public code (saved in its state dicts).
    self.register_buffer("bias", torch.tril(torch.ones(max_positions, max_positions,
                                                       dtype=torch.uint8))[None, None])
    self.register_buffer("masked_bias", torch.tensor(-1e4))
    self.heads, self.width = heads, width
    self.is_cross_attention = is_cross_attention
    if is_cross_attention:
      self.c_attn = Conv1D(2 * width, width)
      self.q_attn = Conv1D(width, width)
    else:
      self.c_attn = Conv1D(3 * width, width)
    self.c_proj = Conv1D(width, width)

  def _split(self, x):
    b, l, _ = x.shape
    return x.view(b, l, self.heads, -1).permute(0, 2, 1, 3)

  def forward(self, h, encoder_hidden_states=None):
    if encoder_hidden_states is not None:
      q = self.q_attn(h)
      k, v = self.c_attn(encoder_hidden_states).split(self.width, dim=2)
    else:
      q, k, v = self.c_attn(h).split(self.width, dim=2)
    q, k, v = self._split(q), self._split(k), self._split(v)
    w = q @ k.transpose(-1, -2) / (float(v.size(-1)) ** 0.5)
    if not self.is_cross_attention:
      lq, lk = q.size(-2), k.size(-2)
      causal = self.bias[:, :, lk - lq:lk, :lk].bool()
      w = torch.where(causal, w, self.masked_bias.to(w.dtype))
    w = torch.softmax(w, dim=-1)
    out = (w @ v).permute(0, 2, 1, 3).reshape(h.shape[0], h.shape[1], self.width)
    return self.c_proj(out)


class GPT2MLP(nn.Module):

  def __init__(self, width, inner):
    super().__init__()
    self.c_fc = Conv1D(inner, width)
    self.c_proj = Conv1D(width, inner)

  def forward(self, x):
    return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))  # gelu_new


class GPT2Block(nn.Module):

  def __init__(self, width, heads, inner, max_positions):
    super().__init__()
    self.ln_1 = nn.LayerNorm(width, eps=1e-5)
    self.attn = GPT2Attention(width, heads, max_positions)
    self.ln_2 = nn.LayerNorm(width, eps=1e-5)
    self.crossattention = GPT2Attention(width, heads, max_positions, is_cross_attention=True)
    self.ln_cross_attn = nn.LayerNorm(width, eps=1e-5)
    self.mlp = GPT2MLP(width, inner)

  def forward(self, h, patches):
    h = h + self.attn(self.ln_1(h))
    h = h + self.crossattention(self.ln_cross_attn(h), encoder_hidden_states=patches)
    return h + self.mlp(self.ln_2(h))


class GPT2Model(nn.Module):

  def __init__(self, vocab_size, width, layers, heads, inner, max_positions):
    super().__init__()
    self.wte = nn.Embedding(vocab_size, width)
    self.VAD_linear = nn.Linear(width + 3, width)  # pylint: disable=invalid-name
    self.wpe = nn.Embedding(max_positions, width)
    self.h = nn.ModuleList([GPT2Block(width, heads, inner, max_positions) for _ in range(layers)])
    self.ln_f = nn.LayerNorm(width, eps=1e-5)

  def forward(self, input_ids, token_type_ids, patches, emo_features):
    positions = torch.arange(input_ids.shape[1])[None]
    h = self.wte(input_ids) + self.wpe(positions) + self.wte(token_type_ids)
    if emo_features is not None:
      emotion_part = h[:, :EMOTION_LEN]
      explanation_part = self.VAD_linear(torch.cat((h[:, EMOTION_LEN:],
                                                    emo_features[:, EMOTION_LEN:]), dim=2))
      h = torch.cat((emotion_part, explanation_part), 1)
    for block in self.h:
      h = block(h, patches)
    return self.ln_f(h)


class ContrastiveHead(nn.Module):

  def __init__(self, im_dim, hidden, lang_dim):
    super().__init__()
    self.pred = nn.Sequential(nn.Linear(2 * lang_dim + im_dim, hidden), nn.ReLU(),
                              nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                              nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

  def forward(self, img, emo, exp):
    return self.pred(torch.cat([img, emo, exp], -1)).squeeze()


class PublicSEVLM(nn.Module):
  """The public GPT2LMHeadModel subclass (use_cl_loss and use_VAD_loss on, len_prefix 0)."""

  def __init__(self, vocab_size, width, layers, heads, inner, max_positions, head_hidden):
    super().__init__()
    self.transformer = GPT2Model(vocab_size, width, layers, heads, inner, max_positions)
    self.lm_head = nn.Linear(width, vocab_size, bias=False)
    self.lm_head.weight = self.transformer.wte.weight  # tied, as in GPT-2
    self.sim_mlp = ContrastiveHead(width, head_hidden, width)
    self.VAD_head = nn.Linear(width, 3)  # pylint: disable=invalid-name
    self.config = dict(vocab_size=vocab_size, n_embd=width, n_layer=layers, n_head=heads,
                       n_inner=inner, n_positions=max_positions, add_cross_attention=True,
                       len_prefix=0, use_cl_loss=True, use_VAD_loss=True, encoder_dim=width,
                       model_type="gpt2", architectures=["GPT2LMHeadModel"])

  def forward(self, input_ids, token_type_ids, patches, emo_features, labels=None,
              vad_labels=None, other_rows=None):
    hidden = self.transformer(input_ids, token_type_ids, patches, emo_features)
    logits = self.lm_head(hidden)
    out = {"logits": logits, "hidden": hidden}
    if labels is None:
      return out
    encoder_mean = patches.mean(1)
    emotion_mean = hidden[:, :EMOTION_LEN].mean(1)
    explanation_mean = hidden[:, EMOTION_LEN:].mean(1)
    n = hidden.shape[0]
    partner = torch.arange(n) ^ 1
    pos = self.sim_mlp(encoder_mean, emotion_mean, explanation_mean)
    neg = torch.stack([self.sim_mlp(encoder_mean, emotion_mean, explanation_mean[partner]),
                       self.sim_mlp(encoder_mean, emotion_mean, explanation_mean[other_rows])], -1)
    out["contrastive"] = (-torch.log(EPSILON + torch.exp(pos) / (
        EPSILON + torch.exp(pos) + torch.exp(neg).sum(-1)))).mean()
    out["lm"] = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                labels[:, 1:].reshape(-1), ignore_index=-100)
    vad_pred = self.VAD_head(hidden[:, EMOTION_LEN - 1:])[:, :-1]
    target = vad_labels[:, EMOTION_LEN:]
    mask = torch.any(target != 0, dim=-1)
    out["vad"] = ((vad_pred - target)[mask] ** 2).mean()
    return out


class Attention(nn.Module):
  """vad_encoder.py's Attention: q/k/v projections, scaled dot product, no output projection."""

  def __init__(self, width, heads):
    super().__init__()
    self.heads = heads
    self.query = nn.Linear(width, width)
    self.key = nn.Linear(width, width)
    self.value = nn.Linear(width, width)

  def forward(self, x):
    b, l, d = x.shape
    split = lambda t: t.view(b, l, self.heads, -1).permute(0, 2, 1, 3)
    q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), dim=-1)
    return (w @ v).permute(0, 2, 1, 3).reshape(b, l, d)


class TransformerLayer(nn.Module):

  def __init__(self, width, heads, mlp_dim):
    super().__init__()
    self.self_attention = Attention(width, heads)
    self.fc = nn.Sequential(nn.Linear(width, mlp_dim), nn.ReLU(), nn.Linear(mlp_dim, width))
    self.norm1 = nn.LayerNorm(width)
    self.norm2 = nn.LayerNorm(width)

  def forward(self, x):
    x = self.norm1(x + self.self_attention(x))
    return self.norm2(x + self.fc(x))


class TransformerEncoder(nn.Module):

  def __init__(self, width, heads, mlp_dim, layers):
    super().__init__()
    self.layers = nn.ModuleList([TransformerLayer(width, heads, mlp_dim) for _ in range(layers)])

  def forward(self, x):
    for layer in self.layers:
      x = x + layer(x)
    return x


class VADTransformer(nn.Module):
  """vad_encoder.py's Transformer (the emo_encoder); forward returns its hidden states."""

  def __init__(self, width=3, layers=3, heads=1, mlp_dim=128, max_positions=5000):
    super().__init__()
    self.pos_encoder = nn.Embedding(max_positions, width)
    self.encoder = TransformerEncoder(width, heads, mlp_dim, layers)
    self.decoder = nn.Linear(width, 1)  # saved, never used by SEVLM
    self.norm = nn.LayerNorm(width)

  def forward(self, vad):
    x = vad + self.pos_encoder(torch.arange(vad.shape[1]))[None]
    return self.encoder(self.norm(x))


def randomize(module: nn.Module, seed: int, std: float = 0.02) -> None:
  """Random weights everywhere (LayerNorm scales around 1), deterministic given the seed."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
      if isinstance(dict(module.named_modules()).get(name.rsplit(".", 1)[0]), nn.LayerNorm):
        p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * noise)
      elif "pos_encoder" in name or "VAD_linear" in name:
        p.copy_(noise * (1.0 if "pos_encoder" in name else 0.1))
      else:
        p.copy_(noise * std)


def save_public_checkpoint(model: PublicSEVLM, emo_encoder: VADTransformer, directory: str,
                           name: str = "11", safetensors: bool = False) -> None:
  """What the public save_checkpoint writes: nle_model_<name>/ (config.json and
  pytorch_model.bin, as save_pretrained with torch.save wrote it; or model.safetensors, where
  the tied lm_head is dropped as transformers does) and ckpt_stats_<name>.tar."""
  model_dir = os.path.join(directory, f"nle_model_{name}")
  os.makedirs(model_dir, exist_ok=True)
  with open(os.path.join(model_dir, "config.json"), "w", encoding="utf-8") as f:
    json.dump(model.config, f)
  state = model.state_dict()
  if safetensors:
    from safetensors.torch import save_file  # pylint: disable=import-outside-toplevel
    state = {k: v.contiguous() for k, v in state.items() if k != "lm_head.weight"}
    save_file(state, os.path.join(model_dir, "model.safetensors"))
  else:
    torch.save(state, os.path.join(model_dir, "pytorch_model.bin"))
  optimizer = torch.optim.AdamW(list(model.parameters())[:2], lr=2e-5)
  scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
  torch.save({"epoch": int(name) if name.isdigit() else 0,
              "optimizer_state_dict": optimizer.state_dict(),
              "emo_encoder_state_dict": emo_encoder.state_dict(),
              "scheduler": scheduler.state_dict(), "best_acc": 0.5, "best_res": 0.1},
             os.path.join(directory, f"ckpt_stats_{name}.tar"))

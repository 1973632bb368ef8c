"""benchmark/cpu_peak.py: the model's matrix-product FLOPs and the share of a measured peak."""

from sevlm_jax.benchmark import cpu_peak
from sevlm_jax.models.config import ModelConfig


def test_full_size_tower_counts_vit_b16_multiply_adds_twice():
  # CLIP ViT-B/16 at 224 px: about 17.6 G multiply-adds per image (patch embedding, 12 layers).
  assert abs(cpu_peak.tower_flops(ModelConfig()) / 2e9 - 17.56) < 0.01


def test_one_more_token_adds_a_decoder_pass_and_an_lm_head_row():
  c = ModelConfig()
  d, m, v, p = c.decoder.width, c.decoder.mlp_dim, c.decoder.vocab_size, c.vision.num_patches
  fed = 4 + 25 - 1  # the position the 26th token's pass feeds
  per_layer = 2 * d * 3 * d + 3 * 2 * d * d + 2 * 2 * d * m + 2 * 2 * p * d + 2 * 2 * (fed + 1) * d
  step = cpu_peak.decoder_flops(c, 4, 26) - cpu_peak.decoder_flops(c, 4, 25)
  assert step == c.decoder.layers * per_layer + 2 * d * v


def test_share_is_achieved_flops_over_the_peak():
  fields = cpu_peak.share_fields(2.0, 50e9, {"peak": 400.0})
  assert fields == {"achieved_GFLOP_per_s": 100.0, "share_of_matmul_peak": 0.25}

"""Losses against NumPy references; masks, all-masked inputs, gradients, bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sevlm_jax.training import losses

B, L, V, K = 3, 7, 11, 2


def np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_lm_loss(logits, labels):
  logp = np_log_softmax(logits.astype(np.float64))
  valid = labels >= 0
  nll = -np.take_along_axis(logp, np.where(valid, labels, 0)[..., None], -1)[..., 0]
  return nll[valid].mean() if valid.any() else 0.0


def np_vad_loss(pred, target, mask):
  err = ((pred.astype(np.float64) - target) ** 2).mean(-1)
  return err[mask].mean() if mask.any() else 0.0


def np_contrastive(pos, neg):
  s = np.concatenate([pos[:, None], neg], -1).astype(np.float64)
  s = s - s.max(-1, keepdims=True)  # same value; keeps exp from overflowing for large scores
  return np.mean(-(s[:, 0] - np.log(np.exp(s).sum(-1))))  # -log(e^s+ / sum_j e^s_j)


@pytest.fixture
def rng():
  return np.random.default_rng(0)


def random_labels(rng, ignore_frac=0.3):
  labels = rng.integers(0, V, (B, L))
  return np.where(rng.random((B, L)) < ignore_frac, -1, labels)


def test_lm_loss_matches_numpy(rng):
  logits = rng.normal(size=(B, L, V)).astype(np.float32) * 3
  labels = random_labels(rng)
  np.testing.assert_allclose(losses.lm_loss(logits, labels), np_lm_loss(logits, labels), rtol=1e-5)
  per_token = losses.lm_loss(logits, labels, reduction="none")
  assert per_token.shape == (B, L)
  assert np.all(np.asarray(per_token)[labels < 0] == 0)
  total = losses.lm_loss(logits, labels, reduction="sum")
  np.testing.assert_allclose(total / losses.num_targets(labels), np_lm_loss(logits, labels), rtol=1e-5)
  with pytest.raises(ValueError, match="reduction"):
    losses.lm_loss(logits, labels, reduction="avg")


def test_lm_loss_ignores_masked_positions(rng):
  logits = rng.normal(size=(B, L, V)).astype(np.float32)
  labels = random_labels(rng)
  other = np.where((labels < 0)[..., None], rng.normal(size=logits.shape) * 100, logits).astype(np.float32)
  np.testing.assert_allclose(losses.lm_loss(logits, labels), losses.lm_loss(other, labels), rtol=1e-6)
  # Any negative label is ignored, not only -1.
  np.testing.assert_allclose(losses.lm_loss(logits, np.where(labels < 0, -100, labels)),
                             losses.lm_loss(logits, labels), rtol=1e-6)


def test_lm_loss_is_stable_for_bf16_and_large_logits(rng):
  logits = (rng.normal(size=(B, L, V)) * 1e4).astype(np.float32)
  labels = random_labels(rng)
  np.testing.assert_allclose(losses.lm_loss(logits, labels), np_lm_loss(logits, labels), rtol=1e-5)
  bf16 = jnp.asarray(rng.normal(size=(B, L, V)), jnp.bfloat16)
  loss = losses.lm_loss(bf16, labels)
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, np_lm_loss(np.asarray(bf16.astype(jnp.float32)), labels), rtol=1e-5)
  grad = jax.grad(losses.lm_loss)(bf16, labels)
  assert grad.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(grad, np.float32)))


def test_shift_for_next_token(rng):
  logits = rng.normal(size=(B, L, V))
  labels = random_labels(rng)
  shifted_logits, shifted_labels = losses.shift_for_next_token(logits, labels)
  np.testing.assert_array_equal(shifted_logits, logits[:, :-1])
  np.testing.assert_array_equal(shifted_labels, labels[:, 1:])
  vad = rng.normal(size=(B, L, 3))
  pred, target = losses.shift_for_next_token(vad, vad)
  assert pred.shape == target.shape == (B, L - 1, 3)


def test_vad_loss_matches_numpy(rng):
  pred = rng.normal(size=(B, L, 3)).astype(np.float32)
  target = rng.normal(size=(B, L, 3)).astype(np.float32)
  mask = rng.random((B, L)) < 0.6
  np.testing.assert_allclose(losses.vad_loss(pred, target, mask), np_vad_loss(pred, target, mask), rtol=1e-5)
  np.testing.assert_allclose(losses.vad_loss(pred, target, mask.astype(np.float32)),
                             np_vad_loss(pred, target, mask), rtol=1e-5)
  other = np.where(mask[..., None], pred, 1e3).astype(np.float32)
  np.testing.assert_allclose(losses.vad_loss(other, target, mask), losses.vad_loss(pred, target, mask), rtol=1e-6)


def test_vad_loss_mask_drops_zero_targets_and_non_explanation(rng):
  target = rng.normal(size=(B, L, 3)).astype(np.float32)
  target[0, 2] = 0.0
  target[1, 4] = [0.0, 0.5, 0.0]  # one non-zero component is a real target
  explanation = np.ones((B, L), bool)
  explanation[2, :3] = False
  mask = np.asarray(losses.vad_loss_mask(target, explanation))
  expected = explanation.copy()
  expected[0, 2] = False
  np.testing.assert_array_equal(mask, expected)
  assert mask.dtype == bool


def test_contrastive_loss_matches_numpy(rng):
  pos = rng.normal(size=(B,)).astype(np.float32) * 5
  neg = rng.normal(size=(B, K)).astype(np.float32) * 5
  np.testing.assert_allclose(losses.contrastive_loss(pos, neg), np_contrastive(pos, neg), rtol=1e-5)
  # Large scores stay finite (logsumexp).
  np.testing.assert_allclose(losses.contrastive_loss(pos * 1e3, neg * 1e3), np_contrastive(pos * 1e3, neg * 1e3),
                             rtol=1e-4)
  # Example and negative masks.
  mask = np.array([True, False, True])
  np.testing.assert_allclose(losses.contrastive_loss(pos, neg, mask_B=mask),
                             np_contrastive(pos[mask], neg[mask]), rtol=1e-5)
  neg_mask = np.array([[True, False], [True, True], [False, False]])
  expected = np.mean([np_contrastive(pos[:1], neg[:1, :1]), np_contrastive(pos[1:2], neg[1:2]), 0.0])
  np.testing.assert_allclose(losses.contrastive_loss(pos, neg, neg_mask_BxK=neg_mask), expected, rtol=1e-5)


def test_masked_mean(rng):
  x = rng.normal(size=(B, L, 4)).astype(np.float32)
  mask = rng.random((B, L)) < 0.5
  mask[2] = False
  out = np.asarray(losses.masked_mean(x, mask))
  for b in range(2):
    np.testing.assert_allclose(out[b], x[b][mask[b]].mean(0) if mask[b].any() else 0.0, rtol=1e-5)
  np.testing.assert_array_equal(out[2], 0.0)


def test_all_masked_gives_zero_loss_and_finite_gradients(rng):
  logits = jnp.asarray(rng.normal(size=(B, L, V)), jnp.float32)
  labels = -np.ones((B, L), np.int32)
  pred = jnp.asarray(rng.normal(size=(B, L, 3)), jnp.float32)
  target = np.zeros((B, L, 3), np.float32)
  no_mask = np.zeros((B, L), bool)
  pos, neg = jnp.zeros((B,)), jnp.zeros((B, K))
  checks = [
      (lambda x: losses.lm_loss(x, labels), logits),
      (lambda x: losses.vad_loss(x, target, losses.vad_loss_mask(target, np.ones((B, L), bool))), pred),
      (lambda x: losses.masked_mean(x, no_mask).sum(), pred),
      (lambda x: losses.contrastive_loss(x, neg, mask_B=np.zeros(B, bool)), pos),
      (lambda x: losses.contrastive_loss(pos, x, neg_mask_BxK=np.zeros((B, K), bool)), neg),
  ]
  for fn, x in checks:
    value, grad = jax.value_and_grad(fn)(x)
    assert float(value) == 0.0
    assert np.all(np.isfinite(np.asarray(grad)))


def test_gradients_match_finite_differences(rng):
  logits = jnp.asarray(rng.normal(size=(B, L, V)), jnp.float32)
  labels = random_labels(rng)
  grad = np.asarray(jax.grad(losses.lm_loss)(logits, labels))
  # Analytic gradient of mean NLL: (softmax - onehot) / count at counted positions.
  valid = labels >= 0
  expected = np.exp(np_log_softmax(np.asarray(logits, np.float64)))
  expected[valid, labels[valid]] -= 1
  expected = np.where(valid[..., None], expected / valid.sum(), 0.0)
  np.testing.assert_allclose(grad, expected, atol=1e-6)


def test_total_loss_weights_and_skips():
  calls = []

  def expensive():
    calls.append(1)
    return jnp.float32(5.0)

  total, values = losses.total_loss({"lm": jnp.float32(2.0), "vad": expensive, "contrastive": jnp.float32(3.0)},
                                    {"lm": 1.0, "vad": 0.0, "contrastive": 0.5})
  assert float(total) == 3.5 and set(values) == {"lm", "contrastive"} and not calls
  total, values = losses.total_loss({"vad": expensive}, {"vad": 2.0})
  assert float(total) == 10.0 and calls == [1]
  with pytest.raises(KeyError, match="no weight"):
    losses.total_loss({"lm": 1.0}, {"vad": 1.0})
  # Jittable with static weights.
  total = jax.jit(lambda x: losses.total_loss({"a": x, "b": x * 2}, {"a": 1.0, "b": 0})[0])(jnp.float32(4.0))
  assert float(total) == 4.0

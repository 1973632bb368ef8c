"""train.drop_last=False (the public loader's last partial batch, trained and counted in the
schedule) and train.validate_final_step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sevlm_jax.data import pipeline
from sevlm_jax.data import sources
from sevlm_jax.data import tokenizer as tokenizer_lib
from sevlm_jax.data import vad_table as vad_table_lib
from sevlm_jax.models import build
from sevlm_jax.training import loop
from sevlm_jax.training import step as step_lib
from helpers import demo_root, load_config, tiny_config

B = 8  # images per batch: the demo's training images are not a multiple of it


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = demo_root(tmp_path_factory)
  config = tiny_config(root)
  ready = sources.resolve_ready_dir(config, str(root))
  tok = tokenizer_lib.load_tokenizer()
  vad_table = vad_table_lib.load_vad_table(config, tok, str(tmp_path_factory.mktemp("vad")))
  return config, ready, tok, jnp.asarray(vad_table)


def _epoch(ready, tok, *, shard_index=0, shard_count=1):
  loader = pipeline.train_loader(ready, tok, batch_size=B // shard_count, max_len=24, seed=0,
                                 num_epochs=1, shard_index=shard_index, shard_count=shard_count,
                                 drop_remainder=False)
  return list(iter(loader))


def test_an_epoch_has_ceil_n_over_b_batches_the_last_one_padded(setup):
  _, ready, tok, _ = setup
  n = len(pipeline.training_images(ready))
  assert n % B, "the test needs a partial last batch"
  batches = _epoch(ready, tok)
  assert len(batches) == -(-n // B) == pipeline.steps_per_epoch(ready, batch_size=B,
                                                                  drop_remainder=False)
  assert pipeline.steps_per_epoch(ready, batch_size=B) == n // B  # drop_last drops it
  assert all(b["valid"].all() for b in batches[:-1])
  np.testing.assert_array_equal(batches[-1]["valid"], np.arange(B) < n % B)  # real rows first
  real = np.concatenate([b["image_index"][b["valid"]] for b in batches])
  assert sorted(real.tolist()) == sorted(pipeline.training_images(ready).tolist())  # each once
  assert all(b["image"].shape[0] == B for b in batches)  # one shape: one compiled step
  # drop_remainder (the default) keeps the batches it had, with no 'valid' field.
  default = pipeline.train_loader(ready, tok, batch_size=B, max_len=24, seed=0, num_epochs=1,
                                  shard_index=0, shard_count=1)
  full = list(iter(default))
  assert len(full) == n // B and "valid" not in full[0]
  np.testing.assert_array_equal(full[0]["image_index"], batches[0]["image_index"])


def test_sharded_partial_batch_keeps_the_real_rows_first_in_the_global_batch(setup):
  _, ready, tok, _ = setup
  n = len(pipeline.training_images(ready))
  shards = [_epoch(ready, tok, shard_index=i, shard_count=2) for i in range(2)]
  assert len(shards[0]) == len(shards[1]) == -(-n // B)  # processes stay in lockstep
  whole = _epoch(ready, tok)
  for k in range(len(whole)):
    for key in ("valid", "image_index"):
      np.testing.assert_array_equal(
          np.concatenate([shards[0][k][key], shards[1][k][key]]), whole[k][key])


def test_schedule_counts_the_partial_batch(setup):
  config, ready, _, _ = setup
  n = len(pipeline.training_images(ready))
  config = config.copy_and_resolve_references()
  config.train.num_steps, config.train.num_epochs, config.train.batch_size = 0, 3, B
  assert loop.total_train_steps(config, ready) == 3 * (n // B)
  config.train.drop_last = False
  assert loop.total_train_steps(config, ready) == 3 * -(-n // B)  # t_total = len(loader) * epochs


def test_any_batch_size_fits_without_drop_last(setup):
  config, ready, _, _ = setup
  config = config.copy_and_resolve_references()
  config.train.batch_size = 4 * len(pipeline.training_images(ready))
  config.train.drop_last = False
  loop.check_batch_fits(config, ready, loop.check_parallel(config))


@pytest.mark.parametrize("num_valid", [1, 2, 5, B])
def test_real_images_draw_negatives_as_a_batch_of_their_own_would(num_valid):
  rng = jax.random.PRNGKey(3)
  rows = step_lib.other_image_rows(rng, B, "random", jnp.int32(num_valid))
  alone = step_lib.other_image_rows(rng, num_valid, "random")
  np.testing.assert_array_equal(rows[:2 * num_valid], alone)
  np.testing.assert_array_equal(rows[2 * num_valid:], np.arange(2 * num_valid, 2 * B))
  for seed in range(20):  # the public rule (neg_ids) over the real images only
    images = np.asarray(step_lib.public_negative_images_of_prefix(
        jax.random.PRNGKey(seed), B, jnp.int32(num_valid)))
    mid = num_valid // 2
    assert images[0] == mid
    assert sorted(images[1:num_valid - mid]) == list(range(mid + 1, num_valid))
    assert sorted(images[num_valid - mid:num_valid]) == list(range(mid))
    np.testing.assert_array_equal(images[num_valid:], np.arange(num_valid, B))


def test_the_padded_batchs_loss_is_the_loss_of_its_real_rows_alone(setup, make_random_params):
  config, ready, tok, vad_table = setup
  last = _epoch(ready, tok)[-1]
  r = int(last["valid"].sum())
  assert 0 < r < B
  keys = ("image", "input_ids", "segment_ids", "token_mask", "labels")
  padded = {k: jnp.asarray(last[k]) for k in keys + ("valid",)}
  alone = {k: jnp.asarray(last[k][:r]) for k in keys}
  model = build.build_model(config)
  params = make_random_params(model.config)

  def loss(batch):
    def f(p):
      return step_lib.sevlm_loss(model, p, batch, vad_table, config.loss, jax.random.PRNGKey(5),
                                 deterministic=True)
    return jax.jit(jax.value_and_grad(f, has_aux=True))(params)

  (total_p, metrics_p), grads_p = loss(padded)
  (total_a, metrics_a), grads_a = loss(alone)
  assert {"loss_lm", "loss_vad", "loss_contrastive"} <= metrics_p.keys()
  for k in metrics_a:
    np.testing.assert_allclose(metrics_p[k], metrics_a[k], rtol=2e-5, atol=1e-6, err_msg=k)
  np.testing.assert_allclose(total_p, total_a, rtol=2e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), grads_p,
               grads_a)
  # The padding rows are copies of real pairs: given weight, they would move the loss.
  unmasked = dict(padded, valid=jnp.ones(B, bool))
  assert abs(float(loss(unmasked)[0][0]) - float(total_a)) > 1e-4


@pytest.mark.parametrize("final, steps", [(True, [6, 12, 14]), (False, [6, 12])])
def test_validate_final_step(final, steps):
  train = load_config("demo").train
  train.eval_every, train.validate_final_step = 6, final
  assert [s for s in range(1, 15) if loop.validates_at(train, s, total_steps=14)] == steps

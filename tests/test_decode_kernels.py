"""The decoding step's Pallas kernels (models/decode_kernels.py) equal the XLA path.

There is no GPU here: the kernels run through Pallas's interpreter ('pallas_interpret'),
which executes the kernel's own program (its loads, masks, loop and stores). Everything in
float32, where both paths differ only in the order of their sums.
"""

import dataclasses
import json
import pathlib
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sevlm_jax import vocab
from sevlm_jax.inference.decode import generate, generate_details
from sevlm_jax.models import SEVLM, ModelConfig, init_params, model_config_dict
from sevlm_jax.models import decode_kernels
from sevlm_jax.models.vad import VADEncoder
from helpers import subprocess_env

PROMPT = [vocab.BOS_ID, 262, 9942, 318]


@pytest.fixture(autouse=True, scope="module")
def highest_precision():
  with jax.default_matmul_precision("highest"):
    yield


def normal(rng, *shape):
  return jnp.asarray(rng.standard_normal(shape), jnp.float32)


@pytest.mark.parametrize("num_keys", [5, 64, 196])  # under one block, one block, a ragged tail
def test_cross_attention_kernel_equals_xla(num_keys):
  rng = np.random.default_rng(0)
  q, k, v = normal(rng, 3, 4, 16), normal(rng, 3, num_keys, 4, 16), normal(rng, 3, num_keys, 4, 16)
  want = decode_kernels.cross_attention_step(q, k, v, "xla")
  got = decode_kernels.cross_attention_step(q, k, v, "pallas_interpret")
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# An empty cache, block edges, the last slot, and past the end (XLA clamps the write to the last
# slot; so does the kernel, which would otherwise write into the next row's cache).
@pytest.mark.parametrize("index", [0, 1, 63, 64, 69, 70, 75])
def test_self_attention_kernel_attends_to_earlier_slots_and_writes_its_own(index):
  rng = np.random.default_rng(1)
  qkv, cache = normal(rng, 3, 3, 4, 16), normal(rng, 3, 70, 2, 4, 16)
  want_out, want_cache = decode_kernels.self_attention_step(qkv, cache, jnp.int32(index), "xla")
  run = jax.jit(lambda *a: decode_kernels.self_attention_step(*a, "pallas_interpret"))
  got_out, got_cache = run(qkv, cache, jnp.int32(index))
  np.testing.assert_allclose(got_out, want_out, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(got_cache, want_cache)
  slot = min(index, cache.shape[1] - 1)
  np.testing.assert_array_equal(got_cache[:, slot], qkv[:, 1:])  # the step's key and value
  # Slots after it hold stale values that must not count: the output is unchanged by them.
  stale = cache.at[:, slot + 1:].set(1e4)
  np.testing.assert_allclose(run(qkv, stale, jnp.int32(index))[0], got_out, rtol=1e-6)


@pytest.mark.parametrize("index", [0, 7, 69, 70])
def test_vad_step_kernel_equals_the_encoders_step(index):
  config = ModelConfig.from_dict(model_config_dict("tiny")).vad
  encoder = VADEncoder(config)
  rng = np.random.default_rng(2)
  params = encoder.init(jax.random.key(0), jnp.zeros((1, 4, 3)), jnp.ones((1, 4)))["params"]
  params = jax.tree.map(lambda p: p + 0.3 * normal(rng, *p.shape), params)
  cache = tuple({"kv": normal(rng, 3, 70, 2, config.heads, config.width // config.heads)}
                for _ in range(config.layers))
  vad = normal(rng, 3, 1, 3)

  def step(impl):
    enc = VADEncoder(config, impl)
    return jax.jit(lambda p, v, c, i: enc.apply({"params": p}, v, c, i, method=VADEncoder.step))(
        params, vad, cache, jnp.int32(index))

  (want, want_cache), (got, got_cache) = step("xla"), step("pallas_interpret")
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  for w, g in zip(want_cache, got_cache):
    np.testing.assert_allclose(g["kv"], w["kv"], rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def tiny(tiny_decoding):
  return tiny_decoding


def with_kernels(config, impl):
  return dataclasses.replace(config, decode_kernels=impl)


def test_generation_with_the_kernels_equals_generation_without(tiny):
  """Greedy decoding through the kernels: the same tokens, and logits equal to rounding."""
  config, params, images, vad_table = tiny
  kw = dict(max_new_tokens=8, pad_id=vocab.PAD_ID, return_logits=True, because_id=262,
            eos_id=vocab.PREFIX_ID)
  want = generate(SEVLM(with_kernels(config, "xla")), params, images, vad_table, PROMPT, **kw)
  got = generate(SEVLM(with_kernels(config, "pallas_interpret")), params, images, vad_table,
                 PROMPT, **kw)
  np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_array_equal(got[1], want[1])
  np.testing.assert_allclose(got[2], want[2], rtol=1e-4, atol=1e-5)
  # On this CPU 'pallas' lowers the XLA path: the very same program's numbers.
  on_cpu = generate(SEVLM(with_kernels(config, "pallas")), params, images, vad_table, PROMPT,
                    **kw)
  np.testing.assert_array_equal(on_cpu[2], want[2])
  # The kernels are opt-in until they have run on a GPU (README, "Speed").
  assert config.decode_kernels == "xla"


def test_beam_search_and_traces_run_through_the_kernels(tiny):
  """Beam search reorders the kernels' caches by rows; the traced loop mixes the kernels
  (self-attention, VAD) with the XLA cross-attention that records where the text looks."""
  config, params, images, vad_table = tiny
  for method in ("beam", "greedy"):
    kw = dict(max_new_tokens=6, pad_id=vocab.PAD_ID, because_id=262, eos_id=vocab.PREFIX_ID,
              method=method, trace=method == "greedy")
    if method == "beam":
      kw["beam_width"] = 2
    want = generate_details(SEVLM(with_kernels(config, "xla")), params, images, vad_table,
                            PROMPT, **kw)
    got = generate_details(SEVLM(with_kernels(config, "pallas_interpret")), params, images,
                           vad_table, PROMPT, **kw)
    np.testing.assert_array_equal(got["tokens"], want["tokens"])
    for name in ("attention", "vad"):
      if name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5)


def triton_kernels(config, platform):
  """The Pallas (Triton) kernels in the decoding program lowered for `platform` (lowering
  needs no device: here, the CPU lowers a program for an NVIDIA GPU)."""
  params = jax.eval_shape(lambda r: init_params(config, r), jax.random.key(0))
  images = jax.ShapeDtypeStruct((3, 32, 32, 3), jnp.uint8)
  table = jax.ShapeDtypeStruct((config.decoder.vocab_size, 3), jnp.float32)
  run = jax.jit(lambda p, im, t: generate(SEVLM(config), p, im, t, PROMPT, max_new_tokens=4,
                                          because_id=262, eos_id=1, pad_id=vocab.PAD_ID))
  text = run.trace(params, images, table).lower(lowering_platforms=(platform,)).as_text()
  calls = re.findall(r'custom_call @__gpu\$xla\.gpu\.triton.*?name = \\?"(\w+)', text)
  return sorted(calls)


def test_the_kernels_are_chosen_where_the_program_is_lowered_for_an_nvidia_gpu(tiny):
  """In the loop, one kernel per attention sub-layer of each decoder layer and one for the VAD
  encoder (the prompt's step, several tokens at once, stays on XLA's path); none for the CPU
  or with model.decode_kernels=xla."""
  config = with_kernels(tiny[0], "pallas")
  assert triton_kernels(config, "cuda") == sorted(
      ["_self_kernel", "_cross_kernel"] * config.decoder.layers + ["_vad_kernel"])
  assert triton_kernels(config, "cpu") == []
  assert triton_kernels(with_kernels(config, "xla"), "cuda") == []


def test_unknown_kernel_choice_is_refused():
  with pytest.raises(ValueError, match="model.decode_kernels='triton'; expected one of"):
    ModelConfig.from_dict({**model_config_dict("tiny").to_dict(), "decode_kernels": "triton"})


_SPLIT_SCRIPT = textwrap.dedent("""
    import dataclasses, json, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from sevlm_jax import vocab
    from sevlm_jax.inference.decode import generate
    from sevlm_jax.models import SEVLM, ModelConfig, model_config_dict
    from sevlm_jax.models import decode_kernels as dk
    sys.path.insert(0, "tests")
    from conftest import random_params
    mesh = Mesh(np.array(jax.devices()), ("data",))
    rows = NamedSharding(mesh, P("data"))
    rng = np.random.default_rng(0)
    result = {"devices": jax.device_count()}

    # One kernel called directly: built for each device's rows, no operand gathered.
    q, k, v = (jnp.asarray(rng.standard_normal(s), jnp.float32)
               for s in ((4, 2, 8), (4, 20, 2, 8), (4, 20, 2, 8)))
    seen = []  # the batch sizes the kernel is traced for
    def kernel(q, k, v):
      seen.append(q.shape[0])
      return dk.cross_attention_kernel(q, k, v, interpret=True)
    split = jax.jit(lambda *a: dk._split_by_rows(kernel, (True, True, True), *a))
    args = [jax.device_put(x, rows) for x in (q, k, v)]
    out = split(*args)
    result.update(spec=list(out.sharding.spec), kernel_batches=sorted(set(seen)),
                  gathers=split.lower(*args).compile().as_text().count("all-gather"),
                  err=float(jnp.max(jnp.abs(out - dk.cross_attention_step(q, k, v, "xla")))))

    # Whole decoding, images split over the devices: all three kernels, inside the loop.
    config = ModelConfig.from_dict(model_config_dict("tiny"))
    params = random_params(config, seed=0, std=0.3)
    images = jax.device_put(rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), rows)
    vad_table = rng.uniform(-1, 1, (config.decoder.vocab_size, 3)).astype(np.float32)
    for method in ("greedy", "beam"):
      kw = dict(max_new_tokens=5, pad_id=vocab.PAD_ID, because_id=262, eos_id=vocab.PREFIX_ID,
                method=method, beam_width=2)
      run = lambda impl: generate(SEVLM(dataclasses.replace(config, decode_kernels=impl)), params,
                                  images, vad_table, [vocab.BOS_ID, 262, 9942, 318], **kw)[0]
      want, got = run("xla"), run("pallas_interpret")
      result[method] = {"equal": bool(np.array_equal(got, want)), "spec": list(got.sharding.spec)}
    print(json.dumps(result))
""")


def test_kernels_run_on_each_devices_own_rows(tmp_path):
  """With the batch split over devices, each runs the kernels on its own rows: no gather of the
  operands, the output stays split, the values are the whole batch's; and whole decodings
  (greedy, and beam search, which reorders rows) give XLA's path's tokens."""
  env = subprocess_env(tmp_path / "cache")
  env["XLA_FLAGS"] += " --xla_force_host_platform_device_count=2"
  done = subprocess.run([sys.executable, "-c", _SPLIT_SCRIPT], env=env, capture_output=True,
                        text=True, timeout=600, check=False, cwd=pathlib.Path(__file__).parents[1])
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])
  assert result["devices"] == 2
  assert result["spec"] == ["data"]
  # Lowered for each device's 2 of the 4 rows (4 only in the shape check of the whole call).
  assert 2 in result["kernel_batches"]
  assert result["gathers"] == 0  # the kernel called unsplit: 9 all-gathers, a replicated output
  assert result["err"] < 1e-5
  for method in ("greedy", "beam"):
    assert result[method] == {"equal": True, "spec": ["data"]}, method

"""The compile-only GPU figures: parsing XLA's thunk dumps (always), compiling (with the plugin).

tests/fixtures/aot_small/ is XLA's dump of a small program compiled for the H200 description by
sevlm_jax.benchmark.aot (jax 0.10.2, jax-cuda13-plugin 0.10.2, no GPU):

  def f(x, w):  # x f32[64,256], w f32[256,256]
    y = jax.lax.cond(x[0, 0] > 0, lambda: jnp.tanh(x @ w), lambda: x)
    def body(c):
      i, y = c
      return i + 1, jnp.sin(jnp.tanh(y @ w) @ w)
    _, y = jax.lax.while_loop(lambda c: (c[0] < 10) & (c[1][0, 0] < 5), body, (0, y))
    return jax.lax.fori_loop(0, 40, lambda i, y: jnp.cos(jnp.sin(y @ w) @ w), y)

A conditional (a GEMM branch and a copy branch), a loop with a data-dependent exit and one of
known trip count; the thunk passes put each loop body in a command buffer.
"""

import hashlib
import json
import pathlib
import re
import subprocess
import sys

import pytest

from sevlm_jax.benchmark import aot
from helpers import REPO, TINY

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "aot_small"


def _read(suffix):
  return next(FIXTURE.glob(f"*{suffix}")).read_text()


def test_parse_nests_branches_and_loop_blocks():
  top = aot.parse_thunk_sequence(_read(".thunk_sequence.txt"))
  assert [t.kind for t in top] == ["kCopy", "kCopy", "kCustomKernel", "kConditional", "kWhile",
                                   "kWhile"]
  cond, loop, counted = top[3:]
  assert {k: [t.kind for t in b] for k, b in cond.blocks.items()} == {
      "false_branch": ["kCublasLtMatmul", "kCustomKernel"], "true_branch": ["kCopy"]}
  # XLA prints a loop's "condition:" label unindented, right after the loop's line.
  for w in (loop, counted):
    assert set(w.blocks) == {"condition", "body"}
    assert len(w.blocks["condition"]) == 1 and len(w.blocks["body"]) == 5
  assert [t.id for t in counted.blocks["body"]] == [17, 18, 19, 20, 21]


def test_parse_puts_command_buffer_contents_under_it():
  top = aot.parse_thunk_sequence(_read(".thunk_sequence_after_thunk_passes.txt"))
  body = top[4].blocks["body"]
  assert [t.kind for t in body] == ["kCommandBuffer"]
  assert [t.id for t in body[0].blocks[""]] == [10, 11, 12, 13, 14]


def test_summarize_dump_counts_the_normal_path():
  r = aot.summarize_dump(str(FIXTURE))
  # top level 3 + the GEMM branch 2 + two loops of (1 condition + 5 body); the copy branch aside
  assert r["launches"] == 3 + 2 + 2 * 6
  assert r["by_kind"] == {"fusion": 10, "gemm": 5, "copy": 2, "cudnn": 0, "other": 0}
  assert r["other_branches"] == 1
  assert r["command_buffers"] == 2 and r["captured"] == 10
  first, counted = r["loops"]
  assert first == {"body": 5, "body_by_kind": {"fusion": 3, "gemm": 2, "copy": 0, "cudnn": 0,
                                               "other": 0},
                   "condition": 1, "trip_count": None, "in_command_buffer": False,
                   "host_syncs_per_iteration": 1}
  assert counted["trip_count"] == 40 and counted["host_syncs_per_iteration"] == 0


def test_conditional_counts_the_branch_that_does_work_not_the_one_that_copies():
  text = """\
001: kConditional [source | sink]
  false_branch:
    002: kCustomKernel [source | sink] loop_add_fusion grid: [1, 1, 1]
    003: kGemm [source | sink] kGemm
  true_branch:
    004: kCopy [source | sink] kCopy
    005: kCopy [source | sink] kCopy
    006: kCopy [source | sink] kCopy
"""
  r = aot.summarize(aot.parse_thunk_sequence(text), None, {})
  assert r["by_kind"] == {"fusion": 1, "gemm": 1, "copy": 0, "cudnn": 0, "other": 0}
  assert r["other_branches"] == 3 and r["command_buffers"] == 0


def test_a_loop_inside_a_command_buffer_costs_no_host_sync():
  text = """\
000: kCommandBuffer [source | sink]
    001: kCopy [source | sink] kCopy
    002: kWhile [prev=001 (1) | sink]       
condition:
        003: kCustomKernel [source | sink] loop_and_fusion grid: [1, 1, 1]
      body:
        004: kCublasLtMatmul [source | sink] kCublasLtMatmul
        005: kCuDnn [source | sink] kCuDnn
"""
  flat = """\
001: kCopy [source | sink] kCopy
002: kWhile [prev=001 (1) | sink]   
condition:
    003: kCustomKernel [source | sink] loop_and_fusion grid: [1, 1, 1]
  body:
    004: kCublasLtMatmul [source | sink] kCublasLtMatmul
    005: kCuDnn [source | sink] kCuDnn
"""
  r = aot.summarize(aot.parse_thunk_sequence(flat), aot.parse_thunk_sequence(text), {})
  assert r["by_kind"] == {"fusion": 1, "gemm": 1, "copy": 1, "cudnn": 1, "other": 0}
  assert r["loops"][0]["in_command_buffer"] and r["loops"][0]["host_syncs_per_iteration"] == 0
  assert r["captured"] == 4


def test_vendored_gpu_descriptions_match_their_recorded_checksums():
  table = (REPO / "third_party" / "README.md").read_text()
  rows = dict(re.findall(r"\| `(xla_gpu_specs/[\w.]+)` \|.*\| `([0-9a-f]{64})` \|", table))
  assert set(rows) >= {f"xla_gpu_specs/{n}" for n in aot.SPECS.values()} | {
      "xla_gpu_specs/LICENSE"}
  for path, digest in rows.items():
    assert hashlib.sha256((REPO / "third_party" / path).read_bytes()).hexdigest() == digest, path
  for gpu in aot.SPECS:
    text = aot.target_config(gpu)
    assert "collective_memory_granularity" not in text and "gpu_device_info {" in text


def test_aot_without_the_gpu_compiler_says_what_to_install(monkeypatch):
  monkeypatch.setattr(aot, "plugin_installed", lambda: False)
  with pytest.raises(SystemExit, match=r"pip install -e '\.\[aot\]'"):
    aot.main(None, None, ["optimized"], ["decode"])


@pytest.mark.skipif(not aot.plugin_installed(), reason="needs the [aot] extra (jax[cuda13])")
def test_aot_command_prints_launches_and_memory_of_each_program():
  model = {k: v for k, v in TINY.items() if k.startswith("model.")}
  args = [sys.executable, "-m", "sevlm_jax.benchmark", "--config=configs/sevlm.py:demo",
          *(f"--config.{k}={v}" for k, v in model.items()),
          "--aot=h100", "--variants=optimized", "--figures=train_cached,decode", "--pairs=2",
          "--new_tokens=3"]
  out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=900,
                       env={"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stderr[-3000:]
  rows = {r["what"]: r for r in map(json.loads, out.stdout.splitlines())}
  assert set(rows) == {"train_cached", "decode"}
  for r in rows.values():
    assert r["aot"] == "h100" and r["device"] == "NVIDIA H100 80GB HBM3"
    assert r["launches"] == sum(r["by_kind"].values()) > 0
    assert r["program_GiB"] > 0 and r["temp_GiB"] >= 0
  assert rows["train_cached"]["loops"] == [] and rows["train_cached"]["by_kind"]["gemm"] > 0
  assert len(rows["decode"]["loops"]) == 1 and rows["decode"]["launches_per_token"] > 0
  assert rows["decode"]["decode_kernels"] == "xla" and rows["decode"]["pallas_kernels"] == 0
  for r in rows.values():  # the roofline estimates (benchmark/roofline.py)
    e = r["estimates"]
    assert e["peaks_from"] == "description" and e["bandwidth_TBps"] == pytest.approx(3.352)
    assert e["estimate_ms"] >= e["roofline_ms"] > 0 and e["matmul_GFLOP"] > 0
    assert 0 < e["floor_ms"] and len(e["top_kernels"]) == 10
  assert rows["decode"]["estimates"]["estimate_us_per_token"] > 0
  assert rows["train_cached"]["estimates"]["estimate_seqs_per_s"] > 0


@pytest.mark.parametrize("gpu,cc,kernels", [
    ("h200", (9, 0), "pallas"), ("h100", (9, 0), "pallas"), ("b200", (10, 0), "pallas"),
    ("rtx6000pro", (12, 0), "pallas"), ("a100_sxm_80", (8, 0), "pallas"),
    ("a100_sxm_40", (8, 0), "pallas"), ("a100_pcie_80", (8, 0), "pallas"),
    ("a6000", (8, 6), "pallas"), ("v100", (7, 0), "xla")])
def test_each_gpu_gets_the_kernels_where_triton_builds_them(gpu, cc, kernels):
  assert aot.compute_capability(gpu) == cc
  assert aot.decode_kernels_for(gpu, "pallas") == kernels
  assert aot.decode_kernels_for(gpu, "xla") == "xla"
  text = aot.target_config(gpu)  # without the fields the plugin rejects
  assert not re.search(r"^\s*(mem_clock_ghz|max_blocks_per_multiprocessor|"
                       r"collective_memory_granularity):", text, re.M)


def test_pallas_on_a_gpu_older_than_sm_80_lowers_xlas_path(monkeypatch):
  from sevlm_jax.models import decode_kernels  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  q = jax.ShapeDtypeStruct((2, 4, 16), "float32")
  k = jax.ShapeDtypeStruct((2, 10, 4, 16), "float32")
  step = jax.jit(lambda q, k, v: decode_kernels.cross_attention_step(q, k, v, "pallas"))
  triton_calls = lambda: step.trace(q, k, k).lower(lowering_platforms=("cuda",)).as_text().count(
      "__gpu$xla.gpu.triton")
  for cc, calls in (((7, 0), 0), ((8, 0), 1), (None, 1)):  # None: no local GPU (this machine)
    monkeypatch.setattr(decode_kernels, "_local_gpu_compute_capability", lambda cc=cc: cc)
    jax.clear_caches()
    assert triton_calls() == calls, cc


LOWER_DECODING_PER_GPU = """
import sys
import jax
from absl import flags
import sevlm_jax.benchmark.__main__  # the command's flags
from sevlm_jax.benchmark import aot, speed
flags.FLAGS(sys.argv)
mesh = jax.sharding.Mesh(jax.devices()[:1], ("x",))
sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
kernels = {}  # the lowering for CUDA depends on the description through this choice only
for gpu in aot.GPUS:
  config = speed.variant_config(flags.FLAGS.config, "optimized")
  impl = config.model.decode_kernels = aot.decode_kernels_for(gpu, "pallas")
  if impl not in kernels:
    [(_, fn, args, _)] = aot.programs(speed, speed.Setup(config), "optimized", ["decode"], sharding)
    text = fn.trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    kernels[impl] = text.count('custom_call @__gpu$xla.gpu.triton')
  print(gpu, impl, kernels[impl])
"""


def test_decoding_lowers_for_every_gpu_description_without_the_gpu_compiler():
  """The decoding program --aot compiles for each GPU, lowered for CUDA here (CI has no [aot]
  extra): the Pallas kernels where Triton builds them (one per attention sub-layer and one for
  the VAD encoder), XLA's path on the V100."""
  model = {k: v for k, v in TINY.items() if k.startswith("model.")}
  args = [sys.executable, "-c", LOWER_DECODING_PER_GPU, "--config=configs/sevlm.py:demo",
          *(f"--config.{k}={v}" for k, v in model.items()), "--pairs=2", "--new_tokens=3"]
  out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600,
                       env={"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stderr[-3000:]
  rows = {gpu: (impl, int(n)) for gpu, impl, n in map(str.split, out.stdout.splitlines())}
  per_program = 2 * TINY["model.decoder.layers"] + 1
  assert rows == {gpu: ("xla", 0) if gpu == "v100" else ("pallas", per_program)
                  for gpu in aot.GPUS}


LOWER_EVERY_PROGRAM = """
import sys
import jax
from absl import flags
import sevlm_jax.benchmark.__main__  # the command's flags
from sevlm_jax.benchmark import aot, speed
flags.FLAGS(sys.argv)
mesh = jax.sharding.Mesh(jax.devices()[:1], ("x",))
sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
for variant in ("optimized", "baseline"):
  setup = speed.Setup(speed.variant_config(flags.FLAGS.config, variant))
  for name, fn, args, extra in aot.programs(speed, setup, variant, list(aot.PROGRAMS), sharding):
    fn.lower(*args)
    print(variant, name)
"""


def test_every_aot_program_lowers_without_the_gpu_compiler():
  """The programs --aot compiles are built and lowered here for the CPU: without the [aot] extra
  (CI has none) a broken import or argument in them still fails a test."""
  model = {k: v for k, v in TINY.items() if k.startswith("model.")}
  args = [sys.executable, "-c", LOWER_EVERY_PROGRAM, "--config=configs/sevlm.py:demo",
          *(f"--config.{k}={v}" for k, v in model.items()), "--pairs=2", "--new_tokens=3"]
  out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600,
                       env={"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.split("\n")[:-1] == [f"{v} {p}" for v in ("optimized", "baseline")
                                         for p in aot.PROGRAMS]

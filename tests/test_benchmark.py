"""The benchmark: its optimisations change no result, and its command prints every figure."""

import gzip
import json
import subprocess
import sys

import jax
import numpy as np

from sevlm_jax.benchmark import speed as benchmark
from sevlm_jax.training import step as step_lib
from helpers import REPO, TINY, Stepper


def test_plain_port_step_equals_the_optimized_step_in_float32(data, make_random_params):
  """Shared cross-attention K/V and the padded vocabulary are exact rewrites."""
  _, batch, vad_table = data
  stepper = Stepper(data[0], make_random_params, **{"optim.train_vision": False})
  plain_config = benchmark.variant_config(stepper.config, "baseline")
  plain_config.model.dtype = stepper.config.model.dtype  # only the step's rewrites differ
  plain = jax.jit(step_lib.make_train_step(stepper.model, plain_config, stepper.tx))
  rng = jax.random.PRNGKey(1)
  _, fast = stepper.step(stepper.state, batch, vad_table, rng)
  _, slow = plain(stepper.state, batch, vad_table, rng)
  for key in ("loss", "loss_lm", "loss_vad", "loss_contrastive", "grad_norm"):
    np.testing.assert_allclose(fast[key], slow[key], rtol=1e-5, err_msg=key)


def test_summarize_trace_counts_device_kernels_per_step(tmp_path):
  events = [
      {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/host:CPU"}},
      {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/device:GPU:0"}},
      {"ph": "X", "pid": 1, "name": "python", "ts": 0, "dur": 5000.0},
  ] + [{"ph": "X", "pid": 2, "name": name, "ts": 0, "dur": dur}
       for name, dur in [("gemm", 300.0), ("gemm", 300.0), ("softmax", 200.0), ("copy", 200.0)]]
  (tmp_path / "x").mkdir()
  with gzip.open(tmp_path / "x" / "host.trace.json.gz", "wt") as f:
    json.dump({"traceEvents": events}, f)
  head, *rows = benchmark.summarize_trace(str(tmp_path), steps=2)
  assert head == {"device_ms_per_step": 0.5, "distinct_kernels": 3, "launches_per_step": 2.0}
  assert rows[0] == {"kernel": "gemm", "ms_per_step": 0.3, "share": 0.6}
  assert {r["kernel"] for r in rows} == {"gemm", "softmax", "copy"}


def test_benchmark_command_prints_every_figure(tmp_path):
  model = {k: v for k, v in TINY.items() if k.startswith("model.")}
  args = [sys.executable, "-m", "sevlm_jax.benchmark", "--config=configs/sevlm.py:demo",
          *(f"--config.{k}={v}" for k, v in model.items()),
          "--pairs=2", "--iters=2", "--warmup=1", "--new_tokens=3", "--variants=optimized,baseline",
          "--steps_per_check=1,3", "--config.model.decode_kernels=pallas",  # opt-in (README)
          "--figures=train_cached,train_tower,decode,memory"]
  env = {"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_backend_optimization_level=0"}
  out = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
  decodes = [r for r in rows if r["what"] == "decode" and r["variant"] == "optimized"]
  # The first figure of the sweep again through XLA's kernels, right after it.
  assert [(r["steps_per_check"], r["decode_kernels"]) for r in decodes] == [
      (1, "pallas"), (1, "xla"), (3, "pallas")]
  assert decodes[1]["token_agreement"] == 1.0  # on a CPU, 'pallas' lowers XLA's path
  seen = {(r["what"], r["variant"]) for r in rows}
  assert seen == {(w, v) for w in ("train_cached", "train_tower", "decode", "peak_memory")
                  for v in ("optimized", "baseline")}
  for r in rows:
    assert r["device"] == "cpu"
    if r["what"].startswith("train"):
      assert r["batch_seqs"] == 4 and r["seqs_per_s"] > 0 and r["loss_finite"]
      # seqs_per_s is rounded to 0.1 and ms to 0.001: compare within that rounding, not a
      # relative tolerance (at a few seqs/s, 0.05 is several percent).
      assert abs(r["seqs_per_s"] - 1e3 * 4 / r["ms"]) <= 0.05 + 1e-6
    if r["what"] == "decode":
      assert r["images"] == 4 and r["tokens_generated"] == 3 and r["images_per_s"] > 0
      assert r["variant"] == "optimized" or r["steps_per_check"] == 1
      # On a CPU: the share of a matmul peak measured in the same run, at the model's shapes.
      flops = r["GFLOP_per_image"]
      assert flops["total"] == round(flops["tower"] + flops["decoder"], 2) > 0
      peak = r["matmul_peak_GFLOP_per_s"]
      assert peak["shape"][0] % r["images"] == 0  # images x (patches + 1) rows
      assert peak["peak"] == max(peak["bfloat16"], peak["float32"]) > 0
      assert r["achieved_GFLOP_per_s"] > 0 and r["share_of_matmul_peak"] > 0
      assert r["tower_ms"] > 0 and r["lm_head_ms"] > 0


def test_unknown_figure_is_a_usage_error():
  out = subprocess.run([sys.executable, "-m", "sevlm_jax.benchmark", "--figures=train,decode"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0 and "unknown figure 'train'" in out.stderr

"""The roofline estimate (sevlm_jax/benchmark/roofline.py): HLO costs, peaks, the arithmetic.

Runs without XLA's GPU compiler: the optimized HLO and thunk dumps are tests/fixtures/aot_small/
(see tests/test_aot.py for the program), and small HLO texts written here.
"""

import pathlib

import jax
import jax.numpy as jnp
import pytest

from sevlm_jax.benchmark import aot
from sevlm_jax.benchmark import roofline

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "aot_small"
GEMM_FLOPS = 2 * 64 * 256 * 256  # f32[64,256] @ f32[256,256]
GEMM_BYTES = 4 * (64 * 256 + 256 * 256 + 64 * 256)  # operands and result, not the workspace


def _read(suffix):
  return next(FIXTURE.glob(f"*{suffix}")).read_text()


@pytest.fixture(scope="module")
def program():
  return roofline.Program(_read("gpu_after_optimizations.txt"))


def test_cublas_gemm_costs_its_flops_and_operand_and_result_bytes(program):
  c = program.cost("custom-call.4")
  assert (c.flops, c.bytes, c.dtype) == (GEMM_FLOPS, GEMM_BYTES, "f32")


def test_elementwise_fusion_and_copy_cost_bytes_only(program):
  assert program.cost("wrapped_tanh.1") == roofline.Cost(0.0, 2 * 4 * 64 * 256, "f32")
  assert program.cost("copy.1").bytes == 2 * 4 * 64 * 256
  assert program.cost("no-such-instruction") == roofline.Cost()


SLICES = """\
HloModule m

%fused_update (param_0: bf16[8,100,64], param_1: bf16[8,1,64], param_2: s32[]) -> bf16[8,100,64] {
  %param_0 = bf16[8,100,64]{2,1,0} parameter(0)
  %param_1 = bf16[8,1,64]{2,1,0} parameter(1)
  %param_2 = s32[] parameter(2)
  %constant_0 = s32[] constant(0)
  ROOT %dynamic-update-slice.1 = bf16[8,100,64]{2,1,0} dynamic-update-slice(%param_0, %param_1, %constant_0, %param_2, /*index=4*/%constant_0)
}

%fused_row (param_0.1: f32[50000,64], param_1.1: s32[]) -> bf16[1,64] {
  %param_0.1 = f32[50000,64]{1,0} parameter(0)
  %param_1.1 = s32[] parameter(1)
  %constant_1 = s32[] constant(0)
  %dynamic-slice.1 = f32[1,64]{1,0} dynamic-slice(%param_0.1, %param_1.1, %constant_1), dynamic_slice_sizes={1,64}
  ROOT %convert.1 = bf16[1,64]{1,0} convert(%dynamic-slice.1)
}

%fused_dot (param_0.2: bf16[16,768], param_1.2: bf16[768,3072]) -> bf16[16,3072] {
  %param_0.2 = bf16[16,768]{1,0} parameter(0)
  %param_1.2 = bf16[768,3072]{1,0} parameter(1)
  ROOT %dot.1 = bf16[16,3072]{1,0} dot(%param_0.2, %param_1.2), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

ENTRY %main (cache: bf16[8,100,64], new: bf16[8,1,64], i: s32[], table: f32[50000,64], x: bf16[16,768], w: bf16[768,3072]) -> bf16[8,100,64] {
  %cache = bf16[8,100,64]{2,1,0} parameter(0)
  %new = bf16[8,1,64]{2,1,0} parameter(1)
  %i = s32[] parameter(2)
  %table = f32[50000,64]{1,0} parameter(3)
  %x = bf16[16,768]{1,0} parameter(4)
  %w = bf16[768,3072]{1,0} parameter(5)
  %update_fusion = bf16[8,100,64]{2,1,0} fusion(%cache, %new, %i), kind=kLoop, calls=%fused_update
  %row_fusion = bf16[1,64]{1,0} fusion(%table, %i), kind=kLoop, calls=%fused_row, metadata={op_name="jit(f)/decoder.embed/convert_element_type"}
  %dot_fusion = bf16[16,3072]{1,0} fusion(%x, %w), kind=kLoop, calls=%fused_dot
  ROOT %pallas = (bf16[8,4], bf16[8,100,64]{2,1,0}) custom-call(%i, %update_fusion), custom_call_target="__gpu$xla.gpu.triton", output_to_operand_aliasing={{1}: (1, {})}
}
"""


def test_in_place_updates_and_slices_count_the_bytes_they_touch():
  p = roofline.Program(SLICES)
  # The cache is updated in place: the new row is read and written, the cache not at all.
  assert p.cost("update_fusion").bytes == 2 * (2 * 8 * 64) + 4
  # One row of the table (f32) is read, not the table; the result is bf16.
  assert p.cost("row_fusion").bytes == 4 * 64 + 4 + 2 * 64
  # A dot left inside a fusion still counts its FLOPs, at its operands' type.
  c = p.cost("dot_fusion")
  assert (c.flops, c.dtype) == (2 * 16 * 768 * 3072, "bf16")
  # A Pallas kernel's aliased output (the cache it writes in place) is not written twice.
  assert p.cost("pallas").bytes == 4 + 2 * 8 * 100 * 64 + 2 * 8 * 4
  assert roofline.op_name(p, "row_fusion") == "decoder.embed/convert_element_type"


def test_peaks_from_the_description_and_from_the_table():
  h200 = roofline.peaks(aot.target_config("h200"))
  assert h200.source == "description"
  assert h200.matmul_flops("bf16") == pytest.approx(989.2e12, rel=1e-3)  # NVIDIA: 989 dense
  assert h200.matmul_flops("f32") == pytest.approx(494.6e12, rel=1e-3)  # TF32
  assert h200.bandwidth == 4.8e12
  a100 = roofline.peaks(aot.target_config("a100_sxm_80"))
  assert a100.source == "table"
  assert a100.matmul_flops("bf16") == pytest.approx(312e12, rel=0.01)  # NVIDIA: 312
  v100 = roofline.peaks(aot.target_config("v100"))  # no bf16 tensor cores: the CUDA cores' f32
  assert v100.matmul_flops("bf16") == v100.matmul_flops("f32") == pytest.approx(15.7e12, rel=0.01)


@pytest.mark.parametrize("gpu", ["h200", "h100", "b200"])
def test_the_table_agrees_with_descriptions_that_state_their_peaks(gpu):
  text = aot.target_config(gpu)
  stated = roofline.peaks(text)
  without = roofline.peaks(text.replace("matrix_unit_description", "unread"))
  assert (stated.source, without.source) == ("description", "table")
  for dtype in ("bf16", "f32"):  # the table is at the boost clock, the description below it
    assert without.matmul_flops(dtype) == pytest.approx(stated.matmul_flops(dtype), rel=0.1)


def test_estimate_weighs_each_launch_by_its_runs_and_adds_launches_outside_graphs(program):
  sequence = aot.parse_thunk_sequence(_read(".thunk_sequence.txt"))
  after = aot.parse_thunk_sequence(_read(".thunk_sequence_after_thunk_passes.txt"))
  metadata = _read(".thunk_metadata.txt")
  trips = aot.loop_trip_counts(metadata, _read("gpu_after_optimizations.txt"))
  launches = list(roofline.weighted_launches(sequence, trips))
  runs = {t.id: r for t, r in launches}
  assert runs[18] == 40 and runs[11] == 1 and runs[9] == 1 and 16 not in runs  # known trips
  assert 6 not in runs  # the conditional's copy branch
  captured = {t.id for t, inside in aot._walk(after) if inside}
  graphs = roofline.command_buffer_runs(after, trips)
  assert graphs == 1 + 40  # each loop body is a command buffer; the counted one runs 40 times
  peaks = roofline.peaks(aot.target_config("h200"))
  r = roofline.estimate(program, launches, aot._annotations(metadata), peaks, captured, graphs)
  gemms = 1 + 2 + 2 * 40  # the branch's, the first loop's (one pass), the counted loop's
  assert r["matmul_GFLOP"] == pytest.approx(gemms * GEMM_FLOPS / 1e9, abs=1e-3)
  # Every launch here is small: it takes MIN_KERNEL_US, and those outside graphs add LAUNCH_US.
  uncaptured = sum(r_ for t, r_ in launches if t.id not in captured)
  assert r["uncaptured_launches"] == uncaptured == 5 + 1  # top level, the branch, a condition
  total_runs = sum(r_ for _, r_ in launches)
  want_us = total_runs * roofline.MIN_KERNEL_US + (uncaptured + graphs) * roofline.LAUNCH_US
  assert r["estimate_ms"] == pytest.approx(want_us / 1e3, abs=1e-4)
  top = r["top_kernels"][0]
  assert top["launches"] == 40 and top["bound"] == "latency"
  # At the roofline alone, a GEMM is its bytes at full bandwidth (it is memory-bound).
  gemm_roof_us = 1e6 * max(GEMM_FLOPS / peaks.matmul_flops("f32"), GEMM_BYTES / peaks.bandwidth)
  assert gemm_roof_us == pytest.approx(1e6 * GEMM_BYTES / 4.8e12)


def test_floor_is_the_larger_of_flops_at_the_bf16_peak_and_bytes_at_full_bandwidth():
  peaks = roofline.peaks(aot.target_config("h100"))
  f = roofline.floor_ms(1e12, 3.35e9, peaks)  # 1 TFLOP; 3.35 GB, 1 ms at the H100's 3.35 TB/s
  assert f["floor_compute_ms"] == pytest.approx(1e15 / peaks.matmul_flops("bf16"), rel=1e-3)
  assert f["floor_memory_ms"] == pytest.approx(1.0, rel=1e-3)
  assert f["floor_ms"] == f["floor_compute_ms"] > 1.0
  assert roofline.floor_ms(1e9, 3.35e9, peaks)["floor_ms"] == pytest.approx(1.0, rel=1e-3)


def test_jaxpr_flops_count_dots_scans_and_the_costlier_branch():
  x, w = jnp.zeros((8, 16)), jnp.zeros((16, 32))

  def f(x, w):
    y = x @ w  # 2*8*16*32
    z = jax.lax.cond(x[0, 0] > 0, lambda: (y @ w.T) @ w, lambda: y)  # the costlier: 2 dots
    return jax.lax.scan(lambda c, _: (c @ w.T @ w, None), z, None, length=3)[0]

  dot = 2 * 8 * 16 * 32
  assert roofline.matmul_flops(jax.make_jaxpr(f)(x, w)) == dot + 2 * dot + 3 * 2 * dot


def test_decode_loop_reads_its_operands_once_per_pass_and_only_the_rows_it_gathers():
  table, w = jnp.zeros((1000, 16)), jnp.zeros((16, 16))

  def decode(table, w, token):
    def body(_, carry):
      token, h = carry
      row = jnp.take(table, token, axis=0)  # one row of the table per pass
      h = jnp.tanh((row + h) @ w)
      return jnp.argmax(h).astype(jnp.int32), h
    return jax.lax.fori_loop(0, jnp.int32(5) + token * 0, body, (token, jnp.zeros(16)))

  loop = roofline.decode_loop(jax.make_jaxpr(decode)(table, w, jnp.int32(0)))
  assert loop["flops_per_pass"] == 2 * 16 * 16 and loop["flops_outside"] == 0
  row, weights, carry = 4 * 16, 4 * 16 * 16, 4 + 4 * 16
  assert row + weights + carry <= loop["bytes_per_pass"] < 4 * 1000 * 16


def test_a_loop_of_static_trip_count_is_a_scan_counted_once_per_pass():
  w = jnp.zeros((16, 16))

  def decode(w, h):
    h = h @ w  # outside the loop
    return jax.lax.fori_loop(0, 5, lambda _, h: jnp.tanh(h @ w), h)  # a scan of length 5

  jaxpr = jax.make_jaxpr(decode)(w, jnp.zeros((1, 16)))
  dot = 2 * 16 * 16
  assert roofline.matmul_flops(jaxpr) == 6 * dot
  loop = roofline.decode_loop(jaxpr)
  assert (loop["flops_per_pass"], loop["flops_outside"]) == (dot, dot)

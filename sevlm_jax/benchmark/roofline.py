"""A roofline estimate of a program compiled for a GPU without one: per kernel, then per program.

`cost_analysis()` is None in a compile without a device, so the figures come from XLA's
optimized HLO (the `*gpu_after_optimizations.txt` dump) and the thunk sequence (which kernels
run, how often, and which are inside command buffers):

- each launch's matmul FLOPs (cuBLAS GEMMs, cuDNN convolutions, and dots left inside fusions)
  and the bytes of its operands and results. A fusion operand read only through a slice,
  dynamic-slice or gather counts the bytes those read; an in-place dynamic-update-slice counts
  the update, not the buffer; a result a kernel writes in place of an operand (a Pallas kernel's
  aliased KV cache) is not counted again; cuBLAS/cuDNN workspaces are not traffic.
- its roofline time on the GPU: max(FLOPs / peak FLOPs of the operands' type, bytes / memory
  bandwidth), from XLA's description of the GPU (peaks: `peaks()`).
- ESTIMATES, not measurements: every launch takes at least MIN_KERNEL_US, and one outside a
  command buffer adds LAUNCH_US of host issue; GEMMs run at peak, elementwise kernels at full
  bandwidth, caches count nothing. Wall clock needs a GPU.

The floor: the program's essential work at the hardware's limits: the matmul FLOPs the program
writes (its jaxpr, before XLA pads or splits anything) at the bf16 peak, and the bytes it
cannot avoid at full bandwidth (each alone, and the larger of the two as `floor_ms`): for a
train step the parameters read, the trainable ones, their gradients and both Adam moments
written and read once; for decoding, per token, everything the loop reads (weights, the
image's cross-attention K/V, caches) once.
"""

import collections
import dataclasses
import math
import re

# --- the GPU's peaks ---------------------------------------------------------------------------

# XLA's PrimitiveType numbers, as the descriptions' rate_infos key them.
_F16, _F32, _BF16 = 10, 11, 16
# Dense tensor-core FMAs per clock per SM (2 FLOPs each), by compute capability, for
# descriptions without a matrix_unit_description: NVIDIA's published dense peaks divided by
# SMs x boost clock (A100 SXM 312 TFLOP/s bf16, 156 tf32; RTX A6000 154.8 / 77.4; H100 SXM
# 989 / 494; B200 2,250 / 1,125; RTX PRO 6000 Blackwell ~504 / ~252; V100 125 fp16, no bf16).
# f32 matmuls run as TF32 on sm_80 and later (XLA's default precision).
TENSOR_FMA_PER_CLOCK_PER_SM = {
    (7, 0): {_F16: 512},
    (8, 0): {_BF16: 1024, _F16: 1024, _F32: 512},
    (8, 6): {_BF16: 512, _F16: 512, _F32: 256},
    (9, 0): {_BF16: 2048, _F16: 2048, _F32: 1024},
    (10, 0): {_BF16: 4096, _F16: 4096, _F32: 2048},
    (12, 0): {_BF16: 512, _F16: 512, _F32: 256},
}
MIN_KERNEL_US = 2.0  # the smallest kernel's device time (the H200 profile in the README: 2.9 us
#                      on average over decoding's ~190 small kernels per step)
LAUNCH_US = 2.0  # host issue of a launch outside a command buffer (assumed)
_DTYPES = {"bf16": _BF16, "f16": _F16, "f32": _F32}


@dataclasses.dataclass(frozen=True)
class Peaks:
  flops: dict  # XLA PrimitiveType -> FLOP/s
  bandwidth: float  # bytes/s
  source: str  # 'description' (its matrix_unit_description) or 'table'

  def matmul_flops(self, dtype: str) -> float:
    """FLOP/s of a matmul whose operands are `dtype` (bf16 without tensor cores for it: f32)."""
    key = _DTYPES.get(dtype, _F32)
    return self.flops.get(key) or self.flops[_F32]


def _block(text: str, name: str) -> str | None:
  """The body of the first `name { ... }` block of a text proto."""
  start = text.find(name + " {")
  if start < 0:
    return None
  depth, i = 0, text.index("{", start)
  for j in range(i, len(text)):
    depth += {"{": 1, "}": -1}.get(text[j], 0)
    if depth == 0:
      return text[i + 1:j]
  return None


def _field(text: str, name: str) -> float:
  m = re.search(rf"\b{name}: ([\d.]+)", text)
  if not m:
    raise ValueError(f"the GPU description has no {name}")
  return float(m[1])


def compute_capability(description: str) -> tuple[int, int]:
  cc = _block(description, "cuda_compute_capability") or ""
  major, minor = re.search(r"major: (\d+)", cc), re.search(r"minor: (\d+)", cc)
  return int(major[1]) if major else 0, int(minor[1]) if minor else 0


def peaks(description: str) -> Peaks:
  """Peak matmul FLOP/s per operand type and memory bandwidth from XLA's GPU description."""
  cores, clock = _field(description, "core_count"), _field(description, "clock_rate_ghz")
  bandwidth = _field(description, "memory_bandwidth")
  # Without tensor cores for a type: the CUDA cores' f32 FMAs.
  flops = {_F32: 2 * _field(description, "fpus_per_core") * cores * clock * 1e9}
  matrix = _block(description, "matrix_unit_description")
  if matrix:
    for key, ghz, units, ops in re.findall(
        r"key: (\d+)\s*value \{\s*clock_rate_ghz: ([\d.]+)\s*units_per_core: (\d+)\s*"
        r"ops_per_clock: (\d+)", matrix):
      if int(key) in (_F16, _F32, _BF16):
        flops[int(key)] = 2 * int(ops) * int(units) * cores * float(ghz) * 1e9
    return Peaks(flops, bandwidth, "description")
  table = TENSOR_FMA_PER_CLOCK_PER_SM.get(compute_capability(description), {})
  for key, fma in table.items():
    flops[key] = 2 * fma * cores * clock * 1e9
  return Peaks(flops, bandwidth, "table")


# --- the optimized HLO -------------------------------------------------------------------------

_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16|c64|c128|f8e\w+)\[([\d,]*)\]")
_BITS = {"pred": 8, "bf16": 16, "c64": 64, "c128": 128}


def _element_bytes(dtype: str) -> float:
  if dtype in _BITS:
    return _BITS[dtype] / 8
  if dtype.startswith("f8"):
    return 1
  return int(dtype[1:]) / 8


def arrays(type_text: str) -> list[tuple[str, tuple[int, ...]]]:
  """(dtype, dims) of every array in an HLO type ('f32[2,3]{1,0}' or a tuple of them)."""
  return [(m[1], tuple(int(d) for d in m[2].split(",") if d)) for m in _ARRAY.finditer(type_text)]


def nbytes(type_text: str) -> int:
  return int(sum(_element_bytes(t) * math.prod(d) for t, d in arrays(type_text)))


@dataclasses.dataclass
class Instr:
  name: str
  type: str
  opcode: str
  operands: list
  attrs: str
  args: str = ""  # the text between the opcode's parentheses (a parameter's number)


def _matching(text: str, start: int) -> int:
  """Index just past the bracket closing the one at text[start]."""
  pairs = {"(": ")", "{": "}", "[": "]"}
  depth = 0
  for i in range(start, len(text)):
    c = text[i]
    if c in pairs:
      depth += 1
    elif c in pairs.values():
      depth -= 1
      if depth == 0:
        return i + 1
  return len(text)


_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = ")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) .*\{\s*$")


def parse_instr(line: str) -> Instr | None:
  m = _INSTR.match(line)
  if not m:
    return None
  rest = re.sub(r"/\*.*?\*/", "", line[m.end():])
  end = _matching(rest, 0) if rest.startswith("(") else rest.index(" ")
  type_text, rest = rest[:end], rest[end:].lstrip()
  paren = rest.find("(")
  opcode = rest[:paren]
  close = _matching(rest, paren)
  operands = re.findall(r"%([\w.\-]+)", rest[paren:close])
  return Instr(m[1], type_text, opcode, operands, rest[close:], rest[paren + 1:close - 1])


def parse_hlo(text: str) -> tuple[dict, dict]:
  """(computation name -> [Instr], instruction name -> (Instr, its computation's name))."""
  computations, where, current = {}, {}, None
  for line in text.splitlines():
    if current is None:
      m = _COMPUTATION.match(line)
      if m:
        current = m[1]
        computations[current] = []
      continue
    if line.startswith("}"):
      current = None
      continue
    instr = parse_instr(line)
    if instr:
      computations[current].append(instr)
      where[instr.name] = (instr, current)
  return computations, where


# --- what one kernel costs ----------------------------------------------------------------------


@dataclasses.dataclass
class Cost:
  flops: float = 0.0
  bytes: float = 0.0
  dtype: str = "f32"  # the matmul operands' type (for the peak)


def _contracting(attrs: str, key: str) -> list[int]:
  m = re.search(key + r"=\{([\d,]*)\}", attrs)
  if m:
    return [int(d) for d in m[1].split(",") if d]
  m = re.search(r'"' + key.replace("dims", "dimensions") + r'":\[([^\]]*)\]', attrs)
  return [int(d) for d in re.findall(r"\d+", m[1])] if m else []


def _dot_flops(out_type: str, lhs_type: str, attrs: str) -> float:
  out, lhs = arrays(out_type), arrays(lhs_type)
  if not out or not lhs:
    return 0.0
  k = math.prod(lhs[0][1][d] for d in _contracting(attrs, "lhs_contracting_dims"))
  return 2.0 * math.prod(out[0][1]) * k


def _conv_flops(out_type: str, kernel_type: str, attrs: str) -> float:
  out, kernel = arrays(out_type), arrays(kernel_type)
  labels = re.search(r"dim_labels=\w+_(\w+)->", attrs)
  if not out or not kernel or not labels:
    return 0.0
  kdims = kernel[0][1]
  return 2.0 * math.prod(out[0][1]) * math.prod(kdims) / kdims[labels[1].index("o")]


class Program:
  """The optimized HLO of one program, for the cost of each of its kernels."""

  def __init__(self, hlo_text: str):
    self.computations, self.where = parse_hlo(hlo_text)
    self.types = {name: instr.type for name, (instr, _) in self.where.items()}

  def _type(self, name: str) -> str:
    return self.types.get(name, "")

  def _matmuls(self, computation: str, seen=None) -> tuple[float, str]:
    """Dot and convolution FLOPs inside a (fused) computation, and the dots' operand type."""
    seen = seen if seen is not None else set()
    if computation in seen:
      return 0.0, "f32"
    seen.add(computation)
    flops, dtype = 0.0, "f32"
    for instr in self.computations.get(computation, []):
      if instr.opcode == "dot":
        flops += _dot_flops(instr.type, self._type(instr.operands[0]), instr.attrs)
        dtype = (arrays(self._type(instr.operands[0])) or [("f32",)])[0][0]
      elif instr.opcode == "convolution":
        flops += _conv_flops(instr.type, self._type(instr.operands[1]), instr.attrs)
      for called in re.findall(r"calls=%([\w.\-]+)", instr.attrs):
        f, d = self._matmuls(called, seen)
        flops, dtype = flops + f, (d if f else dtype)
    return flops, dtype

  def _operand_bytes(self, instr: Instr) -> float:
    """Bytes a fusion reads: operands read only through slices count what those read."""
    called = re.search(r"calls=%([\w.\-]+)", instr.attrs)
    body = self.computations.get(called[1], []) if called else []
    params = {int(i.args): i.name for i in body if i.opcode == "parameter"}
    read_by = collections.defaultdict(list)
    for i in body:
      for n, op in enumerate(i.operands):
        read_by[op].append((i, n))
    total = 0.0
    for k, operand in enumerate(instr.operands):
      full = nbytes(self._type(operand))
      users = read_by.get(params.get(k), [])
      if users and all(u.opcode in ("slice", "dynamic-slice", "gather") and n == 0
                       for u, n in users):
        full = sum(nbytes(u.type) for u, _ in users)
      elif users and all(u.opcode == "dynamic-update-slice" and n == 0 for u, n in users):
        full = 0  # updated in place: the written slice is counted with the result
      total += full
    return total

  def _result_bytes(self, instr: Instr) -> float:
    """Bytes a fusion writes: an in-place dynamic-update-slice writes its update."""
    called = re.search(r"calls=%([\w.\-]+)", instr.attrs)
    body = self.computations.get(called[1], []) if called else []
    root = body[-1] if body else None
    by_name = {i.name: i for i in body}
    roots = ([by_name[o] for o in root.operands if o in by_name]
             if root is not None and root.opcode == "tuple" else [root] if root else [])
    if not roots:
      return nbytes(instr.type)
    total = 0.0
    for r in roots:
      if r.opcode == "dynamic-update-slice":
        total += nbytes(self._type_in(by_name, r.operands[1]))
      else:
        total += nbytes(r.type)
    return total

  @staticmethod
  def _type_in(by_name: dict, name: str) -> str:
    return by_name[name].type if name in by_name else ""

  def cost(self, name: str) -> Cost:
    """Matmul FLOPs and bytes moved of the launch of HLO instruction `name` (0 if unknown)."""
    if name not in self.where:
      return Cost()
    instr, _ = self.where[name]
    if instr.opcode == "fusion":
      flops, dtype = self._matmuls(re.search(r"calls=%([\w.\-]+)", instr.attrs)[1])
      return Cost(flops, self._operand_bytes(instr) + self._result_bytes(instr), dtype)
    reads = sum(nbytes(self._type(o)) for o in instr.operands)
    results = arrays(instr.type)
    if instr.opcode == "custom-call":
      target = re.search(r'custom_call_target="([^"]+)"', instr.attrs)
      target = target[1] if target else ""
      lhs = self._type(instr.operands[0]) if instr.operands else ""
      lhs_dtype = (arrays(lhs) or [("f32",)])[0][0]
      if "cublas" in target or "gemm" in target.lower():
        out = instr.type.split("s8[")[0] if instr.type.startswith("(") else instr.type
        return Cost(_dot_flops(out, lhs, instr.attrs), reads + _without_workspace(results),
                    lhs_dtype)
      if "cudnn" in target and "conv" in target.lower():
        kernel = self._type(instr.operands[1]) if len(instr.operands) > 1 else ""
        out = instr.type.split("u8[")[0] if instr.type.startswith("(") else instr.type
        return Cost(_conv_flops(out, kernel, instr.attrs), reads + _without_workspace(results),
                    lhs_dtype)
      aliased = {int(m) for m in re.findall(r"\{(\d*)\}:\s*\(", instr.attrs)}
      written = sum(_element_bytes(t) * math.prod(d) for k, (t, d) in enumerate(results)
                    if k not in aliased)
      return Cost(0.0, reads + written)
    return Cost(0.0, reads + sum(_element_bytes(t) * math.prod(d) for t, d in results))


def _without_workspace(results: list) -> float:
  """A library call's result bytes without its scratch buffer (the trailing s8/u8 array)."""
  if len(results) > 1 and results[-1][0] in ("s8", "u8"):
    results = results[:-1]
  return sum(_element_bytes(t) * math.prod(d) for t, d in results)


def op_name(program: Program, name: str) -> str:
  """What an instruction computes, by the JAX operation it came from (its metadata's op_name,
  without the enclosing jit names)."""
  if name not in program.where:
    return ""
  m = re.search(r'op_name="([^"]+)"', program.where[name][0].attrs)
  if not m:
    return ""
  plumbing = ("while", "body", "closed_call", "cond", "branch_0_fun", "branch_1_fun")
  parts = [p for p in m[1].split("/") if not p.startswith("jit(") and p not in plumbing]
  return "/".join(parts)[-100:]


# --- a program's estimate ------------------------------------------------------------------------


def _is_copy(thunk) -> bool:
  return "Copy" in thunk.kind or "Memcpy" in thunk.kind


def weighted_launches(block, trips: dict, times: float = 1.0):
  """(thunk, runs per run of `block`) of every launch on the normal path: a conditional's
  branch with the most launches other than copies; a loop's body `trip count` times (once per
  pass where XLA does not know the count, with its condition)."""
  for t in block:
    if not t.blocks:
      yield t, times
    elif t.kind == "kConditional":
      branch = max(t.blocks.values(), key=lambda b: sum(not _is_copy(x) for x in b))
      yield from weighted_launches(branch, trips, times)
    elif t.kind == "kWhile":
      n = trips.get(t.id)
      yield from weighted_launches(t.blocks.get("body", []), trips, times * (n or 1))
      if n is None:
        yield from weighted_launches(t.blocks.get("condition", []), trips, times)
    else:
      for b in t.blocks.values():
        yield from weighted_launches(b, trips, times)


def command_buffer_runs(block, trips: dict, times: float = 1.0) -> float:
  """How often command buffers are launched per run of `block` (a thunk sequence after XLA's
  thunk passes; a loop inside one runs on the device)."""
  n = 0.0
  for t in block:
    if t.kind == "kCommandBuffer":
      n += times
    elif t.kind == "kConditional":
      n += max((command_buffer_runs(b, trips, times) for b in t.blocks.values()), default=0.0)
    elif t.kind == "kWhile":
      k = trips.get(t.id)
      n += command_buffer_runs(t.blocks.get("body", []), trips, times * (k or 1))
      if k is None:
        n += command_buffer_runs(t.blocks.get("condition", []), trips, times)
    else:
      for b in t.blocks.values():
        n += command_buffer_runs(b, trips, times)
  return n


def estimate(program: Program, launches, annotations: dict, peaks_: Peaks, captured: set,
             graph_launches: float = 0.0, top: int = 10) -> dict:
  """ESTIMATED time of `launches` ((thunk, runs) pairs) on the GPU of `peaks_`.

  annotations: thunk id -> the HLO instruction it runs; captured: ids inside command buffers;
  graph_launches: command buffers launched (each costs a launch).
  """
  total = collections.Counter({"launch": graph_launches * LAUNCH_US})
  per_kernel = {}
  for t, runs in launches:
    name = annotations.get(t.id, t.name)
    c = program.cost(name)
    flop_s, byte_s = c.flops / peaks_.matmul_flops(c.dtype), c.bytes / peaks_.bandwidth
    roof_us = 1e6 * max(flop_s, byte_s)
    kernel_us = max(roof_us, MIN_KERNEL_US)
    launch_us = 0.0 if t.id in captured else LAUNCH_US
    total.update({"flops": c.flops * runs, "bytes": c.bytes * runs, "roof": roof_us * runs,
                  "small": (kernel_us - roof_us) * runs, "launch": launch_us * runs,
                  "launches": runs, "uncaptured": runs * (t.id not in captured)})
    k = per_kernel.setdefault(name, {"kernel": name, "launches": 0, "GFLOP": 0.0, "MB": 0.0,
                                     "us": 0.0, "bound": "", "what": op_name(program, name)})
    k["launches"] += runs
    k["GFLOP"] += c.flops * runs / 1e9
    k["MB"] += c.bytes * runs / 1e6
    k["us"] += (kernel_us + launch_us) * runs
    k["bound"] = ("latency" if roof_us < MIN_KERNEL_US else
                  "compute" if flop_s > byte_s else "memory")
  heaviest = sorted(per_kernel.values(), key=lambda k: -k["us"])[:top]
  for k in heaviest:
    k.update(GFLOP=round(k["GFLOP"], 3), MB=round(k["MB"], 2), us=round(k["us"], 1),
             launches=round(k["launches"], 2))
  ms = lambda us: round(us / 1e3, 4)
  return {"uncaptured_launches": total["uncaptured"], "graph_launches": graph_launches,
          "matmul_GFLOP": round(total["flops"] / 1e9, 3),
          "kernel_GB": round(total["bytes"] / 1e9, 4),
          "roofline_ms": ms(total["roof"]), "small_kernel_ms": ms(total["small"]),
          "launch_overhead_ms": ms(total["launch"]),
          "estimate_ms": ms(total["roof"] + total["small"] + total["launch"]),
          "top_kernels": heaviest}


def floor_ms(flops: float, nbytes_: float, peaks_: Peaks) -> dict:
  """The floor: `flops` at the bf16 matmul peak and `nbytes_` at full bandwidth, each alone
  (floor_compute_ms, floor_memory_ms); floor_ms is the larger: a program that overlaps the two
  perfectly (their sum double-counts a GEMM that streams its weights)."""
  f_ms, b_ms = 1e3 * flops / peaks_.matmul_flops("bf16"), 1e3 * nbytes_ / peaks_.bandwidth
  return {"floor_GFLOP": round(flops / 1e9, 3), "floor_GB": round(nbytes_ / 1e9, 4),
          "floor_compute_ms": round(f_ms, 4), "floor_memory_ms": round(b_ms, 4),
          "floor_ms": round(max(f_ms, b_ms), 4)}


# --- the essential work, from the jaxpr -------------------------------------------------------


def _aval_bytes(aval) -> int:
  return int(math.prod(aval.shape) * aval.dtype.itemsize) if hasattr(aval, "shape") else 0


def _eqn_flops(eqn) -> float:
  if eqn.primitive.name == "dot_general":
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval
    k = math.prod(lhs.shape[d] for d in lhs_contract)
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * k
  if eqn.primitive.name == "conv_general_dilated":
    rhs = eqn.invars[1].aval.shape
    out_feature = eqn.params["dimension_numbers"].rhs_spec[0]
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs) / rhs[out_feature]
  return 0.0


def _subjaxprs(eqn):
  """(jaxpr, runs per run of eqn) of each jaxpr inside eqn (a cond's costliest branch only)."""
  if eqn.primitive.name == "cond":
    branches = [b.jaxpr for b in eqn.params["branches"]]
    return [(max(branches, key=matmul_flops), 1)]
  if eqn.primitive.name == "scan":
    return [(eqn.params["jaxpr"].jaxpr, eqn.params["length"])]
  if eqn.primitive.name == "while":
    return [(eqn.params["body_jaxpr"].jaxpr, 1)]  # once: a pass (its trip count is not here)
  out = []
  for v in eqn.params.values():
    for j in (v if isinstance(v, (tuple, list)) else (v,)):
      inner = getattr(j, "jaxpr", j)
      if hasattr(inner, "eqns"):
        out.append((inner, 1))
  return out


def matmul_flops(jaxpr) -> float:
  """dot_general and convolution FLOPs of a jaxpr (loops: one pass of a while, scans whole)."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  return sum(_eqn_flops(e) + sum(n * matmul_flops(j) for j, n in _subjaxprs(e))
             for e in jaxpr.eqns)


def _loops(jaxpr):
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  for e in jaxpr.eqns:
    if e.primitive.name in ("while", "scan"):
      yield e
    else:
      for j, _ in _subjaxprs(e):
        yield from _loops(j)


def decode_loop(jaxpr) -> dict | None:
  """The costliest loop of a program (decoding's token loop): matmul FLOPs of one pass, the
  bytes of everything it reads (operands: weights, K/V, caches) and the FLOPs outside it."""
  loops = list(_loops(jaxpr))
  if not loops:
    return None
  body = lambda e: e.params["body_jaxpr" if e.primitive.name == "while" else "jaxpr"]
  loop = max(loops, key=lambda e: matmul_flops(body(e)))
  per_pass = matmul_flops(body(loop))
  inner = body(loop).jaxpr
  # The loop's operands as the body sees them (a while's condition constants come first).
  outer = (loop.invars[loop.params["cond_nconsts"]:] if loop.primitive.name == "while"
           else loop.invars)
  runs = loop.params["length"] if loop.primitive.name == "scan" else 1  # in matmul_flops
  return {"flops_per_pass": per_pass,
          "bytes_per_pass": sum(_bytes_read(inner, v) for v in inner.invars[:len(outer)]),
          "flops_outside": matmul_flops(jaxpr) - runs * per_pass}


_SLICES = ("gather", "dynamic_slice", "slice")


def _bytes_read(jaxpr, var) -> float:
  """Bytes of `var` that `jaxpr` reads: all of it, or what its slices and gathers read when
  nothing else reads it (the token's row of the embedding table, not the table)."""
  full = _aval_bytes(var.aval)
  total = 0.0
  for e in jaxpr.eqns:
    for i, v in enumerate(e.invars):
      if v is not var:
        continue
      subs = [j for j, _ in _subjaxprs(e)]
      if e.primitive.name in _SLICES and i == 0:
        total += _aval_bytes(e.outvars[0].aval)
      elif (len(subs) == 1 and len(subs[0].invars) == len(e.invars)
            and e.primitive.name not in ("while", "scan", "cond")):
        total += _bytes_read(subs[0], subs[0].invars[i])  # a call: follow the operand in
      else:
        return full
  return min(total, full)

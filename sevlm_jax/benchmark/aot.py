"""Compile-only GPU figures on any machine: launches, command buffers, memory and a roofline
estimate per program.

  pip install -e '.[aot]'                       # XLA's GPU compiler (jax[cuda13]); no GPU needed
  python -m sevlm_jax.benchmark --aot=h200      # or any of GPUS; --variants, --figures, --pairs
  python -m sevlm_jax.benchmark --aot=h200 --config.model.decode_kernels=pallas --aot_capture_while

Decoding gets the Pallas kernels where they are requested and Triton builds them (sm_80 and
later; `decode_kernels` in the record says which ran, `decode_kernels_requested` what was
asked). A GPU XLA cannot compile for with this plugin gets a record with `error` (the V100:
CUDA 13 has no sm_70; jax[cuda12] compiles it). `estimates` holds the roofline figures
(benchmark/roofline.py): ESTIMATES from the optimized HLO and the GPU's peaks, not timings.

XLA compiles each program (train_cached, train_tower, decode) for a GPU it is told about in
text (XLA's own device descriptions, vendored in third_party/xla_gpu_specs) and dumps the
runtime's thunk sequence: the exact list of kernel launches, cuBLAS calls, copies and cuDNN
calls, with while loops and conditionals as nested blocks, and after the thunk passes, what
command buffers (CUDA graphs) capture. One JSON line per program.

Counting rules (the path of a normal step): every thunk at the top level; for a conditional,
the branch with the most launches other than copies (the NaN guard's update, not the branch
that passes the state through; the others are counted in `other_branches`); for
a loop, its body and condition once each. A decode token is one pass of the loop per
`steps_per_check` tokens: its body, and its condition unless XLA knows the trip count (the
runtime then runs the body that many times and never the condition). A loop outside command
buffers whose trip count XLA does not know makes the host wait for its condition every
iteration (`host_syncs_per_iteration`).

Limits: there is no device to autotune on, so GEMMs run through cuBLAS with default
algorithms (Triton GEMMs are off: they need autotuning), and a real GPU may choose other
GEMM kernels or fusion boundaries. Times are not measured here.
"""

import collections
import dataclasses
import importlib.util
import os
import re
import shutil
import tempfile

from absl import flags

from sevlm_jax.benchmark import roofline

# XLA's NVIDIA descriptions (openxla/xla xla/backends/gpu/target_config/specs/), by --aot name.
SPECS = {"h200": "h200.txtpb", "h100": "h100_sxm.txtpb", "b200": "b200.txtpb",
         "rtx6000pro": "rtx6000pro.txtpb", "a100_sxm_80": "a100_sxm_80.txtpb",
         "a100_sxm_40": "a100_sxm_40.txtpb", "a100_pcie_80": "a100_pcie_80.txtpb",
         "a6000": "a6000.txtpb", "v100": "v100.txtpb"}
GPUS = tuple(SPECS)
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# XLA's device descriptions: inside an installed wheel (setup.cfg maps them there), else the
# checkout's third_party/.
_INSTALLED_SPECS = os.path.join(_PACKAGE, "_xla_gpu_specs")
SPEC_DIR = (_INSTALLED_SPECS if os.path.isdir(_INSTALLED_SPECS)
            else os.path.join(os.path.dirname(_PACKAGE), "third_party", "xla_gpu_specs"))
PROGRAMS = ("train_cached", "train_tower", "decode")
KINDS = ("fusion", "gemm", "copy", "cudnn", "other")
# No autotuning without a device: Triton GEMMs would need it ("Couldn't find output tile sizes").
BASE_OPTIONS = {"xla_gpu_enable_triton_gemm": False}


def requested() -> str | None:
  return flags.FLAGS.aot


def plugin_installed() -> bool:
  """Is a CUDA plugin of JAX (the [aot] extra) installed? Needs no GPU."""
  try:
    return any(importlib.util.find_spec(f"jax_plugins.xla_{cuda}") is not None
               for cuda in ("cuda13", "cuda12"))
  except ModuleNotFoundError:  # no jax_plugins package at all
    return False


# Fields of newer descriptions that the jax-cuda13 plugin 0.10.2 does not know (it rejects the
# whole text); none of them changes what is compiled.
_UNKNOWN_FIELDS = ("collective_memory_granularity", "mem_clock_ghz",
                   "max_blocks_per_multiprocessor")


def plugin_name() -> str:
  """The installed CUDA plugin of JAX and its version ('jax-cuda13-plugin 0.10.2')."""
  from importlib import metadata  # pylint: disable=import-outside-toplevel
  for cuda in ("cuda13", "cuda12"):
    try:
      return f"jax-{cuda}-plugin {metadata.version(f'jax-{cuda}-plugin')}"
    except metadata.PackageNotFoundError:
      continue
  return "none"


def target_config(gpu: str) -> str:
  """XLA's GpuTargetConfig text for the GPU, minus the lines the current plugin rejects."""
  with open(os.path.join(SPEC_DIR, SPECS[gpu]), encoding="utf-8") as f:
    return "".join(line for line in f
                   if not any(line.strip().startswith(k + ":") for k in _UNKNOWN_FIELDS))


def gpu_sharding(gpu: str):
  """A replicated sharding on a one-GPU mesh of the described device (no device needed)."""
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  topology = topologies.get_topology_desc(platform="cuda", topology="1x1x1",
                                          target_config=target_config(gpu))
  mesh = topologies.make_mesh(topology, (1,), ("x",))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


# --- the thunk sequence ------------------------------------------------------------------------


@dataclasses.dataclass
class Thunk:
  id: int
  kind: str  # XLA's thunk kind: kCustomKernel, kCublasLtMatmul, kCopy, kWhile, ...
  name: str
  blocks: dict = dataclasses.field(default_factory=dict)  # label -> [Thunk] (nested sequences)


_THUNK = re.compile(r"^(\s*)(\d+): (k\w+)\s+\[[^\]]*\]\s*(\S*)")
_LABEL = re.compile(r"^(\s*)([A-Za-z_][\w ]*):\s*$")


def parse_thunk_sequence(text: str) -> list[Thunk]:
  """XLA's `*thunk_sequence*.txt` dump -> a tree of thunks.

  Nesting is by indentation. A block label ("condition:", "body:", "true_branch:") names the
  sequence that follows inside the nearest thunk indented less than the label; XLA prints
  the first label of a while loop unindented, right after the loop's line, so such a label
  belongs to that thunk. Children without a label (a command buffer's) go under "".
  """
  root: list[Thunk] = []
  stack: list[tuple[int, Thunk, str]] = []  # (indent, thunk, current label)
  last_was_thunk = False
  for line in text.splitlines():
    m = _THUNK.match(line)
    if m:
      indent, thunk = len(m[1]), Thunk(int(m[2]), m[3], m[4])
      while stack and stack[-1][0] >= indent:
        stack.pop()
      if stack:
        _, parent, label = stack[-1]
        parent.blocks.setdefault(label, []).append(thunk)
      else:
        root.append(thunk)
      stack.append((indent, thunk, ""))
      last_was_thunk = True
      continue
    m = _LABEL.match(line)
    if m and stack:
      if not (last_was_thunk and not m[1]):  # else: glued to its loop's line, unindented
        while len(stack) > 1 and stack[-1][0] >= len(m[1]):
          stack.pop()  # close the blocks indented deeper than the label
      indent, thunk, _ = stack[-1]
      stack[-1] = (indent, thunk, m[2].strip())
    last_was_thunk = False
  return root


def kind_of(thunk: Thunk) -> str:
  k = thunk.kind
  if k in ("kKernel", "kCustomKernel"):
    return "fusion"
  if k in ("kGemm", "kCublasLtMatmul"):
    return "gemm"
  if "Copy" in k or "Memcpy" in k:
    return "copy"
  if "CuDnn" in k or "Convolution" in k:
    return "cudnn"
  return "other"


def _launches(block: list[Thunk]) -> list[Thunk]:
  """The launches of a sequence on the normal path (see the module's counting rules)."""
  out = []
  for t in block:
    if not t.blocks:
      out.append(t)
    elif t.kind == "kConditional":  # the branch doing the most work other than copies
      out.extend(max((_launches(b) for b in t.blocks.values()),
                     key=lambda b: sum(kind_of(x) != "copy" for x in b)))
    else:  # loops (body and condition once), command buffers, other wrappers
      for b in t.blocks.values():
        out.extend(_launches(b))
  return out


def _all_launches(block: list[Thunk]) -> list[Thunk]:
  """Every launch, in every branch and block."""
  out = []
  for t in block:
    if t.blocks:
      for b in t.blocks.values():
        out.extend(_all_launches(b))
    else:
      out.append(t)
  return out


def by_kind(launches: list[Thunk]) -> dict[str, int]:
  counts = collections.Counter(kind_of(t) for t in launches)
  return {k: counts.get(k, 0) for k in KINDS}


def _walk(block: list[Thunk], inside_cb: bool = False):
  """(thunk, inside a command buffer) for every thunk, depth first."""
  for t in block:
    yield t, inside_cb
    for b in t.blocks.values():
      yield from _walk(b, inside_cb or t.kind == "kCommandBuffer")


def summarize(sequence: list[Thunk], after_passes: list[Thunk] | None,
              trip_counts: dict[int, int]) -> dict:
  """Launch figures of one program from its thunk sequence (and the one after thunk passes).

  trip_counts: thunk id -> the loop's trip count, for the loops XLA knows it of.
  """
  path = _launches(sequence)
  record = {"launches": len(path), "by_kind": by_kind(path),
            "other_branches": len(_all_launches(sequence)) - len(path)}
  final = after_passes if after_passes is not None else sequence
  in_cb = {t.id: inside for t, inside in _walk(final)}
  loops = []
  for t, _ in _walk(sequence):
    if t.kind != "kWhile":
      continue
    body = _launches(t.blocks.get("body", []))
    captured = in_cb.get(t.id, False)
    loops.append({"body": len(body), "body_by_kind": by_kind(body),
                  "condition": len(_launches(t.blocks.get("condition", []))),
                  "trip_count": trip_counts.get(t.id), "in_command_buffer": captured,
                  "host_syncs_per_iteration": int(not captured and t.id not in trip_counts)})
  record["loops"] = loops
  final_path = _launches(final)
  record["command_buffers"] = sum(t.kind == "kCommandBuffer" for t, _ in _walk(final))
  record["captured"] = sum(in_cb.get(t.id, False) for t in final_path)
  return record


# --- files of one dump -------------------------------------------------------------------------


def _one(folder: str, suffix: str) -> str | None:
  names = sorted(n for n in os.listdir(folder) if n.endswith(suffix))
  if len(names) > 1:
    raise ValueError(f"{folder} holds several *{suffix}; dump one program per folder")
  if not names:
    return None
  with open(os.path.join(folder, names[0]), encoding="utf-8") as f:
    return f.read()


def loop_trip_counts(metadata: str, hlo: str) -> dict[int, int]:
  """thunk id -> known trip count of each while loop (thunk metadata names the HLO op)."""
  known = {m[1]: int(m[2]) for m in re.finditer(
      r"%(while[\w.\-]*) = .*?\"known_trip_count\":\{\"n\":\"(\d+)\"", hlo)}
  ids = re.findall(r'profile_annotation: "([^"]+)"\s*thunk_id: (\d+)', metadata)
  return {int(i): known[name] for name, i in ids if name in known}


def summarize_dump(folder: str) -> dict:
  """summarize() of the single program dumped in `folder` by XLA (--xla_dump_to)."""
  sequence = _one(folder, ".thunk_sequence.txt")
  if sequence is None:
    raise FileNotFoundError(f"no *.thunk_sequence.txt in {folder}")
  after = _one(folder, ".thunk_sequence_after_thunk_passes.txt")
  trips = loop_trip_counts(_one(folder, ".thunk_metadata.txt") or "",
                           _one(folder, "gpu_after_optimizations.txt") or "")
  return summarize(parse_thunk_sequence(sequence),
                   None if after is None else parse_thunk_sequence(after), trips)


# --- compiling the benchmark's programs ----------------------------------------------------------


def memory_fields(compiled, benchmark) -> dict:
  m = compiled.memory_analysis()
  gib = lambda n: round(n / 2**30, 3)
  return {"argument_GiB": gib(m.argument_size_in_bytes), "output_GiB": gib(m.output_size_in_bytes),
          "temp_GiB": gib(m.temp_size_in_bytes), "alias_GiB": gib(m.alias_size_in_bytes),
          "program_GiB": gib(benchmark.program_bytes(compiled))}


def _abstract(tree, sharding):
  import jax  # pylint: disable=import-outside-toplevel
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def programs(benchmark, setup, variant: str, figures: list[str], sharding):
  """(name, jitted function, abstract arguments, extra figures) of each requested program."""
  import jax  # pylint: disable=import-outside-toplevel
  from sevlm_jax.training import step as step_lib  # pylint: disable=import-outside-toplevel
  params = jax.eval_shape(setup.fresh_params)
  vad_table = _abstract(setup.vad_table, sharding)
  for name in PROGRAMS:
    if name not in figures:
      continue
    if name.startswith("train"):
      batch = benchmark.synthetic_batch(setup.model.config, flags.FLAGS.pairs,
                                        flags.FLAGS.seq_len)
      batch.pop("image" if name == "train_cached" else "patches")
      state = jax.eval_shape(lambda p: step_lib.init_train_state(p, setup.tx, False), params)
      args = (state, batch, vad_table, jax.random.key(0))
      yield name, benchmark.train_step_fn(setup, variant), _abstract(args, sharding), {
          "batch_seqs": 2 * flags.FLAGS.pairs}
    else:
      steps = int(setup.config.eval.steps_per_check)
      s = setup.model.config.vision.image_size
      images = jax.ShapeDtypeStruct((2 * flags.FLAGS.pairs, s, s, 3), jax.numpy.uint8)
      yield name, benchmark.decode_fn(setup, variant, steps), _abstract((params, images), sharding), {
          "images": 2 * flags.FLAGS.pairs, "new_tokens": flags.FLAGS.new_tokens,
          "steps_per_check": steps}


# XLA's default capture plus while loops (and conditionals): decoding's token loop becomes one
# CUDA graph with conditional nodes (--aot_capture_while).
CAPTURE_WHILE = "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,CONDITIONAL,WHILE"


def compile_options(dump_dir: str, capture_while: bool = False) -> dict:
  options = {**BASE_OPTIONS, "xla_dump_to": dump_dir}
  if capture_while:
    options["xla_gpu_enable_command_buffer"] = CAPTURE_WHILE
  return options


def compile_program(fn, args, dump_dir: str, capture_while: bool = False):
  return fn.lower(*args).compile(compiler_options=compile_options(dump_dir, capture_while))


def compute_capability(gpu: str) -> tuple[int, int]:
  return roofline.compute_capability(target_config(gpu))


def decode_kernels_for(gpu: str, requested: str) -> str:
  """The decoding kernels compiled for the GPU: the requested ones where Triton builds them."""
  from sevlm_jax.models import decode_kernels  # pylint: disable=import-outside-toplevel
  return decode_kernels.for_compute_capability(requested, compute_capability(gpu))


# --- the roofline estimate of a dumped program ----------------------------------------------


def _annotations(metadata: str) -> dict[int, str]:
  """thunk id -> the HLO instruction it runs (XLA's thunk metadata)."""
  return {int(i): name for name, i in
          re.findall(r'profile_annotation: "([^"]+)"\s*thunk_id: (\d+)', metadata)}


def _essential_train_bytes(args) -> int:
  """Parameters read, the trainable ones written, their gradients written and read, both Adam
  moments read and written, once each; and the batch read once."""
  import jax  # pylint: disable=import-outside-toplevel
  from sevlm_jax.training import optim as optim_lib  # pylint: disable=import-outside-toplevel
  size = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
  state, batch = args[0], args[1]
  trainable, _ = optim_lib.split_params(state.params, False)
  return size(state.params) + 3 * size(trainable) + 2 * size(state.opt_state) + size(batch)


def roofline_fields(folder: str, gpu: str, fn, args, extra: dict) -> dict:
  """ESTIMATES of the program's time on the GPU (benchmark/roofline.py) from its dump."""
  import jax  # pylint: disable=import-outside-toplevel
  hlo = _one(folder, "gpu_after_optimizations.txt") or ""
  metadata = _one(folder, ".thunk_metadata.txt") or ""
  sequence = parse_thunk_sequence(_one(folder, ".thunk_sequence.txt") or "")
  after = _one(folder, ".thunk_sequence_after_thunk_passes.txt")
  final = parse_thunk_sequence(after) if after is not None else sequence
  captured = {t.id for t, inside in _walk(final) if inside}
  trips = loop_trip_counts(metadata, hlo)
  program, notes = roofline.Program(hlo), _annotations(metadata)
  peaks = roofline.peaks(target_config(gpu))
  fields = {"peak_bf16_TFLOPs": round(peaks.matmul_flops("bf16") / 1e12, 1),
            "peak_f32_TFLOPs": round(peaks.matmul_flops("f32") / 1e12, 1),
            "bandwidth_TBps": round(peaks.bandwidth / 1e12, 3), "peaks_from": peaks.source}
  whole = roofline.estimate(program, roofline.weighted_launches(sequence, trips), notes, peaks,
                            captured, roofline.command_buffer_runs(final, trips))
  jaxpr = fn.trace(*args).jaxpr
  if "batch_seqs" in extra:  # a train step
    floor = roofline.floor_ms(roofline.matmul_flops(jaxpr), _essential_train_bytes(args), peaks)
    fields.update(whole, **floor)
    fields["estimate_seqs_per_s"] = round(extra["batch_seqs"] / whole["estimate_ms"] * 1e3, 1)
    return fields
  fields.update(whole)
  loop_thunk = next((t for t, _ in _walk(sequence) if t.kind == "kWhile"), None)
  loop = roofline.decode_loop(jaxpr)
  if loop_thunk is None or loop is None:
    return fields
  tokens_per_pass = max(extra["steps_per_check"], 1)
  passes = trips.get(loop_thunk.id) or -(-extra["new_tokens"] // tokens_per_pass)
  final_loop = next((t for t, _ in _walk(final) if t.id == loop_thunk.id), None)
  once = {loop_thunk.id: 1} if loop_thunk.id in trips else {}  # a known count runs no condition
  per_pass = roofline.estimate(program, roofline.weighted_launches([loop_thunk], once), notes,
                               peaks, captured, roofline.command_buffer_runs(
                                   final_loop.blocks.get("body", []) if final_loop else [], {}))
  token_floor = roofline.floor_ms(loop["flops_per_pass"], loop["bytes_per_pass"], peaks)
  program_floor = roofline.floor_ms(
      loop["flops_outside"] + passes * loop["flops_per_pass"],
      sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(args))
      + passes * loop["bytes_per_pass"], peaks)
  fields.update(program_floor)
  fields.update({
      "estimate_us_per_token": round(per_pass["estimate_ms"] * 1e3 / tokens_per_pass, 1),
      "roofline_us_per_token": round(per_pass["roofline_ms"] * 1e3 / tokens_per_pass, 2),
      "floor_us_per_token": round(token_floor["floor_ms"] * 1e3 / tokens_per_pass, 2),
      "estimate_images_per_s": round(extra["images"] / whole["estimate_ms"] * 1e3, 1)})
  return fields


def _error_record(gpu: str, err: Exception) -> str:
  first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
  cc = "%d.%d" % compute_capability(gpu)
  hint = (" (CUDA 13's ptxas has no sm_70: compile for it with jax[cuda12])"
          if compute_capability(gpu) < (7, 5) else "")
  return f"XLA could not compile for sm_{cc}{hint}: {first}"


def main(benchmark, config, variants: list[str], figures: list[str]) -> list[dict]:
  """Compiles each requested program of each variant for the --aot GPU; one JSON line each.

  benchmark: the sevlm_jax.benchmark module, passed in (run as __main__, importing it again
  would define its flags twice); its set-up, programs and flags are the ones timed on a GPU.
  """
  import jax  # pylint: disable=import-outside-toplevel
  if not plugin_installed():
    raise SystemExit("--aot needs XLA's GPU compiler: pip install -e '.[aot]' (jax[cuda13] of "
                     f"jax's own version, {jax.__version__})")
  # Compiling needs no device; without this the plugin would look for a driver.
  jax.config.update("jax_platforms", "cpu")
  gpu = flags.FLAGS.aot
  capture_while = getattr(flags.FLAGS, "aot_capture_while", False)
  sharding = gpu_sharding(gpu)
  device = re.search(r'device_description_str: "([^"]+)"', target_config(gpu))[1]
  cc = compute_capability(gpu)
  keep = flags.FLAGS.aot_dump_dir
  root = keep or tempfile.mkdtemp(prefix="sevlm_aot_")
  records = []
  try:
    for variant in variants:
      variant_config = benchmark.variant_config(config, variant)
      requested = variant_config.model.decode_kernels
      variant_config.model.decode_kernels = decode_kernels_for(gpu, requested)
      setup = benchmark.Setup(variant_config)
      for name, fn, args, extra in programs(benchmark, setup, variant, figures, sharding):
        folder = os.path.join(root, f"{gpu}_{variant}_{name}")
        shutil.rmtree(folder, ignore_errors=True)
        head = {"what": name, "variant": variant, "aot": gpu, "device": device,
                "compute_capability": "%d.%d" % cc, "jax": jax.__version__,
                "plugin": plugin_name(),
                "command_buffer": "while loops captured" if capture_while else "XLA's default"}
        if name == "decode":
          head["decode_kernels"] = variant_config.model.decode_kernels
          if requested != head["decode_kernels"]:
            head["decode_kernels_requested"] = requested
        try:
          compiled = compile_program(fn, args, folder, capture_while)
        except Exception as err:  # pylint: disable=broad-except  # one GPU's failure, reported
          records.append(benchmark.emit({**head, "error": _error_record(gpu, err)}))
          continue
        figures_ = summarize_dump(folder)
        if name == "decode" and figures_["loops"]:
          loop = figures_["loops"][0]
          tokens_per_pass = max(extra["steps_per_check"], 1)  # 0: one token, never a test
          per_iteration = loop["body"] + (loop["condition"] if loop["trip_count"] is None else 0)
          figures_["launches_per_token"] = round(per_iteration / tokens_per_pass, 2)
          figures_["host_syncs_per_token"] = round(
              loop["host_syncs_per_iteration"] / tokens_per_pass, 2)
        figures_["pallas_kernels"] = _one(folder, "gpu_after_optimizations.txt").count(
            'custom_call_target="__gpu$xla.gpu.triton"')
        records.append(benchmark.emit({
            **head, **extra, **figures_, **memory_fields(compiled, benchmark),
            "estimates": roofline_fields(folder, gpu, fn, args, extra)}))
  finally:
    if not keep:
      shutil.rmtree(root, ignore_errors=True)
  return records

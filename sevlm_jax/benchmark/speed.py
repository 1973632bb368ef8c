"""Speed and memory of the train step, decoding and the input pipeline: one JSON line per figure.

  python -m sevlm_jax.benchmark --config=configs/sevlm.py:artemis_v1          # full size, GPU
  python -m sevlm_jax.benchmark --config=configs/sevlm.py:demo --pairs=8      # tiny, CPU
  python -m sevlm_jax.benchmark --config.model.vision_attention=cudnn --variants=optimized
  python -m sevlm_jax.benchmark --aot=h200   # compile-only launches and memory, no GPU needed

Figures (random weights and inputs: only speed is measured; the public recipe's shapes by
default, 32 pairs = 64 sequences of 30 tokens, vision tower frozen, 50,261-token softmax):
  train_cached   train step reading cached bf16 patch features (sevlm_jax.data.features)
  train_tower    train step running the frozen vision tower on the images
  decode         greedy decoding of 25 tokens for 2*pairs images, vision tower included,
                 never stopping early (as the PyTorch peer does); on a CPU also the model's
                 GFLOP per image, a matmul peak of its shapes measured in the same run and
                 the decode's share of it, the tower's and LM head's own times (cpu_peak.py)
  pipeline       batches/s of the grain training pipeline on the host (demo data at the
                 model's image size), with and without the feature-cache lookup
  memory         peak device memory of the process (after the variant's figures) and of
                 each compiled program (arguments + outputs + temporaries - donated)
Variants:
  optimized      bf16 matmuls with float32 master weights, bf16 logits into the loss over a
                 vocabulary padded to a multiple of 128, cross-attention K/V once per
                 image, decoding weights cast once and config.eval.steps_per_check tokens
                 between "all ended?" tests (0: none, a loop of known trip count); with
                 --config.model.decode_kernels=pallas (opt-in), a decoding step's attentions
                 and VAD encoder in Pallas kernels on a GPU, and the decode figure repeated
                 with 'xla', with the share of its tokens that equal the kernels'
  baseline       the same design with those switched off: float32 compute, float32
                 logits over the 50,261-token vocabulary, each image's patches repeated for
                 both sequences of its pair, one token per loop test, XLA's decoding kernels
Every time is the median of --iters runs after --warmup runs, each run ending in
jax.block_until_ready. --profile_dir traces a few optimized train steps and decodes and
prints where the device time goes (the trace is kept there for Perfetto / TensorBoard).
"""

import collections
import gzip
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sevlm_jax.benchmark import aot
from sevlm_jax.benchmark import cpu_peak
from sevlm_jax import vocab
from sevlm_jax.data import tokenizer as tokenizer_lib
from sevlm_jax.inference import decode as decode_lib
from sevlm_jax.models import sevlm as sevlm_lib
from sevlm_jax.models.config import ModelConfig
from sevlm_jax.training import optim as optim_lib
from sevlm_jax.training import step as step_lib

VARIANTS = ("optimized", "baseline")
FIGURES = ("train_cached", "train_tower", "decode", "pipeline", "memory")


def emit(record: dict) -> dict:
  print(json.dumps(record), flush=True)
  return record


def device_fields() -> dict:
  d = jax.local_devices()[0]
  return {"device": getattr(d, "device_kind", d.platform), "platform": d.platform,
          "jax": jax.__version__}


def median_seconds(run: Callable[[], Any], iters: int, warmup: int) -> float:
  """Median wall time of run() over iters calls, each waited for, after warmup calls."""
  for _ in range(warmup):
    jax.block_until_ready(run())
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(run())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def program_bytes(compiled) -> int | None:
  """Device bytes one compiled program needs: arguments + outputs + temporaries - aliased."""
  try:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)
  except Exception:  # pylint: disable=broad-except  # not every backend reports it
    return None


def peak_device_bytes() -> int | None:
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


# --- set-up ------------------------------------------------------------------------------------


def variant_config(config: ml_collections.ConfigDict, variant: str) -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise app.UsageError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
  c = ml_collections.ConfigDict(config.to_dict())
  c.optim.train_vision = False  # the recipe's frozen tower
  c.model.dtype = "bfloat16" if variant == "optimized" else "float32"
  if variant == "baseline":
    c.eval.steps_per_check = 1
    c.model.vision_attention = "xla"
    c.model.decode_kernels = "xla"
    c.train.pad_vocab_to = 1
    c.train.pair_kv_once = False
  return c


def synthetic_batch(model_cfg: ModelConfig, pairs: int, seq_len: int, seed: int = 0) -> dict:
  """A host batch of `pairs` images and 2 sequences each: emotion part then explanation."""
  rng = np.random.default_rng(seed)
  s, p, d = model_cfg.vision.image_size, model_cfg.vision.num_patches, model_cfg.decoder.width
  ids = rng.integers(0, vocab.GPT2_VOCAB_SIZE, (pairs, 2, seq_len)).astype(np.int32)
  segs = np.full_like(ids, model_cfg.emotion_segment_id)
  segs[..., 6:] = model_cfg.explanation_segment_id
  labels = ids.copy()
  labels[..., 0] = -1
  return {
      "image": rng.integers(0, 256, (pairs, s, s, 3), dtype=np.uint8),
      "patches": rng.standard_normal((pairs, p, d)).astype(jnp.bfloat16),
      "input_ids": ids, "segment_ids": segs, "labels": labels,
      "token_mask": np.ones_like(ids),
  }


class Setup:
  """Model, random parameters, optimiser and VAD table of one variant, on the device."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.model = sevlm_lib.SEVLM(ModelConfig.from_dict(config.model.to_dict()))
    self._init = jax.jit(sevlm_lib.init_params, static_argnums=0)
    abstract = jax.eval_shape(self._init, self.model.config, jax.random.key(0))
    self.num_params = sum(x.size for x in jax.tree.leaves(abstract))
    trainable, _ = optim_lib.split_params(abstract, False)
    self.tx = optim_lib.create_optimizer(config.optim, trainable, total_steps=10_000)
    rng = np.random.default_rng(1)
    self.vad_table = jnp.asarray(rng.uniform(-1, 1, (self.model.config.decoder.vocab_size, 3)),
                                 jnp.float32)

  def fresh_params(self):
    """New random parameters on the device (one copy alive per figure: honest peak memory)."""
    return self._init(self.model.config, jax.random.key(self.config.seed))


# --- figures -------------------------------------------------------------------------------------


def train_step_fn(setup: Setup, variant: str) -> Callable:
  del variant  # the variant's config (variant_config) carries its switches
  return jax.jit(step_lib.make_train_step(setup.model, setup.config, setup.tx), donate_argnums=0)


def bench_train(setup: Setup, variant: str, cached: bool) -> tuple[dict, Callable, dict]:
  """(figure, one more step as a callable, the dict holding its state: clear it to free)."""
  batch = synthetic_batch(setup.model.config, flags.FLAGS.pairs, flags.FLAGS.seq_len)
  batch.pop("image" if cached else "patches")
  batch = jax.device_put(batch)
  step = train_step_fn(setup, variant)
  state = step_lib.init_train_state(setup.fresh_params(), setup.tx, False)
  rng = jax.random.key(0)
  compiled = step.lower(state, batch, setup.vad_table, rng).compile()
  holder = {"state": state}

  def run():
    holder["state"], metrics = compiled(holder["state"], batch, setup.vad_table, rng)
    return metrics

  seconds = median_seconds(run, flags.FLAGS.iters, flags.FLAGS.warmup)
  loss = float(run()["loss"])
  seqs = 2 * flags.FLAGS.pairs
  record = {"what": "train_cached" if cached else "train_tower", "variant": variant,
            "batch_seqs": seqs, "seq_len": flags.FLAGS.seq_len, "ms": round(seconds * 1e3, 3),
            "seqs_per_s": round(seqs / seconds, 1), "loss_finite": bool(np.isfinite(loss)),
            "program_GiB": _gib(program_bytes(compiled))}
  return record, run, holder


def decode_fn(setup: Setup, variant: str, steps: int) -> Callable:
  tokenizer = tokenizer_lib.load_tokenizer()
  prompt = jnp.asarray(tokenizer.prompt_ids, jnp.int32)

  @jax.jit
  def decode(params, images):
    if variant == "optimized":
      params = decode_lib.cast_for_decoding(params, setup.model.config)
    tokens, _ = decode_lib.generate(
        setup.model, params, images, setup.vad_table, prompt, max_new_tokens=flags.FLAGS.new_tokens,
        because_id=tokenizer.because_id, eos_id=-1, pad_id=vocab.PAD_ID,
        steps_per_check=steps)
    return tokens

  return decode


def make_decode(setup: Setup, variant: str, steps: int):
  return decode_fn(setup, variant, steps), setup.fresh_params()


def bench_decode(setup: Setup, variant: str, steps: int) -> tuple[dict, Callable, np.ndarray]:
  """(figure, one more decode as a callable, the tokens)."""
  n = 2 * flags.FLAGS.pairs
  s = setup.model.config.vision.image_size
  images = jax.device_put(np.random.default_rng(2).integers(0, 256, (n, s, s, 3), dtype=np.uint8))
  decode, params = make_decode(setup, variant, steps)
  compiled = decode.lower(params, images).compile()
  seconds = median_seconds(lambda: compiled(params, images), max(flags.FLAGS.iters // 3, 3),
                           flags.FLAGS.warmup)
  tokens = np.asarray(compiled(params, images))
  record = {"what": "decode", "variant": variant, "steps_per_check": steps, "images": n,
            "decode_kernels": setup.model.config.decode_kernels,
            "new_tokens": flags.FLAGS.new_tokens,
            "tokens_generated": int(tokens.shape[1]), "ms": round(seconds * 1e3, 3),
            "images_per_s": round(n / seconds, 2),
            "program_GiB": _gib(program_bytes(compiled))}
  if jax.default_backend() == "cpu":  # how near the machine's limit (benchmark/cpu_peak.py)
    record.update(cpu_decode_fields(setup, params, images, n / seconds))
  return record, lambda: compiled(params, images), tokens


def cpu_decode_fields(setup: Setup, params, images, images_per_s: float) -> dict:
  """The model's GFLOP per image, the measured matmul peak of its shapes, the decode's share of
  it, the tower's and the LM head's time on their own, and the load the run shared with."""
  c = setup.model.config
  prompt_len = len(tokenizer_lib.load_tokenizer().prompt_ids)
  flops = cpu_peak.decode_flops_per_image(c, prompt_len, flags.FLAGS.new_tokens)
  peak = cpu_peak.matmul_peak(c, images.shape[0])
  return {"GFLOP_per_image": {k: round(v / 1e9, 2) for k, v in flops.items()},
          "matmul_peak_GFLOP_per_s": peak,
          **cpu_peak.share_fields(images_per_s, flops["total"], peak),
          **cpu_peak.phase_ms(setup.model, jax.jit(lambda p: decode_lib.cast_for_decoding(
              p, setup.model.config))(params), images, flags.FLAGS.new_tokens),
          "host_cpus": os.cpu_count(), "load_avg_1min": round(os.getloadavg()[0], 2)}


def bench_pipeline(config: ml_collections.ConfigDict) -> list[dict]:
  """Host-side batches/s of the training pipeline, the step rate it has to keep up with."""
  from sevlm_jax.data import sources  # pylint: disable=import-outside-toplevel
  from sevlm_jax.data import features  # pylint: disable=import-outside-toplevel
  from sevlm_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  size = config.model.vision.image_size
  root = tempfile.mkdtemp(prefix="sevlm_bench_pipeline_")
  ready = sources.ensure_demo_dataset(root, num_images=flags.FLAGS.pipeline_images, image_size=size)
  model_cfg = ModelConfig.from_dict(config.model.to_dict())
  n_train = len(pipeline.training_images(ready))
  pairs = min(flags.FLAGS.pairs, n_train)
  shape = (model_cfg.vision.num_patches, model_cfg.decoder.width)
  rng = np.random.default_rng(0)
  records = []
  for with_cache in (False, True):
    cache = None
    if with_cache:  # random rows of the real shape: the lookup cost, not the tower's
      random_patches = lambda images: rng.standard_normal((len(images),) + shape, np.float32)
      cache = features.PatchCache(features.build(os.path.join(root, "patches.npy"), ready,
                                                 "train", random_patches))
    loader = pipeline.train_loader(ready, tokenizer_lib.load_tokenizer(), batch_size=pairs,
                                   max_len=flags.FLAGS.seq_len, seed=0, shard_index=0, shard_count=1)
    it = iter(loader)
    for _ in range(2):
      next(it)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < 5.0:
      batch = next(it)
      if cache is not None:
        batch["patches"] = cache[batch["image_index"]]
      count += 1
    rate = count / (time.perf_counter() - start)
    records.append(emit({"what": "pipeline", "feature_cache": with_cache, "batch_pairs": pairs,
                         "image_size": size, "batches_per_s": round(rate, 1),
                         "host_cpus": os.cpu_count(), **device_fields()}))
  return records


# --- profile ---------------------------------------------------------------------------------


def summarize_trace(trace_dir: str, steps: int, top: int = 15) -> list[dict]:
  """Device time per kernel name from the Perfetto trace jax.profiler wrote, per step."""
  paths = [os.path.join(r, f) for r, _, fs in os.walk(trace_dir) for f in fs
           if f.endswith(".trace.json.gz")]
  if not paths:
    return []
  with gzip.open(max(paths, key=os.path.getmtime)) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  process_names = {e["pid"]: str(e.get("args", {}).get("name", "")) for e in events
                   if e.get("ph") == "M" and e.get("name") == "process_name"}
  device_pids = {pid for pid, name in process_names.items() if "/device:" in name}
  if not device_pids:  # the CPU backend records no device streams
    return [{"device_ms_per_step": None, "processes": sorted(process_names.values())}]
  per_name, total, launches = collections.Counter(), 0.0, 0
  for e in events:
    if e.get("ph") == "X" and e.get("pid") in device_pids and "dur" in e:
      per_name[e["name"]] += float(e["dur"])
      total += float(e["dur"])
      launches += 1
  rows = [{"kernel": name[:120], "ms_per_step": round(us / 1e3 / steps, 4),
           "share": round(us / total, 4)} for name, us in per_name.most_common(top)]
  return [{"device_ms_per_step": round(total / 1e3 / steps, 4), "distinct_kernels": len(per_name),
           "launches_per_step": round(launches / steps, 1)}] + rows


def profile(kind: str, run: Callable[[], Any], steps: int) -> None:
  trace_dir = os.path.join(flags.FLAGS.profile_dir, kind)
  jax.block_until_ready(run())
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    for _ in range(steps):
      jax.block_until_ready(run())
  for row in summarize_trace(trace_dir, steps):
    emit({"what": "profile", "of": kind, **row})


# --- main --------------------------------------------------------------------------------------


def _gib(n: int | None) -> float | None:
  return None if n is None else round(n / 2**30, 3)


def run_variant(config: ml_collections.ConfigDict, variant: str, figures: list[str]) -> None:
  setup = Setup(variant_config(config, variant))
  base = {**device_fields(), "params_M": round(setup.num_params / 1e6, 1)}
  for cached in (True, False):
    if ("train_cached" if cached else "train_tower") in figures:
      record, run, holder = bench_train(setup, variant, cached)
      emit({**record, **base})
      if flags.FLAGS.profile_dir and variant == "optimized":
        profile("train_cached" if cached else "train_tower", run, 5)
      holder.clear()  # free this figure's train state before the next one
  if "decode" in figures:
    sweep = [int(v) for v in flags.FLAGS.steps_per_check] if variant == "optimized" else []
    default = int(setup.config.eval.steps_per_check)
    sweep = sweep or [default]
    main_steps = default if default in sweep else sweep[0]  # profiled and compared
    for steps in sweep:
      record, run, tokens = bench_decode(setup, variant, steps)
      emit({**record, **base})
      if flags.FLAGS.profile_dir and variant == "optimized" and steps == main_steps:
        profile("decode", run, 3)
      del run  # and with it the figure's parameters
      if steps == main_steps and setup.model.config.decode_kernels != "xla":
        # The same decode through XLA's kernels, side by side: the Pallas kernels' speed-up,
        # and how many of their greedy tokens XLA's path repeats (in bf16 the kernels keep
        # scores in float32, so a near tie may tip; on a CPU both are the same program).
        plain = ml_collections.ConfigDict(setup.config.to_dict())
        plain.model.decode_kernels = "xla"
        record, run, xla_tokens = bench_decode(Setup(plain), variant, steps)
        del run
        emit({**record, **base, "token_agreement": round(float(np.mean(xla_tokens == tokens)), 4)})
  if "memory" in figures:
    emit({"what": "peak_memory", "variant": variant,
          "GiB": _gib(peak_device_bytes()), **base})


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  unknown = sorted(set(flags.FLAGS.figures) - set(FIGURES))
  if unknown:
    raise app.UsageError(f"unknown figure {unknown[0]!r}; choose from {', '.join(FIGURES)}")
  config = flags.FLAGS.config
  if aot.requested():  # compile-only figures for a GPU, on any machine
    aot.main(sys.modules[__name__], config, flags.FLAGS.variants, flags.FLAGS.figures)
    return
  for variant in flags.FLAGS.variants:
    run_variant(config, variant, flags.FLAGS.figures)
  if "pipeline" in flags.FLAGS.figures:
    bench_pipeline(config)


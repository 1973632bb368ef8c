#!/usr/bin/env bash
# GPU checks in as few calls as possible (device time is scarce). Stages, in the order given
# by STAGES (default: opt,cbwhile,peer):
#   opt    our benchmark, optimized variant, with a profile of each figure, decoding through
#          the Pallas kernels (model.decode_kernels=pallas, opt-in) and again through XLA's path
#          (the default), with the share of equal tokens (~5 min on an H200, most of it
#          compilation and autotuning)
#   cbwhile  decoding again (kernels and XLA's path) with the token loop captured in one
#          command buffer (XLA's --xla_gpu_enable_command_buffer with WHILE; ~1.5 min)
#   peer   the PyTorch peer, when its script is at .peer/torch_peer.py (~3 min)
#   cudnn  optimized with the vision tower's attention through cuDNN (~2.5 min)
#   base   the baseline variant (optimizations off; ~4 min)
# Each stage is its own process, so each peak memory is its own. Results: $OUT/<stage>.jsonl,
# the Perfetto traces of the optimized figures, and bench.log (stderr of everything).
set -uo pipefail
OUT=${OUT:-/tmp/sevlm_gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
log="$OUT/bench.log"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv | tee -a "$log"
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, \
'optax', optax.__version__, jax.devices())" 2>>"$log" | tee -a "$log"
args=(--config="${CONFIG:-configs/sevlm.py}" --iters="${ITERS:-20}" --warmup=3 ${EXTRA:-})
bench=(python3 -m sevlm_jax.benchmark "${args[@]}")

STAGES=${STAGES:-opt,cbwhile,peer}
for stage in ${STAGES//,/ }; do
  case "$stage" in
    opt)
      timeout 360 "${bench[@]}" --variants=optimized --steps_per_check="${STEPS_SWEEP:-0,1}" \
        --config.model.decode_kernels=pallas \
        --profile_dir=/tmp/sevlm_profile 2>>"$log" | tee "$OUT/opt.jsonl"
      for kind in train_cached train_tower decode; do
        f=$(find /tmp/sevlm_profile/$kind -name '*.trace.json.gz' 2>/dev/null | head -1)
        [ -n "$f" ] && cp "$f" "$OUT/trace_$kind.json.gz"
      done ;;
    cbwhile)
      XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,CONDITIONAL,WHILE" \
        timeout 200 "${bench[@]}" --variants=optimized --figures=decode \
        --config.model.decode_kernels=pallas 2>>"$log" \
        | sed 's/"variant": "optimized"/"variant": "optimized-cbwhile"/' | tee "$OUT/cbwhile.jsonl" ;;
    peer)
      [ -f .peer/torch_peer.py ] && timeout 240 python3 .peer/torch_peer.py 2>>"$log" \
        | tee "$OUT/peer.jsonl" ;;
    cudnn)
      timeout 200 "${bench[@]}" --variants=optimized --config.model.vision_attention=cudnn \
        --figures=train_tower,decode,memory 2>>"$log" \
        | sed 's/"variant": "optimized"/"variant": "optimized-cudnn-vision"/' \
        | tee "$OUT/cudnn.jsonl" ;;
    base)
      timeout 280 "${bench[@]}" --variants=baseline 2>>"$log" | tee "$OUT/base.jsonl" ;;
    *) echo "unknown stage $stage" >&2 ;;
  esac
done

echo "--- summary"; cat "$OUT"/*.jsonl 2>/dev/null | python3 -c "
import json, sys
for line in sys.stdin:
  try: r = json.loads(line)
  except ValueError: continue
  if r.get('what') == 'profile' and 'kernel' in r: continue
  keys = ('what', 'variant', 'of', 'steps_per_check', 'ms', 'seqs_per_s', 'images_per_s', 'GiB',
          'value', 'program_GiB', 'device_ms_per_step', 'error')
  print({k: r[k] for k in keys if k in r})
"

# The figures that decide two defaults (README, "Speed": what flips a default).
echo "--- decisions"; cat "$OUT"/opt.jsonl "$OUT"/cbwhile.jsonl 2>/dev/null | python3 -c "
import json, sys
rows = []
for line in sys.stdin:
  try: rows.append(json.loads(line))
  except ValueError: pass
dec = lambda v, k: next((r for r in rows if r.get('what') == 'decode' and r.get('variant') == v
                         and r.get('decode_kernels') == k and r.get('steps_per_check') == 0), None)
pallas, xla = dec('optimized', 'pallas'), dec('optimized', 'xla')
if pallas and xla:
  agree, speedup = xla.get('token_agreement', 0.0), xla['ms'] / pallas['ms']
  flip = agree >= 0.999 and speedup > 1.0
  print(f'decode_kernels: pallas {pallas[\"ms\"]} ms, xla {xla[\"ms\"]} ms, speed-up {speedup:.3f}, '
        f'token agreement {agree} (needs >= 0.999 and speed-up > 1) -> default '
        + ('pallas' if flip else 'stays xla'))
else:
  print('decode_kernels: no decode figures with steps_per_check=0 for both (stage opt)')
for k in ('pallas', 'xla'):
  plain, graph = dec('optimized', k), dec('optimized-cbwhile', k)
  if plain and graph:
    gain = plain['ms'] / graph['ms']
    print(f'while-loop capture ({k}): {plain[\"ms\"]} ms -> {graph[\"ms\"]} ms captured, speed-up '
          f'{gain:.3f} -> ' + ('capture by default' if gain > 1.0 else 'keep XLA default'))
"

#!/usr/bin/env bash
# All GPU checks in one call (device time is scarce): correctness of the optimized paths on
# the GPU, our benchmark (optimized, then baseline, in separate processes so that each peak
# memory is its own), and the PyTorch peer when its script is at .peer/torch_peer.py.
# Results: $OUT/*.jsonl, the Perfetto traces of the optimized step, and bench.log.
set -uo pipefail
OUT=${OUT:-/tmp/sevlm_gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
log="$OUT/bench.log"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv | tee -a "$log"
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, \
'optax', optax.__version__, jax.devices())" 2>>"$log" | tee -a "$log"
args=(--config=configs/sevlm.py --iters="${ITERS:-30}" --warmup=3)
timeout "${OPT_TIMEOUT:-260}" python3 -m sevlm_jax.benchmark "${args[@]}" --variants=optimized \
  --steps_per_check="${STEPS_SWEEP:-1,4,25}" --profile_dir=/tmp/sevlm_profile \
  2>>"$log" | tee "$OUT/optimized.jsonl"
timeout "${BASE_TIMEOUT:-150}" python3 -m sevlm_jax.benchmark "${args[@]}" --variants=baseline \
  2>>"$log" | tee "$OUT/baseline.jsonl"
for kind in train_cached train_tower decode; do
  f=$(find /tmp/sevlm_profile/$kind -name '*.trace.json.gz' 2>/dev/null | head -1)
  [ -n "$f" ] && cp "$f" "$OUT/trace_$kind.json.gz"
done
if [ -f .peer/torch_peer.py ]; then
  timeout "${PEER_TIMEOUT:-240}" python3 .peer/torch_peer.py 2>>"$log" | tee "$OUT/torch_peer.jsonl"
fi
echo "--- summary"; cat "$OUT"/*.jsonl | python3 -c "
import json, sys
for line in sys.stdin:
  try: r = json.loads(line)
  except ValueError: continue
  if r.get('what') == 'profile' and 'kernel' in r: continue
  keys = ('what', 'variant', 'of', 'steps_per_check', 'ms', 'seqs_per_s', 'images_per_s', 'GiB', 'value', 'program_GiB', 'device_ms_per_step', 'error')
  print({k: r[k] for k in keys if k in r})
"

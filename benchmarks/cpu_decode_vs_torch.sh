#!/usr/bin/env bash
# CPU decoding, sevlm_jax beside the PyTorch version of the same design, alternated in one run.
#
#   bash benchmarks/cpu_decode_vs_torch.sh PATH/TO/torch_peer.py [ROUNDS]
#
# Each round runs our decode figure (full-size model, random weights, 8 images x 25 tokens:
# the optimized variant, bf16, and the baseline, float32) and then the PyTorch peer script with
# SKIP_TRAIN=1 PAIRS=4 (its greedy_decode variants: kvcache-bf16-sdpa, kvcache-fp32-sdpa and
# the no-cache official-nocache-fp32, the slowest part of a round). Both take the median of 5
# timed decodes after 2 untimed ones. The peer script is not part of this repository: pass
# its path. Alternating keeps both sides under the same background load; `uptime` is printed
# with every round, and the end prints each variant's range of images/s over the rounds.
# PYTHON: the interpreter with jax and torch (default: python). Run from the repository root.
set -euo pipefail

peer="${1:?usage: bash benchmarks/cpu_decode_vs_torch.sh PATH/TO/torch_peer.py [ROUNDS]}"
rounds="${2:-3}"
python="${PYTHON:-python}"
if [[ ! -f "$peer" ]]; then
  echo "cpu_decode_vs_torch.sh: no file $peer: pass the path of the PyTorch peer script" >&2
  exit 2
fi
log="$(mktemp -t cpu_decode_vs_torch.XXXXXX)"
trap 'rm -f "$log"' EXIT

for round in $(seq 1 "$rounds"); do
  echo "# round $round/$rounds: $(uptime)"
  "$python" -m sevlm_jax.benchmark --config=configs/sevlm.py --figures=decode --pairs=4 \
    --variants=optimized,baseline --iters=15 --warmup=2 2>/dev/null \
    | grep --line-buffered '"what": "decode"' | tee -a "$log"
  echo "# round $round/$rounds: $(uptime)"
  SKIP_TRAIN=1 PAIRS=4 "$python" "$peer" 2>/dev/null \
    | grep --line-buffered '"greedy_decode"' | tee -a "$log"
done

"$python" - "$log" <<'EOF'
import collections, json, sys
rates = collections.defaultdict(list)
for line in open(sys.argv[1]):
  r = json.loads(line)
  name = "sevlm_jax " + r["variant"] if r["what"] == "decode" else "pytorch " + r["variant"]
  rates[name].append(float(r["images_per_s"]))
print("# images/s over the rounds (min-max, median)")
for name, v in rates.items():
  v = sorted(v)
  print(f"{name:36s} {v[0]:.2f}-{v[-1]:.2f}  median {v[len(v) // 2]:.2f}  ({len(v)} runs)")
EOF

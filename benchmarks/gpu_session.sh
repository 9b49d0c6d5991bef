#!/usr/bin/env bash
# One GPU session's measurements, in the order that answers the most if time runs out. Every part has its
# own time limit and appends JSON lines to $OUT/throughput.jsonl (and its full output to $OUT/<part>.log),
# so a part that fails or times out does not lose the others.
#
#   On the GPU machine (benchmarks/README.md):   source .gpu/prelude.sh && bash benchmarks/gpu_session.sh
#   Check it on the CPU first:   OUT=/tmp/out PYTHON=.venv/bin/python bash benchmarks/gpu_session.sh --tiny
#
# Parts: (1) every row eager, vitdense as shipped, with the peers; (2) the baseline parts put back (torchvision's
# matcher, sampler, box coder and mask pasting) for the one-by-one comparison; (3) torch_compile, each row
# followed by its torch.profiler table (in compiled.log); (4) torch_compile + recomputing the first 4 blocks
# (memory); (5) host synchronisations as PyTorch's sync debug mode counts them; (6) mask pasting on the GPU
# against torchvision's (timing and equality). Time limits add up to 560 s.
set -u
OUT=${OUT:?set OUT to a folder for the results}
mkdir -p "$OUT"
EXTRA=("$@")  # e.g. --tiny
PYTHON=${PYTHON:-python3}
part() {  # part <name> <seconds> <script> <arguments...>: JSON lines to throughput.jsonl, all output to <name>.log
  local name=$1 limit=$2 script=$3
  shift 3
  echo "# $name: python $script $*" | tee -a "$OUT/throughput.jsonl"
  timeout "$limit" "$PYTHON" "$script" "$@" > "$OUT/$name.log" 2>&1
  local status=$?
  grep '^{' "$OUT/$name.log" | tee -a "$OUT/throughput.jsonl"
  [ "$status" -eq 0 ] || echo "# $name ended with status $status (124: time limit); see $name.log" | tee -a "$OUT/throughput.jsonl"
}
run() {  # run <name> <seconds> <throughput.py arguments...>
  local name=$1 limit=$2
  shift 2
  part "$name" "$limit" benchmarks/throughput.py "$@" "${EXTRA[@]}"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" 2>&1 || true
"$PYTHON" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)' >> "$OUT/gpu.txt"
run eager 140
run baseline_parts 60 --rows mask_rcnn faster_rcnn --torchvision-parts --torchvision-paste
run compiled 220 --rows backbone mask_rcnn faster_rcnn semseg --compile --profile
run compiled_checkpointing 80 --rows mask_rcnn --compile --grad-checkpointing 4
part host_syncs 30 benchmarks/host_syncs.py --top 15
part mask_paste 30 benchmarks/mask_paste.py --device "$([ "${EXTRA[*]}" = --tiny ] && echo cpu || echo cuda)" --repeats 5 "${EXTRA[@]}"
echo "# done" | tee -a "$OUT/throughput.jsonl"

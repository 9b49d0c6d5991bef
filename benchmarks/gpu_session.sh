#!/usr/bin/env bash
# One GPU session's measurements, in the order that answers the most if time runs out. Every part has its
# own time limit and appends JSON lines to $OUT/throughput.jsonl (and its full output to $OUT/<part>.log),
# so a part that fails or times out does not lose the others.
#
#   On the GPU machine (benchmarks/README.md):   source .gpu/prelude.sh && bash benchmarks/gpu_session.sh
#   Check it on the CPU first:   OUT=/tmp/out PYTHON=.venv/bin/python bash benchmarks/gpu_session.sh --tiny
#
# Parts: (1) every row eager, vitdense as shipped, with the peers; (2) the baseline parts put back (torchvision's
# matcher, sampler, box coder and mask pasting) for the one-by-one comparison; (3) torch_compile; (4)
# torch_compile + gradient checkpointing (memory); (5, 6) profiles of the compiled Mask R-CNN and segmentation
# steps.
set -u
OUT=${OUT:?set OUT to a folder for the results}
mkdir -p "$OUT"
EXTRA=("$@")  # e.g. --tiny
PYTHON=${PYTHON:-python3}
run() {  # run <name> <seconds> <throughput.py arguments...>
  local name=$1 limit=$2
  shift 2
  echo "# $name: python benchmarks/throughput.py $* ${EXTRA[*]}" | tee -a "$OUT/throughput.jsonl"
  timeout "$limit" "$PYTHON" benchmarks/throughput.py "$@" "${EXTRA[@]}" > "$OUT/$name.log" 2>&1
  local status=$?
  grep '^{' "$OUT/$name.log" | tee -a "$OUT/throughput.jsonl"
  [ "$status" -eq 0 ] || echo "# $name ended with status $status (124: time limit); see $name.log" | tee -a "$OUT/throughput.jsonl"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" 2>&1 || true
"$PYTHON" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)' >> "$OUT/gpu.txt"
run eager 140
run baseline_parts 60 --rows mask_rcnn faster_rcnn --torchvision-parts --torchvision-paste
run compiled 190 --rows backbone mask_rcnn faster_rcnn semseg --compile
run compiled_checkpointing 90 --rows mask_rcnn --compile --grad-checkpointing 4
run profile_mask_rcnn 50 --rows mask_rcnn --compile --profile --steps 3 --warmup 2
run profile_semseg 50 --rows semseg --compile --profile --steps 3 --warmup 2
echo "# done" | tee -a "$OUT/throughput.jsonl"

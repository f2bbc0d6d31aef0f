#!/usr/bin/env bash
# The GPU check of bench/gpu_guard.py as one prepared command for a lent GPU machine that has no network.
#
#   bench/gpu_guard_device.sh prepare   here, with network: the wheels the machine lacks into .whl/ (git-ignored
#                                       through .git/info/exclude): pydantic (aegis_online's schemas) and Ray Serve
#                                       with what it imports. Ray's wheel (79 MB) is repacked without the parts
#                                       Serve never imports (Java jars, the dashboard's web client, RLlib, Data,
#                                       Train, Tune, LLM): about 40 MB, so everything fits a 64 MiB carry.
#   bench/gpu_guard_device.sh run       there: installs .whl/*.whl into /tmp/site if present, then runs the
#                                       benchmark under a time budget; JSON, log and nvidia-smi under $OUT.
#
# Environment of `run`: BUDGET_S (default 320: the benchmark's own budget; the hard timeout is 45 s more),
# EXPERTS (default 4: the sharing check with 2, then all), GPU_GUARD_ARGS (default: loads 4, 16 and 64 in flight,
# windows of 6 s). With the wheels' install and the machine's start it fits a 420 s call.
set -u
cd "$(dirname "$0")/.."

PY_TAG=312
RAY_DROP='ray/jars/ ray/dashboard/client/build/ ray/rllib/ ray/data/ ray/train/ ray/tune/ ray/llm/ ray/air/examples/'
# Versions the repo's own virtualenv runs; grpcio and protobuf travel with grpcio-reflection so the three match.
WHEELS="ray==2.60.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
typing-extensions==4.16.0 fastapi==0.165.0 starlette==1.10.0 uvicorn==0.55.0 anyio==4.16.0 annotated-doc==0.0.7
jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
grpcio==1.85.3 grpcio-reflection==1.85.1 protobuf==7.36.2
opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-proto==1.45.2
opentelemetry-semantic-conventions==0.66b2 opentelemetry-exporter-prometheus==0.66b2 mmh3==5.3.1 aiohttp-cors==0.8.1"

prepare() {
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
    mkdir -p .whl
    local pip="${PIP:-.venv/bin/python -m pip}"
    # shellcheck disable=SC2086
    $pip download --no-deps --only-binary=:all: --python-version "$PY_TAG" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $WHEELS || return 1
    local ray_whl
    ray_whl=$(ls .whl/ray-*.whl) || return 1
    RAY_WHL="$ray_whl" RAY_DROP="$RAY_DROP" .venv/bin/python - <<'EOF' || return 1
import os, zipfile
path, drop = os.environ["RAY_WHL"], tuple(os.environ["RAY_DROP"].split())
with zipfile.ZipFile(path) as src:
    if not any(i.filename.startswith(drop) for i in src.infolist()):
        raise SystemExit(0)  # already repacked
    tmp = path + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as out:
        for info in src.infolist():
            if not info.filename.startswith(drop):
                out.writestr(info, src.read(info.filename), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
os.replace(tmp, path)
EOF
    du -sh .whl
}

run() {
    OUT="${OUT:-/tmp/gpu-guard-out}"
    mkdir -p "$OUT"
    export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1
    export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
    local started=$SECONDS
    if ls .whl/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl 2>&1 | tail -3
        export PYTHONPATH="/tmp/site:$PWD"
        echo "wheels installed in $((SECONDS - started)) s"
    else
        export PYTHONPATH="$PWD"
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.limit \
        --format=csv >"$OUT/nvidia-smi.csv" 2>&1
    cat "$OUT/nvidia-smi.csv"
    local budget="${BUDGET_S:-320}"
    set -o pipefail
    # shellcheck disable=SC2086
    timeout -k 10 $((budget + 45)) python3 bench/gpu_guard.py --device cuda --experts "${EXPERTS:-4}" \
        --budget-s "$budget" --json "$OUT/gpu_guard.json" ${GPU_GUARD_ARGS:---loads 4,16,64 --window-s 6} 2>&1 | tee "$OUT/gpu_guard.log"
    local rc=$?
    nvidia-smi >"$OUT/nvidia-smi-after.txt" 2>&1
    echo "gpu_guard_device: rc=$rc, $((SECONDS - started)) s in all"
    return $rc
}

case "${1:-run}" in
prepare) prepare ;;
run) run ;;
*)
    echo "usage: $0 [prepare|run]" >&2
    exit 2
    ;;
esac

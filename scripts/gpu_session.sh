#!/usr/bin/env bash
# One call prepares a bare GPU machine without network access and runs the
# GPU checks there. Three verbs:
#
#   scripts/gpu_session.sh prepare   # here, with network: fills .gpu_carry/, then check
#   scripts/gpu_session.sh check     # here, the dry run: every wheel the run installs is
#                                    # a CPython 3.12 manylinux x86_64 build, the carry
#                                    # is under 60 MiB (prints its size; fails over)
#   scripts/gpu_session.sh run       # there: installs .gpu_carry/, checks NVDEC, runs
#                                    # the gpu tests and the selection and NVDEC
#                                    # benchmarks; 7 result files in $OUT
#
# With this workplace's device tool:
#   run(command="bash scripts/gpu_session.sh run", carry=[".gpu_carry"], timeout_s=540)
# `run` keeps to GPU_SESSION_SECONDS (450 s) in all: each step has its own
# limit, and a step that would pass the budget is cut short (its log says so).
#
# The GPU machine (see the device tool's notes) has Python 3.12, torch
# 2.11.0+cu130, numba, numba-cuda, numpy, pyarrow and pytest; it lacks
# torchcodec, FFmpeg's libraries and the ffmpeg CLI. `prepare` carries:
#   .gpu_carry/whl/                 torchcodec (a CUDA 13 build, constraints-gpu.txt)
#                                   and PyAV, whose wheel bundles FFmpeg 8's libraries
#   .gpu_carry/testmedia/gpu_media/ the gpu tests' videos (tests/media.py GPU_MEDIA)
#   .gpu_carry/corpus/              one H.264 clip each at 360p, 720p, 1080p, 2160p
# Ray is not carried: its wheel alone (79 MB for 2.60.0) is over the carry
# limit, and neither the gpu tests nor these benchmarks use it.
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=.gpu_carry
LIMIT_MIB=60
PY_VERSION=3.12
TORCHCODEC_VERSION=${TORCHCODEC_VERSION:-$(sed -n 's/^torchcodec==//p' constraints-gpu.txt)}
PYAV_VERSION=${PYAV_VERSION:-$(sed -n 's/^av==//p' constraints-gpu.txt)}
# Everything `run` installs; the rest of what it imports is in the GPU image.
CARRIED=("torchcodec==$TORCHCODEC_VERSION" "av==$PYAV_VERSION")
FROM_IMAGE=(torch numba numba.cuda numpy pyarrow pytest)

prepare() {
    local py=${PYTHON:-.venv/bin/python}
    rm -rf "$CARRY" && mkdir -p "$CARRY/whl" "$CARRY/testmedia" "$CARRY/corpus"
    # Ignored by git (it travels only as a carried path), in a worktree too.
    local exclude
    exclude=$(git rev-parse --git-path info/exclude)
    mkdir -p "$(dirname "$exclude")"
    grep -qx '/.gpu_carry/' "$exclude" 2>/dev/null || echo '/.gpu_carry/' >> "$exclude"
    local spec
    for spec in "${CARRIED[@]}"; do
        "$py" -m pip download -q --only-binary=:all: --no-deps --python-version "$PY_VERSION" \
            --implementation cp --platform manylinux_2_28_x86_64 \
            --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 -d "$CARRY/whl" "$spec"
    done
    "$py" - <<'PY'
import sys
from pathlib import Path

sys.path.insert(0, "tests")
from media import make_gpu_media

make_gpu_media(Path(".gpu_carry/testmedia/gpu_media"))
PY
    local spec_res res seconds label
    for spec_res in 640x360:2:360p 1280x720:2:720p 1920x1080:2:1080p 3840x2160:1:2160p; do
        IFS=: read -r res seconds label <<< "$spec_res"
        ffmpeg -nostdin -v error -y -f lavfi -i "testsrc2=size=$res:rate=30:duration=$seconds" \
            -c:v libx264 -preset ultrafast -crf 30 -g 30 -pix_fmt yuv420p \
            "$CARRY/corpus/h264_$label.mp4"
    done
    check
}

check() {
    local failed=0 spec name count wheel
    [ -d "$CARRY/whl" ] || { echo "error: no $CARRY/whl: run '$0 prepare' first" >&2; exit 1; }
    for spec in "${CARRIED[@]}"; do
        name=${spec%%==*}
        count=$(find "$CARRY/whl" -name "${name}-${spec#*==}-*.whl" | wc -l)
        if [ "$count" -ne 1 ]; then
            echo "error: $CARRY/whl has $count wheels of $spec (one needed)" >&2
            failed=1
        fi
    done
    for wheel in "$CARRY"/whl/*.whl; do
        # name-version-pythontag-abitag-platform.whl
        case "$(basename "$wheel")" in
            *-cp312-cp312-*manylinux*x86_64*.whl | *-cp312-abi3-*manylinux*x86_64*.whl \
                | *-py3-none-any.whl) echo "ok    $(basename "$wheel")" ;;
            *) echo "error: $(basename "$wheel") is no CPython 3.12 manylinux x86_64 wheel" >&2
               failed=1 ;;
        esac
    done
    echo "from the GPU image: ${FROM_IMAGE[*]}"
    local bytes
    bytes=$(du -sb "$CARRY" | cut -f1)
    echo "carry: $CARRY is $bytes bytes ($((bytes / 1048576)) MiB; limit ${LIMIT_MIB} MiB)"
    if [ "$bytes" -gt $((LIMIT_MIB * 1048576)) ]; then
        echo "error: $CARRY is over ${LIMIT_MIB} MiB" >&2
        failed=1
    fi
    return "$failed"
}

run() {
    local out=${OUT:-gpu_out}
    mkdir -p "$out"
    local budget=${GPU_SESSION_SECONDS:-450}
    local machine=$out/machine.txt
    # step LIMIT LOG COMMAND...: at most LIMIT seconds, and never past the budget.
    step() {
        local limit=$1 log=$2 left rc
        shift 2
        left=$((budget - SECONDS))
        [ "$limit" -gt "$left" ] && limit=$left
        if [ "$limit" -lt 10 ]; then
            echo "== skipped, the session's ${budget}s are spent: $*" | tee -a "$log"
            return 0
        fi
        echo "== $* (at most ${limit}s, at ${SECONDS}s)" >> "$log"
        set +e
        timeout -k 5 "$limit" "$@" >> "$log" 2>&1
        rc=$?
        set -e
        echo "== exit $rc$([ "$rc" -eq 124 ] && echo ' (timed out)') after ${SECONDS}s" >> "$log"
    }
    {
        echo "== machine"
        nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || true
        echo "== NVDEC library (libnvcuvid)"
        ldconfig -p | grep libnvcuvid || ls /usr/local/nvidia/lib64/libnvcuvid.so* 2>/dev/null \
            || echo "libnvcuvid NOT found: NVDEC cannot run on this machine"
    } > "$machine" 2>&1
    step 90 "$machine" python3 -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target /tmp/site "$CARRY"/whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
    # torchcodec links FFmpeg by soname; PyAV ships the libraries under hashed
    # names, so give them their sonames in a folder on the library path.
    mkdir -p /tmp/fflibs
    local lib base major
    for lib in /tmp/site/av.libs/*.so*; do
        base=$(basename "$lib")                             # libavcodec-e57b519c.so.62.11.100
        major=$(echo "$base" | sed -E 's/.*\.so\.([0-9]+).*/\1/')
        ln -sf "$lib" "/tmp/fflibs/${base%%-*}.so.$major"  # libavcodec.so.62
    done
    export LD_LIBRARY_PATH=/tmp/fflibs:/tmp/site/av.libs:${LD_LIBRARY_PATH:-}
    # Versions, CUDA, and whether torchcodec decodes on the GPU (the probe).
    step 60 "$machine" python3 -m cps_ray._cli info
    export CPS_RAY_REQUIRE_GPU=1 CPS_RAY_TEST_MEDIA=$PWD/$CARRY/testmedia
    step 180 "$out/gpu_tests.txt" python3 -m pytest -q -p no:cacheprovider \
        --junitxml "$out/gpu_tests.xml" tests/test_gpu.py tests/test_gpu_kernel.py
    step 45 "$out/select.txt" python3 benchmark/benchmark_select.py --json "$out/select.json"
    step 120 "$out/nvdec.txt" python3 benchmark/benchmark_nvdec.py "$CARRY/corpus" \
        --json "$out/nvdec.json"
    echo "done in ${SECONDS}s; results: $(ls "$out" | tr '\n' ' ')"
}

case "${1:-}" in
    prepare) prepare ;;
    check) check ;;
    run) run ;;
    *) echo "usage: $0 prepare|check|run" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# One call prepares a bare GPU machine without network access and runs the
# GPU checks there. Two steps:
#
#   scripts/gpu_session.sh prepare   # here, with network: fills .gpu_carry/
#   scripts/gpu_session.sh run       # there: installs what .gpu_carry/ holds,
#                                    # checks NVDEC, runs the gpu tests and the
#                                    # GPU benchmarks, writes logs to $OUT
#
# With this workplace's device tool: run(command="bash scripts/gpu_session.sh run",
# carry=[".gpu_carry"]). The GPU image has torch (CUDA), numba, numba-cuda,
# pytest and pyarrow; it lacks torchcodec, FFmpeg's libraries and the ffmpeg
# CLI. `prepare` carries:
#   .gpu_carry/whl/    torchcodec (a CUDA build matching the device's torch:
#                      TORCHCODEC_WHEEL=path or TORCHCODEC_VERSION=x.y) and
#                      PyAV, whose wheel bundles FFmpeg's shared libraries
#   .gpu_carry/media/  the test videos (tests/media.py), made here
#   .gpu_carry/corpus/ short 360p/720p/1080p clips for benchmark_nvdec.py
# Ray is not carried (its wheel alone is over the 64 MiB carry limit): the
# gpu tests and GPU benchmarks do not need it.
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=.gpu_carry
PY_TAG=${GPU_PYTHON_VERSION:-3.12}

prepare() {
    local py=${PYTHON:-.venv/bin/python}
    rm -rf "$CARRY" && mkdir -p "$CARRY/whl" "$CARRY/media" "$CARRY/corpus"
    grep -qx '/.gpu_carry/' .git/info/exclude 2>/dev/null || echo '/.gpu_carry/' >> .git/info/exclude
    local plat=(--only-binary=:all: --no-deps --python-version "$PY_TAG" --implementation cp
                --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
                --platform manylinux2014_x86_64)
    "$py" -m pip download -q "${plat[@]}" -d "$CARRY/whl" "av==${PYAV_VERSION:-15.1.0}"
    if [ -n "${TORCHCODEC_WHEEL:-}" ]; then
        cp "$TORCHCODEC_WHEEL" "$CARRY/whl/"
    else
        "$py" -m pip download -q "${plat[@]}" -d "$CARRY/whl" \
            "torchcodec==${TORCHCODEC_VERSION:-0.14.0}" || \
            echo "warning: no torchcodec wheel carried; GPU decode tests will fail" >&2
    fi
    "$py" - <<'PY'
import sys
sys.path.insert(0, "tests")
from pathlib import Path
from media import make_media
make_media(Path(".gpu_carry/media"))
PY
    for res in 640x360 1280x720 1920x1080; do
        ffmpeg -nostdin -v error -y -f lavfi -i "testsrc2=size=$res:rate=30:duration=2" \
            -c:v libx264 -preset ultrafast -pix_fmt yuv420p \
            "$CARRY/corpus/h264_${res##*x}p.mp4"
    done
    du -sh "$CARRY"
    local bytes
    bytes=$(du -sb "$CARRY" | cut -f1)
    if [ "$bytes" -gt $((60 * 1024 * 1024)) ]; then
        echo "error: $CARRY is $bytes bytes, over the 64 MiB carry limit" >&2
        exit 1
    fi
}

run() {
    local out=${OUT:-gpu_out}
    mkdir -p "$out"
    {
        echo "== machine"; nvidia-smi || true
        echo "== NVDEC (libnvcuvid)"
        if ldconfig -p | grep -q libnvcuvid || ls /usr/local/nvidia/lib64/libnvcuvid.so* 2>/dev/null; then
            echo "libnvcuvid found"
        else
            echo "libnvcuvid NOT found: NVDEC decode cannot run on this machine"
        fi
    } 2>&1 | tee "$out/machine.txt"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$CARRY"/whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
    # torchcodec links FFmpeg by soname; PyAV ships the libraries under hashed
    # names, so give them their sonames in a folder on the library path.
    mkdir -p /tmp/fflibs
    for lib in /tmp/site/av.libs/*.so*; do
        base=$(basename "$lib")                       # libavcodec-7ee0753d.so.61.19.101
        major=$(echo "$base" | sed -E 's/.*\.so\.([0-9]+).*/\1/')
        ln -sf "$lib" "/tmp/fflibs/${base%%-*}.so.$major"  # libavcodec.so.61
    done
    export LD_LIBRARY_PATH=/tmp/fflibs:/tmp/site/av.libs:${LD_LIBRARY_PATH:-}
    python3 -c "import torchcodec, torch; print('torchcodec', torchcodec.__version__, 'torch', torch.__version__)" \
        2>&1 | tee -a "$out/machine.txt" || true
    export CPS_RAY_REQUIRE_GPU=1 CPS_RAY_TEST_MEDIA=$PWD/$CARRY/media PYTHONUNBUFFERED=1
    set +e
    python3 -m pytest -q -p no:cacheprovider tests/test_gpu_kernel.py tests/test_gpu.py \
        2>&1 | tee "$out/gpu_tests.txt"
    python3 benchmark/benchmark_select.py --json "$out/select.json" 2>&1 | tee "$out/select.txt"
    python3 benchmark/benchmark_nvdec.py "$CARRY/corpus" --json "$out/nvdec.json" \
        2>&1 | tee "$out/nvdec.txt"
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: $0 prepare|run" >&2; exit 2 ;;
esac

# Two commands set everything up on a fresh machine and run:
#   make demo    sample videos -> patch tokens -> pictures in demo_out/
#   make test    the whole test suite (CPU; CUDA kernels in Numba's simulator)
PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints-cpu.txt
EXTRAS ?= test,demo
VIDEOS ?=
OUT ?= demo_out

BIN := $(VENV)/bin
STAMP := $(VENV)/.cps_ray-installed

.PHONY: setup ffmpeg demo test test-cpu test-cudasim bench lint clean

setup: ffmpeg $(STAMP)

# FFmpeg's shared libraries (torchcodec loads them) and the ffmpeg CLI (tests
# and the demo make their media with it) come from the system's packages.
ffmpeg:
	@if command -v ffmpeg >/dev/null 2>&1 && ldconfig -p 2>/dev/null | grep -q 'libavcodec\.so\.'; then \
		exit 0; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing FFmpeg from the system's packages (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null; \
	else \
		echo "FFmpeg is missing: install the ffmpeg CLI and its shared libraries" \
		     "(Debian/Ubuntu: sudo apt-get install ffmpeg; macOS: brew install ffmpeg), then rerun make." >&2; \
		exit 1; \
	fi

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	@touch $@

demo: setup
	$(BIN)/cps-ray demo --job --out $(OUT) $(if $(VIDEOS),--videos $(VIDEOS),)

# Two lanes at once, each printed whole when it ends: the CPU suite on
# TEST_WORKERS pytest-xdist workers (slow tests first; they wait on Ray's
# processes, and the other worker fills the gaps), and the CUDA kernels in
# Numba's simulator, which must be switched on before numba is imported: a
# pytest process of its own.
TEST_WORKERS ?= 2
test: setup
	@# Numba's disk cache first: in a fresh clone every worker, actor and child
	@# would otherwise compile the CPU kernels side by side (7 CPU-s each).
	@$(BIN)/python -c "from cps_ray._kernels import cpu; cpu.warmup()"
	@# Our modules' bytecode too (pip compiles only what it installs): where
	@# PYTHONDONTWRITEBYTECODE is set, each actor, task worker and driver
	@# would compile cps_ray from source again.
	@$(BIN)/python -m compileall -q cps_ray
	@echo "make test: the CPU tests ($(TEST_WORKERS) workers) and the CUDA-simulator tests run at once; each prints when it ends"
	@$(MAKE) --no-print-directory -j2 --output-sync=target test-cpu test-cudasim

test-cpu:
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --maxschedchunk 1 tests --ignore=tests/cudasim

test-cudasim:
	NUMBA_ENABLE_CUDASIM=1 $(BIN)/python -m pytest -q tests/cudasim

bench: setup
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) -e ".[$(EXTRAS),bench]"
	$(BIN)/python benchmark/make_corpus.py .cache/bench_corpus --small
	$(BIN)/python benchmark/benchmark_codec_apis.py .cache/bench_corpus \
		--apis decode_only patch_stream decord torchcodec --decode-backends cpu gpu \
		--process-backends cpu gpu --limit 10 \
		--json benchmark/out/codec_apis.json --png benchmark/out/codec_apis.png
	$(BIN)/python benchmark/make_photo_clips.py .cache/photo_clips
	$(BIN)/python benchmark/selection_quality.py .cache/photo_clips --limit 40 \
		--json benchmark/out/selection_quality_photos.json --png benchmark/out/selection_quality_photos.png
	$(BIN)/python benchmark/selection_quality.py .cache/bench_corpus \
		--json benchmark/out/selection_quality.json --png benchmark/out/selection_quality.png
	$(BIN)/python benchmark/benchmark_local.py --json benchmark/out/local.json
	$(BIN)/python benchmark/benchmark_select.py --corpus .cache/bench_corpus --json benchmark/out/select.json
	$(BIN)/python benchmark/benchmark_train.py .cache/photo_clips --json benchmark/out/train.json
	$(BIN)/python benchmark/benchmark_pipeline.py --videos 360 --json benchmark/out/pipeline.json
	$(BIN)/python benchmark/benchmark_memory.py --json benchmark/out/memory.json

lint: setup
	$(BIN)/python -m pip install -q ruff
	$(BIN)/ruff check cps_ray tests benchmark jobs
	$(BIN)/ruff format --check cps_ray tests benchmark jobs

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache

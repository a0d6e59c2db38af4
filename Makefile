# One-command set-up: `make demo` or `make test` on a fresh machine creates ./.venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: demo demo-det jemalloc test test-fast bench bench-compile bench-e2e bench-restarts \
	bench-det-train clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# MindSpore's graph compiler spends about a third of its time in glibc's malloc here: with
# jemalloc preloaded the detector's training step compiles in 13-14 s instead of 18-20 and the
# demo's in 5 s instead of 6-7, to the same losses (README: Faster compiles on CPU). Preloaded
# when found; `JEMALLOC=` turns it off. `make jemalloc` installs Debian's (as root; CI does).
JEMALLOC ?= $(firstword $(wildcard /usr/lib/*-linux-gnu/libjemalloc.so.2 \
	/usr/lib64/libjemalloc.so.2 /usr/local/lib/libjemalloc.so.2))
PRELOAD := $(if $(JEMALLOC),LD_PRELOAD="$(strip $(JEMALLOC) $(LD_PRELOAD))")

jemalloc:
	@test -n "$(JEMALLOC)" || apt-get install -y -q libjemalloc2 >/dev/null || \
		(apt-get update -q >/dev/null && apt-get install -y -q libjemalloc2 >/dev/null) || \
		echo "note: libjemalloc2 not installed (apt-get failed): glibc's malloc, slower compiles"

# The demo needs no PyTorch: it installs the package with its demo extra only.
$(VENV)/.demo: pyproject.toml | $(PY)
	$(PIP) -e ".[demo]"
	touch $@

$(VENV)/.test: pyproject.toml tests/requirements-mmdet.txt | $(PY)
	$(PIP) -e ".[test]"
	$(PIP) --no-deps -r tests/requirements-mmdet.txt
	touch $(VENV)/.demo $(VENV)/.demo-det $@

demo: $(VENV)/.demo
	$(PRELOAD) $(PY) -m res2net_ms.demo

# A detector trained here (COCO evaluation needs pycocotools: the det extra).
$(VENV)/.demo-det: pyproject.toml | $(PY)
	$(PIP) -e ".[demo,det]"
	touch $@

demo-det: $(VENV)/.demo-det
	$(PRELOAD) $(PY) -m res2net_ms.det.demo

# Two pytest workers, whole files each (module fixtures compile once): graph compiling takes
# one core, so two workers on two cores take about two thirds of the time of one. Files start
# in conftest's order (the longest first), not xdist's (by test count).
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadfile \
	--no-loadscope-reorder

test: $(VENV)/.test
	$(PRELOAD) $(PYTEST) tests

# What you run while you work: everything but the slow tests (training runs, full-zoo
# sweeps, fuzzing), the msrun jobs and the runs of mmdetection itself.
test-fast: $(VENV)/.test
	$(PRELOAD) $(PYTEST) -m "not slow and not distributed and not mmdet" tests

# Ours against mindcv and PyTorch (timm) on this machine: table in the terminal, benchmarks/bench.json.
bench: $(VENV)/.test
	$(PY) benchmarks/bench.py

# Where the first step's compile time goes, ours and mindcv side by side: benchmarks/compile_profile.json.
bench-compile: $(VENV)/.test
	$(PY) benchmarks/bench.py --compile-profile

# Whole runs over a folder of photos, ours against mindcv and timm: benchmarks/end_to_end.json.
bench-e2e: $(VENV)/.test
	$(PY) benchmarks/bench.py --end-to-end

# A resume after a kill and a second validate.py, with and without the compile cache.
bench-restarts: $(VENV)/.test
	$(PY) benchmarks/restarts.py

# Seconds per training iteration of Faster and Mask R-CNN (batch 2 at 800x1333), ours against
# mmdetection: benchmarks/det_train_bench.json.
bench-det-train: $(VENV)/.test
	$(PY) benchmarks/det_train_bench.py

clean:
	rm -rf $(VENV) data/digits ckpt/demo_digits data/digits_det ckpt/demo_det

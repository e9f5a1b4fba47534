# The two commands of the README: `make run` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.install-stamp
HOST   ?= 127.0.0.1
PORT   ?= 7860
CHECKPOINTS ?= checkpoints
PYTEST_ARGS ?=

.PHONY: install run test test-fast bench checkpoints report screenshots clean

install: $(STAMP)

# Re-installs only when the requirement files or the package metadata change.
$(STAMP): requirements.txt requirements-test.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-test.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

run: install
	GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 $(PY) app.py --host $(HOST) --port $(PORT) --checkpoints $(CHECKPOINTS)

test: install
	GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow and not browser" $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/phantom.py
	$(PY) benchmarks/render.py
	$(PY) benchmarks/acgan.py
	$(PY) benchmarks/sample.py
	$(PY) benchmarks/app_latency.py

# Retrain every shipped demo checkpoint from procedural phantoms (about 90 minutes on 2 CPU cores).
checkpoints: install
	PY=$(PY) scripts/make_checkpoints.sh

# The quality report of the checkpoints on 500 held-out phantoms (about 35 minutes on 2 CPU cores);
# re-running resumes it. REPORT_DIR must not hold a report of other checkpoints or settings.
REPORT_DIR ?= reports/phantoms
report: install
	$(PY) -m fundus_studio phantom --out data/phantoms-test --count 500 --size 512 --seed 2
	OMP_WAIT_POLICY=PASSIVE $(PY) -m fundus_studio evaluate --checkpoints $(CHECKPOINTS) --data data/phantoms-test \
		--out $(REPORT_DIR) --threads 2

# Re-take the README's screenshots (needs Debian's chromium).
screenshots: install
	$(PY) scripts/screenshots.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

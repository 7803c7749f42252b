# Larry: `make demo` runs the main job on embedded defaults; `make test` runs the tests.
# Both create the virtualenv in .venv/ (shared with the benchmarks) on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
# The real HaluEval file when ../shared is there, else our own small example.
DATA ?= $(firstword $(wildcard ../shared/data/halueval_general.jsonl) examples/support_copilot.jsonl)
OUT ?= out
SERVE ?= 1
PORT ?= 8000
FRACTION ?= 0.2
SEED ?= 0
TARGET ?= 0.9
DELTA ?= 0.05
PYTEST_ARGS ?=
# VLLM=0 leaves the vLLM server out of `make test` (its tests skip, each saying why): a quicker run.
VLLM ?= 1

.PHONY: demo test lint serve clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Larry needs Python 3.11, this is {sys.version.split()[0]}"'
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -U pip
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	touch $@

demo: $(VENV)/.installed
	$(PY) manage.py migrate --noinput -v0
	$(PY) manage.py demo --data "$(DATA)" --out "$(OUT)" --fraction $(FRACTION) --seed $(SEED) --target $(TARGET) --delta $(DELTA) --port $(PORT)
	@if [ "$(SERVE)" = "1" ]; then $(MAKE) --no-print-directory serve; fi

serve: $(VENV)/.installed
	$(PY) manage.py migrate --noinput -v0
	@echo "Serving on http://127.0.0.1:$(PORT)/ (Ctrl-C to stop)"
	$(VENV)/bin/gunicorn larry_web.wsgi --bind 127.0.0.1:$(PORT) --workers 2 --timeout 120 --access-logfile -

# The services the tests need are started (or installed) first, and the vLLM server is stopped after:
# scripts/test_services.sh says what it does.
test: $(VENV)/.installed
	$(PY) manage.py makemigrations --check --dry-run -v0
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	LARRY_TEST_VLLM=$(VLLM) scripts/test_services.sh $(PY) -m pytest -n 2 $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) out larry.sqlite3 staticfiles

# Two commands on a fresh clone: `make run` (the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
LADDER := $(VENV)/bin/ladder

.PHONY: run test lint bench report

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

run: $(VENV)/.installed  ## fetch MNIST, then train the final step for its 15 epochs
	$(LADDER) data
	$(LADDER) run step6

test: $(VENV)/.installed
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

bench: $(VENV)/.installed
	$(PY) benchmarks/speed.py

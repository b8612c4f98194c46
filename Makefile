VENV ?= .venv
PY := $(VENV)/bin/python
# Stage commands run whatever `python` comes first on PATH: make it the project's venv.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: install repro test sweep bench clean-venv

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

repro: install
	dvc repro

test: install
	pytest -q

sweep: install
	python bench/sweep.py

bench: install
	python bench/bench.py

clean-venv:
	rm -rf $(VENV)

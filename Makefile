# The two commands of README.md. Both create the virtual environment they need.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lymphnode-mtl demo --out demo-output --overwrite  # the demo owns this folder

test: $(STAMP)
	$(PY) -m pytest -q

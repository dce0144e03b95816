# The two promises of the README: `make demo` and `make test`, each on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# pip on this kind of machine takes torch and torchvision from its local wheel folder; the
# constraints file pins the versions the tests passed with (Ray exactly, in pyproject.toml).
STAMP := $(VENV)/.tipslab-installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/tipslab demo

test: $(STAMP)
	$(BIN)/python -m pytest tests

clean:
	rm -rf tipslab-runs .pytest_cache

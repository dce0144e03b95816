# The two promises of the README: `make demo` and `make test`, each on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# pip on this kind of machine takes torch and torchvision from its local wheel folder; the
# constraints file pins the versions the tests passed with (Ray exactly, in pyproject.toml).
STAMP := $(VENV)/.tipslab-installed

.PHONY: demo test soak install clean chromium lint

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[ui,test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/tipslab demo

# The report test opens the HTML report in headless Chromium (Debian's package).
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  (command -v apt-get >/dev/null 2>&1 && (SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	   $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null)) || \
	  echo "make: chromium could not be installed; the report's browser test will be skipped"

# The formatter and linter first (seconds), then the suite; pytest prints the ten slowest tests.
test: $(STAMP) chromium lint
	$(BIN)/python -m pytest tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Long runs outside `make test` (about 9 minutes of pytest on 2 cores): does a 200-step smoke trial learn,
# the cluster guide and a Ray Job end to end, FSDP through Ray Train, the trial benchmarks, nodes and drivers killed.
soak: $(STAMP)
	$(BIN)/python -m pytest -m soak tests

clean:
	rm -rf tipslab-runs .pytest_cache

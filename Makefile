# The two commands a new user types: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test demo bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Both apps in the foreground on the embedded SQLite default; Ctrl-C stops both.
run: $(STAMP)
	$(BIN)/customer-service migrate
	@trap 'kill 0' INT TERM; \
	$(BIN)/crm-mock serve & \
	$(BIN)/customer-service serve & \
	wait

test: $(STAMP)
	$(BIN)/pytest

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

bench: $(STAMP)
	$(BIN)/python bench/run.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) *.egg-info customer_service.db* crm_mock.db*

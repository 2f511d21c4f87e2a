# Two commands on a fresh machine:  `make run`  (the whole pipeline)  and  `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
LOCK   := requirements.lock
# Every install takes its versions, transitive ones included, from the lock.
INSTALL := $(PY) -m pip install --quiet --constraint $(LOCK)
# `make run` needs the package (editable: code changes need no reinstall) with the dashboard and
# Avro (fastavro: `make run AVRO=1`);
# `make test` adds the development tools. Each set has its stamp, so `make test` after `make run`
# installs only what is missing.
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
# `make lock` re-resolves the lock for every platform and Python >= 3.11 from the requirements
# files (the exact command is also at the top of the lock). It keeps the pins it can; to move
# every transitive pin to its latest version: make lock LOCK_FLAGS=--upgrade
LOCK_FLAGS ?=
LOCK_INPUTS := requirements.txt requirements-dashboard.txt requirements-dev.txt requirements-avro.txt requirements-confluent.txt

.PHONY: run test test-registry soak bench bench-peers bench-avro image lint lock dashboard chromium kafka-fetch kafka-start kafka-start-secure kafka-stop kafka-status kafka-logs registry-fetch registry-start registry-stop registry-reset topics generate clean

run: $(RUN_STAMP) kafka-fetch      ## broker + topics + generator + consumer (AVRO=1: Avro with the registry); Ctrl+C stops it
	$(VENV)/bin/loginpipe run $(if $(AVRO),--avro)

test: $(DEV_STAMP) kafka-fetch chromium  ## unit + integration tests against a real local broker
	$(PY) -m pytest --durations=15

test-registry: $(DEV_STAMP) kafka-fetch registry-fetch  ## Avro and the real schema registry (built first: about 2 minutes cold)
	$(PY) -m pytest -m registry

soak: $(DEV_STAMP) kafka-fetch     ## five 60 s broker kills during a 200k-event drain (about 10 minutes)
	$(PY) -m pytest -m soak -s

dashboard: $(RUN_STAMP)            ## the live dashboard on http://localhost:8501 (reads the local broker)
	$(VENV)/bin/loginpipe dashboard

chromium:                          ## Debian's chromium, for the dashboard's browser test
	@scripts/ensure_chromium.sh

bench: $(DEV_STAMP) kafka-fetch    ## throughput, peers, latency, guarantees and memory benchmark; results in bench-results/
	$(PY) -m loginpipe.benchmark

bench-peers: $(DEV_STAMP) kafka-fetch  ## only the peers (confluent-kafka, Quix Streams) and the runs they are compared with
	$(PY) -m loginpipe.benchmark --only peers

bench-avro: $(DEV_STAMP) kafka-fetch registry-fetch  ## only Avro output against JSON output, and the encoders
	$(PY) -m loginpipe.benchmark --only avro

image: $(DEV_STAMP) kafka-fetch    ## remakes image.png from a real run of the consumer in tmux
	$(PY) scripts/capture_terminal.py

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .

lock: | $(PY)                      ## re-resolves requirements.lock after a change to requirements*.txt
	$(PY) -m pip install --quiet "$$(grep -E '^uv==' requirements-dev.txt)"
	$(VENV)/bin/uv pip compile --quiet --universal --python-version 3.11 $(LOCK_FLAGS) $(LOCK_INPUTS) -o $(LOCK)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml loginpipe/__init__.py requirements.txt requirements-dashboard.txt requirements-avro.txt $(LOCK) | $(PY)
	$(INSTALL) --editable '.[dashboard,avro]'
	touch $@

# the `dev` and `confluent` extras' files, installed directly: the editable package is already there
$(DEV_STAMP): $(RUN_STAMP) requirements-dev.txt requirements-confluent.txt
	$(INSTALL) --requirement requirements-dev.txt
	$(INSTALL) --requirement requirements-confluent.txt
	touch $@

kafka-fetch: $(RUN_STAMP)
	$(VENV)/bin/loginpipe broker fetch

kafka-start: kafka-fetch
	$(VENV)/bin/loginpipe broker start

# the same node with SASL_SSL on 29094 (SCRAM-SHA-512), ACLs, and .kafka/secrets/client.properties
kafka-start-secure: kafka-fetch
	$(VENV)/bin/loginpipe broker start --secure

kafka-stop: $(RUN_STAMP)
	$(VENV)/bin/loginpipe broker stop

kafka-status: $(RUN_STAMP)
	$(VENV)/bin/loginpipe broker status

kafka-logs: $(RUN_STAMP)
	$(VENV)/bin/loginpipe broker logs

# A Confluent-compatible schema registry (Apicurio; schemas kept in .registry/data) on 127.0.0.1:18081, built once into .registry/
registry-fetch: $(RUN_STAMP)
	$(PY) -m loginpipe.registry fetch

registry-start: registry-fetch
	$(PY) -m loginpipe.registry start

registry-stop: $(RUN_STAMP)
	$(PY) -m loginpipe.registry stop

registry-reset: $(RUN_STAMP)  ## stop the local registry and delete its schemas (ids start again at 1)
	$(PY) -m loginpipe.registry reset

topics: $(RUN_STAMP)
	$(PY) create_kafka_topic.py

generate: $(RUN_STAMP)
	$(VENV)/bin/loginpipe generate

clean:                             ## stops the broker, removes the venv, all Kafka files and build output
	-$(PY) -m loginpipe.local.broker stop
	-$(PY) -m loginpipe.local.registry stop
	rm -rf $(VENV) .kafka .registry .pytest_cache .ruff_cache .hypothesis build dist *.egg-info

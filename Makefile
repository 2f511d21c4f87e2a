# Two commands on a fresh machine:  `make run`  (the whole pipeline)  and  `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test soak bench image lint dashboard chromium kafka-fetch kafka-start kafka-start-secure kafka-stop kafka-status kafka-logs topics generate clean

run: $(STAMP) kafka-fetch          ## broker + topics + generator + consumer; Ctrl+C stops it
	$(PY) -m loginpipe.local.stack

test: $(STAMP) kafka-fetch chromium  ## unit + integration tests against a real local broker
	$(PY) -m pytest

soak: $(STAMP) kafka-fetch        ## five 60 s broker kills during a 200k-event drain (about 10 minutes)
	$(PY) -m pytest -m soak -s

dashboard: $(STAMP)                ## the live dashboard on http://localhost:8501 (reads the local broker)
	$(PY) -m loginpipe.dashboard

chromium:                          ## Debian's chromium, for the dashboard's browser test
	@scripts/ensure_chromium.sh

bench: $(STAMP) kafka-fetch        ## throughput, latency, guarantees and memory benchmark; results in bench-results/
	$(PY) -m loginpipe.benchmark

image: $(STAMP) kafka-fetch        ## remakes image.png from a real run of the consumer in tmux
	$(PY) scripts/capture_terminal.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

$(STAMP): requirements.txt requirements-dashboard.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

kafka-fetch: $(STAMP)
	$(PY) -m loginpipe.local.broker fetch

kafka-start: kafka-fetch
	$(PY) -m loginpipe.local.broker start

# the same node with SASL_SSL on 29094 (SCRAM-SHA-512), ACLs, and .kafka/secrets/client.properties
kafka-start-secure: kafka-fetch
	$(PY) -m loginpipe.local.broker start --secure

kafka-stop: $(STAMP)
	$(PY) -m loginpipe.local.broker stop

kafka-status: $(STAMP)
	$(PY) -m loginpipe.local.broker status

kafka-logs: $(STAMP)
	$(PY) -m loginpipe.local.broker logs

topics: $(STAMP)
	$(PY) create_kafka_topic.py

generate: $(STAMP)
	$(PY) -m loginpipe.local.generator

clean:                             ## stops the broker, removes the venv and all Kafka files
	-$(PY) -m loginpipe.local.broker stop
	rm -rf $(VENV) .kafka .pytest_cache .ruff_cache .hypothesis

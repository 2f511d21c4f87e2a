"""Benchmark: the pipeline's throughput against its ceilings, its latency and its memory per user.

    python -m loginpipe.benchmark            (or: make bench)

On fresh, uniquely named topics (deleted at the end), one step after the other:

1. preload N events with the generator library at full speed (its own rate is reported);
2. consume the same N events from the beginning, each run with its own consumer group:
   Kafka's Java ConsumerPerformance (the broker's ceiling), kafka-python consume-only,
   kafka-python pass-through (consume, produce the raw bytes with the pipeline's producer
   settings, commit only after acknowledgements: the ceiling for any pipeline on this client),
   then the pipeline per thread count and with --processes N; the peers on the same input: the
   same pass-through with confluent-kafka, the pipeline with --client confluent (1 process and N;
   skipped with a note when confluent-kafka or the flag is missing), and a Quix Streams app doing
   the same job (quix_app.py, in its own virtual environment under bench-results/peers, made on
   first use; peers.py), with the ratios issue 14 sets goals for and each run's split of the
   machine's cores (the run, the broker, the rest);
3. end-to-end latency of the pipeline at a fixed offered load, joined record by record;
4. processing guarantees: at-least-once against exactly-once at several checkpoint intervals, on
   one preloaded input drained in turns (events/s, CPU) and at the same offered load (latency until
   a read_committed reader sees the output), with ratios to at-least-once (guarantees.py);
5. memory of the aggregations per distinct user, with and without the default key cap.

``--only STEPS`` or ``--skip STEPS`` (throughput, peers, restore, latency, guarantees, memory)
runs some of them; such a run writes bench-<timestamp>.{json,md,png} and leaves latest.* alone.
``--only peers`` (make bench-peers) preloads and runs the peers with only the kafka-python runs
they are compared with: the pass-through, the pipeline with 1 thread and with --processes N.

Python runs are timed alike: from the first record received to the last record done (the
pipeline's own "timing: first record to last processed" figure). The Java tool's rate is its
fetch time, which also leaves out the group join. CPU seconds and peak RSS of each child
process come from wait4(2). MB are 10^6 bytes of record values.

Results: bench-results/bench-<timestamp>.json, latest.json, latest.md and latest.png.

    python -m loginpipe.benchmark compare BEFORE [AFTER]

compares two versions of the code (git refs; AFTER left out: the working tree) on one preloaded
topic instead: each drains it in turn, for --rounds rounds, from its own copy of the code
(compare.py); medians of events/s, CPU seconds and peak RSS in bench-results/compare-<run>.*.
The internal subcommands preload, consume-only, pass-through, memory, changelog-lines, restore and
visible are the child processes of those steps.
"""

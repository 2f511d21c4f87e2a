"""One consumer in the group, on its own thread: poll, process the batch, send, checkpoint.

Everything it shares with the other workers comes from the ``Context``; its own consumer and
Checkpointer are its alone. While more outputs are unacknowledged than the in-flight limit it
pauses its partitions and keeps polling (so the group still sees it), and it resumes at half.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Sequence

from loginpipe.core.batch import process_batch
from loginpipe.kafka.base import ClientError, Consumer, TopicPartition
from loginpipe.runtime.checkpoint import Checkpointer
from loginpipe.runtime.context import Context

POLL_TIMEOUT_MS = 200
PAUSED_POLL_MS = 50  # while paused for backpressure: notice acknowledgements soon
LAG_EVERY_S = 1.0
# Stays well inside the session timeout: heartbeats wait while a revoked partition drains.
REVOKE_DRAIN_S = 5.0
CLOSE_GRACE_S = 5.0  # past the shutdown deadline: closing the consumer
E2E_SAMPLES_PER_BATCH = 200  # end-to-end latency is sampled: a p99 needs no more


class Worker(threading.Thread):
    def __init__(self, index: int, ctx: Context) -> None:
        super().__init__(name=f"worker-{index}", daemon=True)
        self.index = index
        self.ctx = ctx
        self.checkpointer: Checkpointer | None = None
        self._consumer: Consumer | None = None
        self._start_offsets: dict = {}  # first offset read per partition since its assignment
        self._revoking: list[TopicPartition] = []
        self._lag_at = 0.0
        self.started_at = time.monotonic()
        self.assigned_at: float | None = None  # monotonic time of the last partition assignment
        self.partitions = 0  # how many partitions this worker owns
        self.caught_up = False  # every owned partition acknowledged up to its high-water mark
        self.paused = False  # reading is paused: too much is unacknowledged

    def membership(self) -> str:
        return self._consumer.membership() if self._consumer else "no consumer yet"

    @property
    def pending_records(self) -> int:
        return self.checkpointer.pending_records if self.checkpointer else 0

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            self.ctx.fail(traceback.format_exc())

    def _run(self) -> None:
        ctx, config = self.ctx, self.ctx.config
        consumer = self._consumer = ctx.backend.consumer(config, self.index)
        self.checkpointer = Checkpointer(
            consumer, ctx.sender, config.commit_every_records, config.commit_interval_ms / 1000,
            ctx.warn, on_acked=ctx.acknowledge, on_resend=ctx.stats.count_resend,
            max_records=config.max_in_flight, max_bytes=config.max_in_flight_mib * 2**20)
        try:
            consumer.warm_up(config.input_topic)
        except ClientError as exc:  # the broker went away since the start-up check: join anyway
            ctx.warn(f"{self.name}: no metadata yet ({exc})")
        consumer.subscribe(config.input_topic, self)
        try:
            self._loop(consumer)
            self.checkpointer.commit_all(ctx.shutdown.deadline())
        finally:
            timeout_s = min(CLOSE_GRACE_S, max(0.5, ctx.shutdown.deadline() - time.monotonic()))
            consumer.close(timeout_s)

    def _loop(self, consumer: Consumer) -> None:
        ctx, checkpointer = self.ctx, self.checkpointer
        max_records = ctx.config.max_poll_records
        while not ctx.shutdown.is_set():
            self._backpressure(consumer)
            try:
                polled = consumer.poll(PAUSED_POLL_MS if self.paused else POLL_TIMEOUT_MS, max_records)
            except ClientError as exc:  # e.g. the broker went away mid-request: wait, then go on
                ctx.warn(f"poll failed ({exc}); retrying")
                ctx.shutdown.event.wait(0.5)
                continue
            if polled:
                self._handle(polled)
            checkpointer.collect()
            checkpointer.maybe_commit()
            self._update_lag(consumer)

    def _backpressure(self, consumer: Consumer) -> None:
        """Pause every partition while too much is unacknowledged; resume at half. Polling goes on
        while paused, so the group still sees this member and rebalances still reach it."""
        checkpointer = self.checkpointer
        if not self.paused and checkpointer.over_limit:
            self.paused = True
            consumer.pause(list(consumer.assignment()))
            self.ctx.warn(f"{self.name}: the outputs of {checkpointer.pending_records:,} records are "
                          "unacknowledged; reading paused until half of them are")
        elif self.paused and checkpointer.below_resume:
            self.paused = False
            consumer.resume(list(consumer.paused()))

    # The RebalanceListener side (the client calls these, on whichever thread it uses).

    def assigned(self, partitions: Sequence[TopicPartition]) -> None:
        self.assigned_at = time.monotonic()
        self.partitions = len(partitions)
        self.caught_up = False
        self._lag_at = 0.0  # measure soon
        if self.paused and partitions:  # new partitions wait like the others
            self._consumer.pause(list(partitions))

    def revoking(self, partitions: Sequence[TopicPartition]) -> dict:
        """Before partitions go to another member: deliver what is in flight; commit it."""
        checkpointer = self.checkpointer
        self._revoking = list(partitions)
        if not self.ctx.shutdown.is_set():  # when stopping, commit_all has drained already
            checkpointer.drain(min(time.monotonic() + REVOKE_DRAIN_S, self.ctx.shutdown.deadline()))
        return checkpointer.committable()

    def handed_over(self, offsets: dict, error: ClientError | None) -> None:
        checkpointer = self.checkpointer
        if error is None:
            checkpointer.mark_committed(offsets)
        else:
            self.ctx.warn(f"commit before rebalance failed ({error}); the next owner re-reads those records")
        checkpointer.forget(self._revoking)
        for tp in self._revoking:
            self._start_offsets.pop(tp, None)

    def _handle(self, polled: dict) -> None:
        ctx = self.ctx
        started = time.perf_counter()
        records = [record for batch in polled.values() for record in batch]
        offsets = {}
        for tp, batch in polled.items():
            offsets[tp] = batch[-1].offset + 1
            self._start_offsets.setdefault(tp, batch[0].offset)
        result = process_batch(records, ctx.state, ctx.topology, time.time())
        self.checkpointer.send(offsets, result.outputs, result, result.consumed)
        if ctx.config.show_messages:
            self._show(result.outputs)
        done_ms = time.time() * 1000
        step = max(1, len(records) // E2E_SAMPLES_PER_BATCH)
        elapsed = time.perf_counter() - started
        ctx.stats.record(result, elapsed, [done_ms - r.timestamp for r in records[::step]], step)
        if ctx.exporter:
            ctx.exporter.record(result, elapsed)

    def _show(self, outputs) -> None:
        topic = self.ctx.topology.routes.output_topic
        text = "\n".join(o.value.decode() for o in outputs if o.topic == topic)
        if text:
            print(text, file=self.ctx.out, flush=True)

    def _update_lag(self, consumer: Consumer) -> None:
        """Records of this worker's partitions not yet acknowledged, from the last fetched
        high-water marks: what was read but not written still counts as lag."""
        now = time.monotonic()
        if now - self._lag_at < LAG_EVERY_S:
            return
        self._lag_at = now
        lag, known = 0, True
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            position = self.checkpointer.acknowledged_position(tp)
            if position is None:
                position = self._start_offsets.get(tp)
            if position is None and highwater is not None:
                position = consumer.position(tp, 100)
            if highwater is None or position is None:
                known = False  # nothing fetched from it yet
                continue
            lag += max(0, highwater - position)
        self.caught_up = known and lag == 0
        self.ctx.stats.set_lag(self.name, lag)

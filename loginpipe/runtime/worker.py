"""One consumer in the group, on its own thread: poll, process the batch, send, checkpoint.

The consumer reads two topics: the input (the login step) and the group's repartition topic (the
device step); the group spreads the partitions of both. Each partition's state is this worker's
alone while it owns the partition: built from the changelog when the partition is assigned (the
partition is paused meanwhile), dropped when it goes to another member.

Everything it shares with the other workers comes from the ``Context``; its own consumer,
Checkpointer and Restorer are its alone. While more outputs are unacknowledged than the in-flight
limit it pauses its partitions and keeps polling (so the group still sees it), and it resumes at half.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Sequence

from loginpipe.core.batch import BatchResult, process_devices, process_logins
from loginpipe.kafka.base import ClientError, Consumer, TopicPartition, is_authorization_failure
from loginpipe.runtime.checkpoint import Checkpointer
from loginpipe.runtime.context import Context
from loginpipe.runtime.transactions import Transactions
from loginpipe.serde import framed_ids
from loginpipe.state.restore import Restorer
from loginpipe.state.stores import DeviceState, LoginState

POLL_TIMEOUT_MS = 200
RESTORING_POLL_MS = 10  # while restoring: the restore's own read waits instead
PAUSED_POLL_MS = 50  # while paused for backpressure: notice acknowledgements soon
LAG_EVERY_S = 1.0
# Stays well inside the session timeout: heartbeats wait while a revoked partition drains.
REVOKE_DRAIN_S = 5.0
CLOSE_GRACE_S = 5.0  # past the shutdown deadline: closing the consumer
E2E_SAMPLES_PER_BATCH = 200  # end-to-end latency is sampled: a p99 needs no more
REGISTRY_WAIT_S = 0.5  # the registry does not answer: records put back, poll again after this


class Worker(threading.Thread):
    def __init__(self, index: int, ctx: Context) -> None:
        super().__init__(name=f"worker-{index}", daemon=True)
        self.index = index
        self.ctx = ctx
        self.checkpointer: Checkpointer | Transactions | None = None
        self._rollback = False  # exactly-once: a transaction aborted; state and positions go back
        self._consumer: Consumer | None = None
        self._start_offsets: dict = {}  # first offset read per partition since its assignment
        self._revoking: list[TopicPartition] = []
        self._lag_at = 0.0
        self.started_at = time.monotonic()
        self.assigned_at: float | None = None  # monotonic time of the last partition assignment
        self.partitions = 0  # how many partitions this worker owns
        self.caught_up = False  # every owned partition acknowledged up to its high-water mark
        self.paused = False  # reading is paused: too much is unacknowledged
        self._states: dict[TopicPartition, LoginState | DeviceState] = {}  # owned (or suspended)
        self._suspended: set[TopicPartition] = set()  # revoked; kept if the next assignment returns them
        self._restoring: set[TopicPartition] = set()  # paused until their state is rebuilt
        self.restorer = Restorer(lambda: ctx.backend.reader(ctx.config), ctx.warn)

    def membership(self) -> str:
        return self._consumer.membership() if self._consumer else "no consumer yet"

    @property
    def pending_records(self) -> int:
        return self.checkpointer.pending_records if self.checkpointer else 0

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:
            if is_authorization_failure(exc):  # a missing ACL: one line, no traceback
                self.ctx.fail(f"not authorized: {exc}", bug=False)
            else:
                self.ctx.fail(traceback.format_exc())

    def _run(self) -> None:
        ctx, config = self.ctx, self.ctx.config
        consumer = self._consumer = ctx.backend.consumer(config, self.index)
        if config.exactly_once:
            transactional_id = f"{ctx.transactional_prefix}-{self.index}"
            self.checkpointer = Transactions(
                consumer, lambda: ctx.backend.transactional_producer(config, transactional_id),
                config.commit_every_records, config.commit_interval_ms / 1000, ctx.warn,
                on_committed=ctx.acknowledge, on_rollback=self._rolled_back,
                on_transaction=ctx.transaction, max_records=config.max_in_flight)
        else:
            self.checkpointer = Checkpointer(
                consumer, ctx.sender, config.commit_every_records, config.commit_interval_ms / 1000,
                ctx.warn, on_acked=ctx.acknowledge, on_resend=ctx.stats.count_resend,
                max_records=config.max_in_flight, max_bytes=config.max_in_flight_mib * 2**20)
        try:
            consumer.warm_up(config.input_topic)
        except ClientError as exc:  # the broker went away since the start-up check: join anyway
            ctx.warn(f"{self.name}: no metadata yet ({exc})")
        consumer.subscribe([config.input_topic, ctx.topology.routes.internal.repartition], self)
        try:
            self._loop(consumer)
            self.checkpointer.commit_all(ctx.shutdown.deadline())
        finally:
            timeout_s = min(CLOSE_GRACE_S, max(0.5, ctx.shutdown.deadline() - time.monotonic()))
            if isinstance(self.checkpointer, Transactions):
                self.checkpointer.abandon()  # committed already, or the broker aborts it
            consumer.close(timeout_s)
            self.restorer.close()
            ctx.state.restoring.pop(self.name, None)

    def _loop(self, consumer: Consumer) -> None:
        ctx, checkpointer = self.ctx, self.checkpointer
        max_records = ctx.config.max_poll_records
        exactly_once = isinstance(checkpointer, Transactions)
        while not ctx.shutdown.is_set():
            if exactly_once and not (checkpointer.ready() and self._roll_back(consumer)):
                ctx.shutdown.event.wait(0.5)  # the broker does not answer yet
                continue
            if self.restorer.active:
                self._restore_step(consumer)
            self._backpressure(consumer)
            timeout_ms = RESTORING_POLL_MS if self.restorer.active else POLL_TIMEOUT_MS
            try:
                polled = consumer.poll(PAUSED_POLL_MS if self.paused else timeout_ms, max_records)
            except ClientError as exc:  # e.g. the broker went away mid-request: wait, then go on
                ctx.warn(f"poll failed ({exc}); retrying")
                ctx.shutdown.event.wait(0.5)
                continue
            if self._rollback:  # a commit in a rebalance aborted: these are read again
                continue
            if polled:
                self._handle(polled)
            checkpointer.collect()
            checkpointer.maybe_commit()
            self._update_lag(consumer)

    def _rolled_back(self, consumed: int) -> None:
        """A transaction aborted: its records are read again (``_roll_back`` at the next turn)."""
        self._rollback = True
        self.ctx.stats.unread(consumed)

    def _roll_back(self, consumer: Consumer) -> bool:
        """After an abort: every owned partition's state is rebuilt from its changelog and read
        again from the committed offset. True when done (or not needed); False while the broker
        cannot say where the group's offsets are."""
        if not self._rollback:
            return True
        owned = sorted(TopicPartition(*tp) for tp in consumer.assignment())
        try:
            committed = consumer.committed_offsets(owned, 10.0)
        except ClientError as exc:
            self.ctx.warn(f"{self.name}: cannot read the committed offsets yet ({exc}); will retry")
            return False
        self.restorer.cancel(set(self._restoring))
        for tp in list(self._states):
            self._drop(tp)
        self._suspended.clear()
        self._start_offsets.clear()
        for tp in owned:
            self._restore(tp)
            offset = committed.get(tp)
            if offset is None:
                consumer.seek_to_beginning([tp])
            else:
                consumer.seek(tp, offset)
        if owned:
            consumer.pause(owned)
        self._rollback = False
        return True

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
            consumer.resume([tp for tp in consumer.paused() if TopicPartition(*tp) not in self._restoring])

    def _restore_step(self, consumer: Consumer) -> None:
        """Apply one chunk of the changelogs; a partition whose state is complete starts serving."""
        ready = self.restorer.step()
        for tp in ready:
            self._restoring.discard(tp)
            self.ctx.state.adopt(tp, self._states[tp])
        if ready and not self.paused:
            consumer.resume(ready)
        if self.restorer.active:
            self.ctx.state.restoring[self.name] = self.restorer.progress()
        else:
            self.ctx.state.restoring.pop(self.name, None)

    # The RebalanceListener side (the client calls these, on whichever thread it uses).

    def assigned(self, partitions: Sequence[TopicPartition]) -> None:
        """``partitions`` is the whole assignment. States suspended by the revocation just before
        and not returned are dropped; new partitions wait, paused, for their state's restore."""
        owned = {TopicPartition(*tp) for tp in partitions}
        self.assigned_at = time.monotonic()
        self.partitions = len(owned)
        self.caught_up = False
        self._lag_at = 0.0  # measure soon
        for tp in self._suspended - owned:
            self._drop(tp)
        self._suspended.clear()
        fresh = sorted(owned - self._states.keys())
        for tp in fresh:
            self._restore(tp)
        if fresh:
            self._consumer.pause(fresh)
        if self.paused and owned:  # new partitions wait like the others
            self._consumer.pause(sorted(owned))

    def _restore(self, tp: TopicPartition) -> None:
        ctx = self.ctx
        internal, share = ctx.topology.routes.internal, ctx.state_keys_per_partition
        if tp.topic == ctx.config.input_topic:
            state: LoginState | DeviceState = LoginState(tp.partition, share)
            changelog = TopicPartition(internal.changelog, tp.partition)
        else:
            state = DeviceState(tp.partition, share)
            changelog = TopicPartition(internal.device_changelog, tp.partition)
        self._states[tp] = state
        self._restoring.add(tp)
        self.restorer.add(changelog, tp, state)

    def _drop(self, tp: TopicPartition) -> None:
        self._states.pop(tp, None)
        self._restoring.discard(tp)
        self.ctx.state.drop(tp)

    def revoking(self, partitions: Sequence[TopicPartition]) -> dict:
        """Before partitions go to another member: deliver what is in flight; commit it. Their
        states are suspended: kept if the assignment that follows gives them back (Kafka's eager
        protocol revokes everything at every rebalance), dropped otherwise."""
        checkpointer = self.checkpointer
        self._revoking = list(partitions)
        revoked = {TopicPartition(*tp) for tp in partitions}
        unfinished = revoked & self._restoring
        self.restorer.cancel(unfinished)
        for tp in unfinished:  # half restored: of no use to anyone
            self._drop(tp)
        self._suspended |= revoked & self._states.keys()
        if not self.ctx.shutdown.is_set():  # when stopping, commit_all has drained already
            checkpointer.drain(min(time.monotonic() + REVOKE_DRAIN_S, self.ctx.shutdown.deadline()))
        return checkpointer.committable()

    def lost(self, partitions: Sequence[TopicPartition]) -> None:
        """Expelled from the group: the partitions' states are stale (another member may have
        counted their records since), so they are dropped, not suspended; nothing of theirs is
        committed. Exactly-once, the open transaction aborts (it may hold their changes)."""
        gone = {TopicPartition(*tp) for tp in partitions}
        self.ctx.warn(f"{self.name} was expelled from the group (session timeout?); dropping the "
                      f"state of {len(gone)} partition(s) and committing nothing of theirs")
        if isinstance(self.checkpointer, Transactions):
            self.checkpointer.abort("this member was expelled from the group")
        self.restorer.cancel(gone & self._restoring)
        for tp in gone:
            self._drop(tp)
            self._start_offsets.pop(tp, None)
        self._suspended -= gone
        self.checkpointer.forget(gone)

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
        """Run each partition's records through its step; send every output (changelog records
        included) as one checkpointed batch."""
        ctx = self.ctx
        started = time.perf_counter()
        now_s = time.time()
        result, offsets, repartitioned, read, put_back = BatchResult(), {}, [], 0, False
        for tp, batch in polled.items():
            state = self._states.get(TopicPartition(*tp))
            if state is None or tp in self._restoring:
                self._not_ready(tp, batch[0].offset, state is None)
                continue
            schemas = None
            if ctx.schemas is not None and isinstance(state, LoginState):
                schemas = ctx.schemas.resolve(framed_ids(record.value for record in batch))
                if schemas is None:  # the registry does not answer: read these again, later
                    self._consumer.seek(TopicPartition(*tp), batch[0].offset)
                    put_back = True
                    continue
            offsets[tp] = batch[-1].offset + 1
            self._start_offsets.setdefault(tp, batch[0].offset)
            read += len(batch)
            if isinstance(state, LoginState):
                step = process_logins(batch, state, ctx.state.count, ctx.topology, now_s, schemas)
            else:
                step = process_devices(batch, state, ctx.topology, now_s)
                repartitioned.extend(batch)
            result.absorb(step)
        self.checkpointer.send(offsets, result.outputs, result, read)
        if ctx.config.show_messages:
            self._show(result.outputs)
        done_ms = time.time() * 1000
        # End to end is measured where records are published: the repartition records carry the
        # input record's timestamp.
        step_n = max(1, len(repartitioned) // E2E_SAMPLES_PER_BATCH)
        elapsed = time.perf_counter() - started
        e2e_ms = [done_ms - r.timestamp for r in repartitioned[::step_n]]
        ctx.stats.record(result, elapsed, e2e_ms, step_n)
        if ctx.exporter:
            ctx.exporter.record(result, elapsed, e2e_ms, step_n)
        if put_back:  # SchemaCache warns, and asks the registry again once this is up
            ctx.shutdown.event.wait(REGISTRY_WAIT_S)

    def _not_ready(self, tp, offset: int, unknown: bool) -> None:
        """Records of a partition whose state is not ready: read them again once it is. The pause
        should have kept them back; when the client did not say the partition was assigned,
        restore it now rather than read it again and again."""
        tp = TopicPartition(*tp)
        if unknown:
            self.ctx.warn(f"{self.name}: records of {tp.topic}[{tp.partition}] arrived without an "
                          "assignment notice; restoring its state first")
            self._restore(tp)
        self._consumer.pause([tp])
        self._consumer.seek(tp, offset)

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


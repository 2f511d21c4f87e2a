"""The group's exact aggregates, read back from its changelog topics.

    python -m loginpipe.query totals [--json]
    python -m loginpipe.query user USER_ID [--json]
    python -m loginpipe.query device DEVICE_ID [--json]

A process's summary covers the partitions it owns; this reads every partition's state from the
group's two changelog topics (``state/changelog.py``), from the beginning up to their end
offsets at the time of the call, so the answer is the whole group's, whether the pipeline is
running or not. An unknown user or device answers 0: the changelog holds no record of it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import orjson

from loginpipe.cli import (
    EnvArgumentParser,
    add_bootstrap_argument,
    connection_from_args,
    positive_float,
    run_cli,
)
from loginpipe.errors import UserError
from loginpipe.kafka.admin import STALL_TIMEOUT_S, describe_partitions, read_topic
from loginpipe.state.changelog import finish_restore, restore_device, restore_login
from loginpipe.state.stores import DeviceState, DistinctValues, LoginState, stable_key
from loginpipe.state.view import detailed_counts, summarize, totals_of
from loginpipe.topics import DEFAULT_GROUP, InternalTopics

# The totals answer, in this order: the counts per label, then the figures below.
LABELLED = ("by_app_version", "by_locale", "by_device_type")
FIGURES = ("multi_ip_users", "shared_devices", "tracked_users", "tracked_devices", "forgotten_users",
           "forgotten_devices", "capped_users", "capped_devices")


class ChangelogRecord(Protocol):
    """What the query reads of a record (kafka-python's ConsumerRecord has these)."""

    partition: int
    key: bytes | None
    value: bytes | None


class GroupState:
    """The stores rebuilt from changelog records: one per changelog partition."""

    def __init__(self, login_partitions: int = 0, device_partitions: int = 0) -> None:
        # Empty partitions still get a store, so the answer lists every partition.
        self.logins = {p: LoginState(p) for p in range(login_partitions)}
        self.devices = {p: DeviceState(p) for p in range(device_partitions)}

    def login_record(self, record: ChangelogRecord) -> None:
        if record.key is not None:
            if record.partition not in self.logins:  # the topic gained a partition since we looked
                self.logins[record.partition] = LoginState(record.partition)
            restore_login(self.logins[record.partition], record.key, record.value)

    def device_record(self, record: ChangelogRecord) -> None:
        if record.key is not None:
            if record.partition not in self.devices:
                self.devices[record.partition] = DeviceState(record.partition)
            restore_device(self.devices[record.partition], record.key, record.value)

    def finish(self) -> tuple[list[LoginState], list[DeviceState]]:
        """The stores, by partition, once every record is applied."""
        logins = [self.logins[p] for p in sorted(self.logins)]
        devices = [self.devices[p] for p in sorted(self.devices)]
        for state in [*logins, *devices]:
            finish_restore(state)
        return logins, devices


# --- Reading the group's state (Kafka) -----------------------------------------------------------

def read_group_state(bootstrap_servers: str, group_id: str, timeout_s: float = STALL_TIMEOUT_S
                     ) -> tuple[list[LoginState], list[DeviceState]]:
    """Every partition's stores of ``group_id``, rebuilt from its changelog topics as they are now;
    a one-line UserError when the group has none (it never ran) or the broker does not answer."""
    topics = InternalTopics.of(group_id)
    partitions = _changelog_partitions(bootstrap_servers, group_id, topics)
    group = GroupState(partitions[topics.changelog], partitions[topics.device_changelog])
    read_topic(bootstrap_servers, topics.changelog, group.login_record, timeout_s)
    read_topic(bootstrap_servers, topics.device_changelog, group.device_record, timeout_s)
    return group.finish()


def _changelog_partitions(bootstrap_servers: str, group_id: str, topics: InternalTopics) -> dict[str, int]:
    names = [topics.changelog, topics.device_changelog]
    partitions = describe_partitions(bootstrap_servers, names)
    missing = [name for name in names if name not in partitions]
    if missing:
        raise UserError(f"group {group_id!r} has no state to query: {' and '.join(missing)} "
                        f"{'does' if len(missing) == 1 else 'do'} not exist (has the pipeline run "
                        f"with --group-id {group_id}?)")
    return partitions


def group_summary(bootstrap_servers: str, group_id: str) -> dict:
    """The group's headline figures, in the shape of a process's final summary."""
    logins, devices = read_group_state(bootstrap_servers, group_id)
    return summarize(totals_of(logins), logins, devices)


# --- The answers (pure: from the stores) ----------------------------------------------------------

def totals_answer(logins: Sequence[LoginState], devices: Sequence[DeviceState]) -> dict[str, Any]:
    """The group's exact totals: events, counts per label, and the distinct-value figures."""
    counts = detailed_counts(totals_of(logins), logins, devices)
    answer: dict[str, Any] = {"events": counts["events"]}
    for name in LABELLED:
        answer[name] = dict(sorted(counts[name].items(), key=lambda item: (-item[1], str(item[0]))))
    answer.update((name, counts[name]) for name in FIGURES)
    return answer


def user_answer(logins: Iterable[LoginState], user_id: str) -> dict[str, Any]:
    count, capped = _distinct((state.ips_by_user for state in logins), user_id)
    return {"user_id": user_id, "distinct_ips": count, **({"capped": True} if capped else {})}


def device_answer(devices: Iterable[DeviceState], device_id: str) -> dict[str, Any]:
    count, capped = _distinct((state.users_by_device for state in devices), device_id)
    return {"device_id": device_id, "users": count, **({"capped": True} if capped else {})}


def _distinct(stores: Iterable[DistinctValues], key: str) -> tuple[int, bool]:
    """How many distinct values ``key`` has, and whether a store holds it at its cap. Every store
    is asked, and the values united: a key lives in one partition unless the topic gained
    partitions, and then the union is still exact."""
    values: set = set()
    capped = False
    for store in stores:
        held = store.values(stable_key(key))
        values.update(held)
        capped = capped or len(held) >= store.max_values
    return len(values), capped


# --- Output ---------------------------------------------------------------------------------------

def totals_table(answer: dict[str, Any]) -> str:
    """The totals answer as aligned text: the figures, then each count per label with its share."""
    rows = [("events", answer["events"])] + [(name.replace("_", " "), answer[name]) for name in FIGURES]
    lines = _aligned(rows)
    events = answer["events"] or 1
    for name in LABELLED:
        shares = [(label, f"{count:,}", f"{100 * count / events:.1f} %")
                  for label, count in answer[name].items()]
        lines += ["", name.replace("_", " ") + ":", *_aligned(shares, indent="  ")]
    return "\n".join(lines)


def key_table(answer: dict[str, Any]) -> str:
    """A user or device answer as aligned text."""
    rows = [(name.replace("_", " "), value) for name, value in answer.items() if name != "capped"]
    if answer.get("capped"):
        name, count = rows[-1]
        rows[-1] = (name, f"{count:,} or more (at the cap of values kept per key)")
    return "\n".join(_aligned(rows, right=False))


def _aligned(rows: Sequence[tuple[Any, ...]], indent: str = "", right: bool = True) -> list[str]:
    """Rows of equal length as lines: the first column left-aligned, the others right-aligned
    (numbers, with thousands separators) unless not ``right`` (an id is text)."""
    cells = [[str(row[0]), *(f"{v:,}" if isinstance(v, int) else str(v) for v in row[1:])] for row in rows]
    widths = [max(len(cell) for cell in column) for column in zip(*cells, strict=True)]
    lines = []
    for first, *rest in cells:
        others = [cell.rjust(width) if right else cell.ljust(width)
                  for cell, width in zip(rest, widths[1:], strict=True)]
        lines.append(indent + "  ".join([first.ljust(widths[0]), *others]).rstrip())
    return lines


# --- Command line ---------------------------------------------------------------------------------

def build_parser() -> EnvArgumentParser:
    parser = EnvArgumentParser(prog="python -m loginpipe.query", description=__doc__.splitlines()[0])
    add_bootstrap_argument(parser)
    parser.add_env_argument("--group-id", env="GROUP_ID", default=DEFAULT_GROUP,
                            help="the consumer group whose state to read")
    parser.add_env_argument("--timeout", env="QUERY_TIMEOUT_S", type=positive_float, default=STALL_TIMEOUT_S,
                            help="give up after this many seconds without progress reading a changelog")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    totals = commands.add_parser("totals", help="the group's exact totals")
    user = commands.add_parser("user", help="a user's distinct IPs")
    user.add_argument("key", metavar="USER_ID")
    device = commands.add_parser("device", help="a device's distinct users")
    device.add_argument("key", metavar="DEVICE_ID")
    for command in (totals, user, device):
        command.add_argument("--json", action="store_true", help="print the answer as one JSON line")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logins, devices = read_group_state(connection_from_args(args), args.group_id, args.timeout)
    if args.command == "totals":
        answer = totals_answer(logins, devices)
        text = totals_table(answer)
    else:
        answer = user_answer(logins, args.key) if args.command == "user" else device_answer(devices, args.key)
        text = key_table(answer)
    print(orjson.dumps(answer).decode() if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))

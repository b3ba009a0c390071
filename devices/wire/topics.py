"""The MQTT topic tree of tinyfleet, built in one place.

Every topic lives under one versioned root, ``tinyfleet/v1/<fleet>/<device_id>/<kind>``, so that a
broker ACL with one ``%u`` pattern per kind can confine a device to its own subtree (the device id
is its MQTT client id and user name). Topics are never assembled with scattered f-strings: call
`device_topic` (publish) or `fleet_filter` (subscribe) and read them back with `parse_topic`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from devices.exceptions import DeviceIdError

ROOT = "tinyfleet/v1"
"""Versioned root: a v2 protocol gets a new subtree, so old and new fleets can share a broker."""
DEFAULT_FLEET = "default"
"""The fleet every command uses when none is given (one name everywhere: run, simulate, enroll, federate)."""

Kind = Literal["td", "presence", "telemetry", "task", "result"]
KINDS: tuple[Kind, ...] = ("td", "presence", "telemetry", "task", "result")
RETAINED_KINDS: frozenset[str] = frozenset({"td", "presence"})
"""Retained topics: a server that starts later still learns which devices exist and are online."""

DEVICE_WRITES: frozenset[str] = frozenset({"td", "presence", "telemetry", "result"})
BRIDGED_KINDS: frozenset[str] = frozenset({"td", "presence", "telemetry"})
"""What a site broker forwards to a central one: who exists, who is online, how they do; tasks and
results stay on their site (they cross sites only through the federation's own levels)."""
DEVICE_READS: frozenset[str] = frozenset({"task"})

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_name(value: str, *, what: str = "device id") -> str:
    """Return `value` if it can be one topic level (and an MQTT client id / user name).

    Why so strict: ``/`` would open another topic level, ``+`` and ``#`` are wildcards, ``$``
    starts broker-internal topics, and ``:`` separates user and hash in Mosquitto's password file
    (a device id is also its MQTT user name, so one rule serves topics, client ids and accounts).
    Allowed: 1-64 characters from ``A-Z a-z 0-9 . _ -``, starting with a letter or digit.
    """
    if not isinstance(value, str) or not _NAME.match(value):
        raise DeviceIdError(
            f"invalid {what} {value!r}: use 1-64 characters from A-Z a-z 0-9 . _ - "
            "(no '/', '+', '#', ':', spaces), starting with a letter or digit")
    return value


def device_topic(fleet: str, device_id: str, kind: Kind) -> str:
    """The one topic of `kind` that belongs to `device_id` in `fleet`."""
    if kind not in KINDS:
        raise ValueError(f"Invalid topic kind: {kind!r} (one of {', '.join(KINDS)})")
    return f"{ROOT}/{check_name(fleet, what='fleet name')}/{check_name(device_id)}/{kind}"


def fleet_filter(fleet: str, kind: Kind | Literal["#"]) -> str:
    """A subscription filter matching `kind` of every device in `fleet` (``#``: everything)."""
    check_name(fleet, what="fleet name")
    if kind == "#":
        return f"{ROOT}/{fleet}/#"
    if kind not in KINDS:
        raise ValueError(f"Invalid topic kind: {kind!r} (one of {', '.join(KINDS)})")
    return f"{ROOT}/{fleet}/+/{kind}"


@dataclass(frozen=True)
class DeviceTopic:
    """A parsed device topic."""

    fleet: str
    device_id: str
    kind: Kind

    def __str__(self) -> str:
        return device_topic(self.fleet, self.device_id, self.kind)


def parse_topic(topic: str) -> DeviceTopic:
    """Split ``tinyfleet/v1/<fleet>/<device>/<kind>``; raise ValueError for anything else."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:2]) != ROOT or parts[4] not in KINDS:
        raise ValueError(f"Invalid topic: {topic!r} (expected {ROOT}/<fleet>/<device>/<kind>)")
    try:
        check_name(parts[2], what="fleet name")
        check_name(parts[3])
    except DeviceIdError as exc:
        raise ValueError(f"Invalid topic: {topic!r} ({exc})") from None
    return DeviceTopic(parts[2], parts[3], parts[4])


def device_acl_lines(fleet: str, device_id: str) -> list[str]:
    """The Mosquitto ACL lines of one device account: explicit topics, no ``%u`` patterns.

    The device may write its own td/presence/telemetry/result and read its own task topic, nothing
    else. Why explicit topics: Mosquitto 2.0.x substitutes ``%u`` across topic levels, so a pattern
    would trust the user name's characters; an explicit line trusts nothing (`broker.acl` writes
    these lines for every enrolled device, and docs/protocol.md shows them).
    """
    base = f"{ROOT}/{check_name(fleet, what='fleet name')}/{check_name(device_id)}"
    return ([f"user {device_id}"] + [f"topic write {base}/{k}" for k in sorted(DEVICE_WRITES)]
            + [f"topic read {base}/{k}" for k in sorted(DEVICE_READS)])


def bridge_acl_lines(fleet: str, user: str) -> list[str]:
    """The ACL lines of a bridge account (a site broker on a central one): write `BRIDGED_KINDS` of the fleet only."""
    base = f"{ROOT}/{check_name(fleet, what='fleet name')}/+"
    return [f"user {user}"] + [f"topic write {base}/{k}" for k in sorted(BRIDGED_KINDS)]


def server_acl_lines(user: str) -> list[str]:
    """The ACL lines of a server account (coordinator, registry listener, CLI): every fleet, both ways."""
    return [f"user {user}", f"topic readwrite {ROOT}/#"]

"""W3C WoT Thing Description 1.1 of a tinyfleet device, with forms in the WoT MQTT binding.

A device publishes this document retained on its ``td`` topic, so that any WoT consumer (and the
tinyfleet registry) learns what it is, what it can do and where to reach it without talking to
the device. Forms follow the MQTT binding (``mqv:`` = https://www.w3.org/2019/wot/mqtt#): ``href``
is only ``mqtt://host:port`` (no topic in the URL), ``mqv:topic`` names the topic to publish to,
``mqv:filter`` the topic to subscribe to; ``readproperty`` appears only for retained values.
Board facts (RAM, flash, MCU, clock, sensors) use tinyfleet terms (`TINYFLEET_NS`) because the TD
vocabulary has none.

The terms the tools read (docs/protocol.md §9 has the full table):

* ``tinyfleet:useCase`` and ``tinyfleet:board`` → ``tinyfleet:ramBytes``: the coordinator samples a
  device only if they declare the run's use case and the RAM to train its model on the device
  (`federation.selection`); the registry ingests them (``tf:useCase``, ``tf:ramBytes``).
* ``tinyfleet:board`` → ``tinyfleet:flashBytes``, ``tinyfleet:name``, ``tinyfleet:title``,
  ``tinyfleet:mcu``, ``tinyfleet:cpu``, ``tinyfleet:clockHz``; ``tinyfleet:sensors``;
  ``tinyfleet:modelSha256``; ``tinyfleet:fleet``: registry matchmaking and `tinyfleet devices list|show`.
* ``tinyfleet:protocolVersion``: `tinyfleet devices conformance`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from devices.boards import Board
from devices.wire.protocol import PROTOCOL_VERSION
from devices.wire.topics import Kind, device_topic

TD_CONTEXT = "https://www.w3.org/2022/wot/td/v1.1"
MQV_NS = "https://www.w3.org/2019/wot/mqtt#"
TINYFLEET_NS = "https://w3id.org/tinyfleet/ns#"
SOSA_NS = "http://www.w3.org/ns/sosa/"
FRAME_CONTENT_TYPE = "application/octet-stream"
"""Tasks/results are tinyfleet frames (docs/protocol.md); generic clients see opaque bytes."""


def device_urn(device_id: str) -> str:
    """The TD ``id`` of a device."""
    return f"urn:tinyfleet:device:{device_id}"


def described_device(td: Mapping[str, Any]) -> str | None:
    """The device a TD says it describes: the id in ``urn:tinyfleet:device:<id>``, else its title.

    Servers compare it with the device id of the topic the TD arrived on (which the broker
    authenticated) and drop a TD that describes another device.
    """
    prefix = device_urn("")
    tid = td.get("id")
    if isinstance(tid, str) and tid.startswith(prefix):
        return tid[len(prefix):]
    title = td.get("title")
    return title if isinstance(title, str) else None


def thing_description(*, device_id: str, fleet: str, board: Board, use_case: str, host: str, port: int,
                      sensors: Sequence[str] = (), tls: bool = False, authenticated: bool = False,
                      model_sha256: str | None = None) -> dict[str, Any]:
    """Build the TD of one device.

    Parameters
    ----------
    device_id, fleet : str
        Identify the device and its topic subtree.
    board : Board
        Declared RAM/flash/MCU/clock/sensors.
    use_case : str
        The task the device learns (e.g. "sine").
    sensors : sequence of str, default=()
        The sensors the use case reads; each becomes an observable property. All sensors of the
        board are listed under ``tinyfleet:sensors``.
    host, port : str, int
        The broker the device is connected to (``href`` of every form).
    tls : bool, default=False
        ``mqtts://`` instead of ``mqtt://``.
    authenticated : bool, default=False
        The broker requires user name and password (security scheme ``basic``), else ``nosec``.
    model_sha256 : str, optional
        Hash of the model the device currently runs.
    """
    href = f"{'mqtts' if tls else 'mqtt'}://{host}:{port}"

    def sub(kind: Kind, ops: list[str], *, ctype: str = "application/json") -> dict[str, Any]:
        return {"href": href, "op": ops, "mqv:filter": device_topic(fleet, device_id, kind),
                "mqv:controlPacket": "subscribe", "mqv:qos": "1", "contentType": ctype}

    def pub(kind: Kind) -> dict[str, Any]:
        return {"href": href, "op": "invokeaction", "mqv:topic": device_topic(fleet, device_id, kind),
                "mqv:controlPacket": "publish", "mqv:qos": "1", "mqv:retain": False,
                "contentType": FRAME_CONTENT_TYPE}

    def action(title: str, description: str, schema: str) -> dict[str, Any]:
        return {"title": title, "description": description + f" The request is a tinyfleet v{PROTOCOL_VERSION} "
                "frame whose header follows the JSON Schema " + schema + "; the device answers once on its "
                "result topic (event 'result') with a frame whose 'reply-to' is the request's id.",
                "forms": [pub("task")], "safe": False, "idempotent": True,
                "input": {"type": "object", "contentMediaType": FRAME_CONTENT_TYPE, "description": schema}}

    sensor_props = {
        f"sensor-{kind}": {
            "title": f"{kind} sensor", "@type": "sosa:Sensor", "type": "number", "readOnly": True,
            "observable": True,
            "description": f"Mean of the latest {kind} sample the learner consumed: field sensors.{kind} "
                           "of the telemetry document.",
            "forms": [sub("telemetry", ["observeproperty"])]}
        for kind in sensors}
    security = "basic_sc" if authenticated else "nosec_sc"
    td: dict[str, Any] = {
        "@context": [TD_CONTEXT, {"mqv": MQV_NS, "tinyfleet": TINYFLEET_NS, "sosa": SOSA_NS}],
        "@type": ["Thing", "sosa:Platform"],
        "id": device_urn(device_id),
        "title": device_id,
        "description": f"tinyfleet device {device_id} of fleet {fleet}: {board.title} learning '{use_case}' on the "
                       "device (frozen int8 backbone + float head trained online).",
        "version": {"instance": f"protocol-v{PROTOCOL_VERSION}"},
        "securityDefinitions": {security: {"scheme": "basic", "in": "auto"} if authenticated
                                else {"scheme": "nosec"}},
        "security": [security],
        "tinyfleet:fleet": fleet,
        "tinyfleet:useCase": use_case,
        "tinyfleet:protocolVersion": PROTOCOL_VERSION,
        "tinyfleet:board": {"tinyfleet:name": board.name, "tinyfleet:title": board.title,
                            "tinyfleet:mcu": board.mcu, "tinyfleet:cpu": board.cpu,
                            "tinyfleet:clockHz": board.clock_hz, "tinyfleet:ramBytes": board.ram_bytes,
                            "tinyfleet:flashBytes": board.flash_bytes},
        "tinyfleet:sensors": list(board.sensors),
        "tinyfleet:modelSha256": model_sha256,
        "properties": {
            "presence": {
                "title": "Presence", "type": "object", "readOnly": True, "observable": True,
                "description": "Retained {online, ts, board}; the broker's Last Will sets online=false when the "
                               "device drops without saying goodbye.",
                "properties": {"online": {"type": "boolean"}, "ts": {"type": "number"}},
                "forms": [sub("presence", ["readproperty", "observeproperty"])]},
            "learningState": {
                "title": "Learning state", "type": "object", "readOnly": True, "observable": True,
                "description": "Telemetry: last loss, samples seen, tasks done, learner memory, model hash.",
                "properties": {"loss": {"type": "number"}, "samples-seen": {"type": "integer"},
                               "memory-bytes": {"type": "integer", "unit": "byte"},
                               "model-sha256": {"type": "string"}},
                "forms": [sub("telemetry", ["observeproperty"])]},
            **sensor_props,
        },
        "actions": {
            "train": action("Train", "Run local-steps SGD steps (batch 1) from the sent head weights; reply "
                            "with the trained weights, or with Top-P sparse deltas when top-p is set.",
                            "task.train.schema.json"),
            "evaluate": action("Evaluate", "Evaluate the sent (or current) head on local data.",
                               "task.evaluate.schema.json"),
            "adapt": action("Adapt", "Few-shot fine-tuning from the sent initialization.", "task.adapt.schema.json"),
            "deploy": action("Deploy", "Receive a model in chunks, check sha256 and fit, swap atomically, "
                             "self-test, roll back on failure.", "task.deploy.schema.json"),
        },
        "events": {
            "result": {"title": "Task result", "description": "One reply per task (result.schema.json).",
                       "data": {"type": "object", "contentMediaType": FRAME_CONTENT_TYPE},
                       "forms": [sub("result", ["subscribeevent"], ctype=FRAME_CONTENT_TYPE)]},
        },
    }
    return td


def td_payload(td: dict[str, Any]) -> bytes:
    """Serialize a TD for the retained ``td`` topic."""
    return json.dumps(td, separators=(",", ":")).encode()

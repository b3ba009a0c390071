"""`tinyfleet registry` in-process on real .tflite files, a real SPARQL endpoint, and live MQTT presence."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from click.testing import Result

from tests.support.models import SineBuild
from tests.support.registry import TINYML_SCHEMA_KG, OxigraphServer, td

Cli = Callable[..., Result]


def _json(proc) -> object:  # type: ignore[no-untyped-def]
    assert proc.exit_code == 0, proc.stderr[-1500:]
    return json.loads(proc.stdout)


def _one_line_error(proc, match: str) -> None:  # type: ignore[no-untyped-def]
    assert proc.exit_code == 1, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and match in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_cli_real_models_match_explain_and_errors(cli: Cli, tmp_path: Path, sine_build: SineBuild,
                                                  tiny_cnn_tflite: Path) -> None:
    store = ["--store", str(tmp_path / "reg")]
    sine = _json(cli("registry", "add-model", str(sine_build.directory / "model.tflite"),
                     "--card", str(sine_build.directory / "card.json"), *store, "--json"))
    card = sine_build.card
    assert sine["name"] == card["name"]
    assert sine["ram_needed_bytes"] == card["arena_bytes"] and sine["flash_needed_bytes"] == card["flash_bytes"]
    cnn = _json(cli("registry", "add-model", str(tiny_cnn_tflite), *store, "--json"))
    assert cnn["name"] == "tiny_cnn" and cnn["flash_needed_bytes"] == tiny_cnn_tflite.stat().st_size

    sensors = list(card.get("sensors") or [])
    arena = int(card["arena_bytes"])
    (tmp_path / "big.json").write_text(json.dumps(td("big", 262_144, 1_048_576, sensors)))
    (tmp_path / "tiny.json").write_text(json.dumps(td("tiny", arena - 1, 1_048_576, sensors)))
    for name in ("big", "tiny"):
        _json(cli("registry", "add-device", str(tmp_path / f"{name}.json"), *store, "--json"))

    rows = _json(cli("registry", "match", "--model", card["name"], *store, "--json"))
    assert [(r["name"], r["ram_bytes"], r["ram_needed_bytes"]) for r in rows] == [("big", 262_144, arena)]
    assert rows[0]["sensors"] == sorted(sensors) and rows[0]["flash_needed_bytes"] == card["flash_bytes"]
    explained = _json(cli("registry", "match", "--model", card["name"], "--explain", *store, "--json"))
    assert [(r["name"], r["reasons"]) for r in explained["excluded"]] == [
        ("tiny", [f"too little RAM: {arena - 1} B < {arena} B needed"])]
    models = _json(cli("registry", "match", "--device", "big", *store, "--json"))
    assert card["name"] in [m["name"] for m in models]

    layers = _json(cli("registry", "query", str(_rq(tmp_path, "SELECT ?op WHERE { ?m schema:name \"tiny_cnn\" ; "
                                                  "nnet:inputLayer|nnet:middleLayer|nnet:outputLayer ?l . "
                                                  "?l tf:opName ?op ; nnet:hasIndex ?i } ORDER BY ?i")),
                    *store, "--json"))
    ops = [r["op"] for r in layers["rows"]]
    assert ops[:2] == ["CONV_2D", "DEPTHWISE_CONV_2D"] and ops[-1] == "FULLY_CONNECTED"

    inv = _json(cli("registry", "inventory", *store, "--json"))
    assert sorted(r["name"] for r in inv) == ["big", "tiny"]

    # Bad input: one line, exit 1, nothing written.
    before = _json(cli("registry", "query", str(_rq(tmp_path, "SELECT (COUNT(*) AS ?n) WHERE { ?s ?p ?o }")),
                       *store, "--json"))
    _one_line_error(cli("registry", "match", "--model", 'x" } ; DROP ALL ; #', *store, "--json"), "no model named")
    _one_line_error(cli("registry", "query", str(_rq(tmp_path, "DROP ALL")), *store), "read-only")
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"PK\x03\x04 not a model")
    _one_line_error(cli("registry", "add-model", str(junk), *store), "junk.tflite")
    (tmp_path / "bad.json").write_text("{not json")
    _one_line_error(cli("registry", "add-device", str(tmp_path / "bad.json"), *store), "bad.json")
    usage = cli("registry", "match", *store)  # a usage error: exit 2
    assert usage.exit_code == 2 and usage.stderr.startswith("error: give exactly one of --model, --device")
    after = _json(cli("registry", "query", str(_rq(tmp_path, "SELECT (COUNT(*) AS ?n) WHERE { ?s ?p ?o }")),
                      *store, "--json"))
    assert after == before


def _rq(tmp_path: Path, text: str) -> Path:
    p = tmp_path / f"q{abs(hash(text))}.rq"
    p.write_text(text)
    return p


def test_cli_import_validate_export_on_remote_endpoint(cli: Cli, tmp_path: Path,
                                                      oxigraph_server: OxigraphServer) -> None:
    remote = ["--endpoint", f"{oxigraph_server.url}/query", "--update-endpoint", f"{oxigraph_server.url}/update"]
    kg = tmp_path / "kg.ttl"
    kg.write_text(TINYML_SCHEMA_KG)
    assert _json(cli("registry", "validate", str(kg), "--json"))["valid"] is True
    got = _json(cli("registry", "import", str(kg), *remote, "--json"))
    assert got["triples"] > 0
    rows = _json(cli("registry", "match", "--model", "Micro_Speech_Yes_No", *remote, "--json"))
    assert "Arduino-Nano-BLE-33-Tinyml-Kit_1" in [r["name"] for r in rows]
    hits = _json(cli("registry", "search", "speech", *remote, "--json"))
    assert [h["name"] for h in hits] == ["Micro_Speech_Yes_No"]
    bad = tmp_path / "bad.ttl"
    bad.write_text("@prefix s3n: <http://w3id.org/s3n/> . @prefix tf: <https://w3id.org/tinyfleet/ns#> .\n"
                   "<http://example.org/d> a s3n:SmartSensor ; tf:ramBytes 0 .")
    proc = cli("registry", "validate", str(bad))
    assert proc.exit_code == 1 and proc.stderr.startswith("error: ") and "RAM size" in proc.stderr
    proc = cli("registry", "import", str(bad), *remote)
    assert proc.exit_code == 1 and "nothing written" in proc.stderr.splitlines()[0]
    export = cli("registry", "export", "--format", "turtle", *remote)
    assert export.exit_code == 0 and "Micro_Speech_Yes_No" in export.stdout and "example.org/d" not in export.stdout
    proc = cli("registry", "inventory", "--endpoint", "http://127.0.0.1:9/query", "--json")
    _one_line_error(proc, "unreachable")


def test_presence_listener_tracks_td_and_last_will(mosquitto) -> None:  # type: ignore[no-untyped-def]
    import paho.mqtt.client as mqtt

    from registry import inventory, open_store
    from registry.presence import PresenceListener

    st = open_store(memory=True)
    dev = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dev-live")
    dev.will_set("tinyfleet/v1/lab/dev-live/presence", json.dumps({"online": False}), qos=1, retain=True)
    dev.connect(mosquitto.host, mosquitto.port)
    dev.loop_start()
    try:
        dev.publish("tinyfleet/v1/lab/dev-live/td", json.dumps(td("dev-live", 65_536, 262_144, ["microphone"])),
                    qos=1, retain=True).wait_for_publish(5)
        dev.publish("tinyfleet/v1/lab/dev-live/presence", json.dumps({"online": True, "ts": time.time()}),
                    qos=1, retain=True).wait_for_publish(5)
        from devices.link.address import BrokerAddress

        with PresenceListener(st, BrokerAddress(mosquitto.host, mosquitto.port), fleet="lab") as listener:
            dev.publish("tinyfleet/v1/lab/dev-bad/td", b"\xff not json", qos=1).wait_for_publish(5)
            assert listener.wait_for(lambda s: s.presence_updates >= 1 and s.rejected, timeout=10)
            row = {r["name"]: r for r in inventory(st)}["dev-live"]
            assert row["online"] is True and row["ram_bytes"] == 65_536
            assert any("payload is not JSON" in r for r in listener.rejected)
            dev.socket().close()  # drop without DISCONNECT: the broker sends the Last Will
            assert listener.wait_for(lambda s: s.presence_updates >= 2, timeout=60)
            assert {r["name"]: r for r in inventory(st)}["dev-live"]["online"] is False
    finally:
        dev.loop_stop()
        for topic in ("td", "presence"):
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
            c.connect(mosquitto.host, mosquitto.port)
            c.loop_start()
            c.publish(f"tinyfleet/v1/lab/dev-live/{topic}", b"", qos=1, retain=True).wait_for_publish(5)
            c.loop_stop()
            c.disconnect()

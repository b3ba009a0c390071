"""Property-based fuzzing of everything that parses outside input: no crash, no hang, one clear error, nothing written.

Targets: the wire-protocol decoder and the server's whole reply path (Grid), the .tflite inspector
(truncated / bit-flipped real model), Thing Descriptions, Turtle and JSON-LD imports. Inputs are
random bytes and mutations (truncate, bit flip, overwrite, insert, delete) of *valid* inputs, so
the fuzzer reaches the deep checks instead of stopping at the first byte. Each property is
bounded (max_examples) so the file runs in well under a minute; `EXAMPLES` counts the examples
actually run (printed with ``-s``; docs/reliability.md records them). The examples are the same on
every run and machine (the suite's derandomized profile, tests/conftest.py); `make fuzz` explores
randomly with ten times as many.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st
from rdflib import Graph

from devices.exceptions import ProtocolError
from devices.wire import protocol
from federation.flower_compat import init_task_identity
from federation.grid import FleetGrid, node_id_for
from federation.inprocess_transport import InProcessTransport
from federation.wire import ProtocolCodec
from firmware_models.exceptions import ModelFileError, TinyFleetError
from firmware_models.tflite_inspect import inspect_bytes
from registry.exceptions import RegistryError
from registry.ingest_device import add_device, parse_td
from registry.interop import import_file
from registry.store import EmbeddedStore
from tests.support.federation import initial_head
from tests.support.fuzzing import examples
from tests.support.registry import TINYML_SCHEMA_KG, td

EXAMPLES: Counter[str] = Counter()
FAST = settings(max_examples=examples(200))
SLOW = settings(max_examples=examples(60))


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """One to three edits of `valid`: truncate, flip a bit, overwrite, insert or delete a span."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 3))):
        n = len(data)
        op = draw(st.sampled_from(["truncate", "flip", "overwrite", "insert", "delete"]))
        i = draw(st.integers(0, max(n - 1, 0)))
        if op == "truncate":
            del data[i:]
        elif op == "flip" and n:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[i:i + len(chunk)] = chunk
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[i:i + draw(st.integers(1, 16))]
    return bytes(data)


# -- wire protocol ---------------------------------------------------------------------------------
HEADER = {"v": 1, "type": protocol.MessageType.TRAIN, "id": "a" * 32, "run": "fuzz", "round": 1}
VALID_RESULT = protocol.encode_result(HEADER, device="dev-0", metrics={"num-examples": 8, "train-loss": 0.5},
                                      tensors=list(initial_head().items()))
VALID_SPARSE = protocol.encode_result(
    HEADER, device="dev-0", metrics={"num-examples": 8},
    tensors=[("w0", protocol.SparseTensor(np.array([0, 5], np.uint32), np.array([0.5, -1.0], np.float32), (3, 4)))])


@FAST
@given(st.one_of(st.binary(max_size=512), mutated(VALID_RESULT), mutated(VALID_SPARSE)))
def test_protocol_decoder_raises_only_protocol_errors(payload: bytes) -> None:
    EXAMPLES["protocol.decode_result"] += 1
    try:
        frame = protocol.decode_result(payload)
    except ProtocolError as exc:
        assert str(exc) and "\n" not in str(exc)
        assert isinstance(exc, TinyFleetError)
        return
    assert frame.type == protocol.MessageType.RESULT


@FAST
@given(st.one_of(st.binary(max_size=256), mutated(protocol.presence_payload("dev-0", online=True, fleet="f"))))
def test_json_documents_raise_only_protocol_errors(payload: bytes) -> None:
    EXAMPLES["protocol.decode_json_document"] += 1
    try:
        doc = protocol.decode_json_document(payload, expected_type=protocol.MessageType.PRESENCE)
    except ProtocolError:
        return
    assert isinstance(doc, dict)


class _Server:
    """A Grid with one train request in flight to dev-0 (which stays silent): the fuzzer answers it."""

    def __init__(self) -> None:
        init_task_identity(1)
        self.grid = FleetGrid(InProcessTransport({"dev-0": lambda payload: None}),
                              ProtocolCodec({"local-steps": 2, "lr": 0.1}), run_id="fuzz")
        self.grid.get_node_ids()
        msg = Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in initial_head().items()}),
                                  "config": ConfigRecord({"server-round": 1})}),
                      node_id_for("dev-0"), MessageType.TRAIN)
        (self.mid,) = self.grid.push_messages([msg])

    def outcomes(self) -> int:
        phases = self.grid.ledger.round_summary(1)["phases"]
        train, disc = phases.get("train", {}), phases.get("discarded", {})
        return int(train.get("replies", 0) + train.get("failures", 0) + disc.get("replies", 0))


@pytest.fixture(scope="module")
def server() -> Any:
    s = _Server()
    yield s
    s.grid.transport.close()


def _reply_to(mid: str, payload: bytes) -> bytes:
    """`payload` re-targeted at request `mid`, so mutations reach the checks behind the id lookup."""
    return payload.replace(b"a" * 32, mid.encode())


@FAST
@given(data=st.data())
def test_server_survives_any_reply_and_counts_each_exactly_once(server: _Server, data: st.DataObject) -> None:
    """Every payload is a valid reply, a counted failure or a counted discard; nothing raises."""
    valid = _reply_to(server.mid, VALID_RESULT)
    payload = data.draw(st.one_of(st.binary(max_size=512), mutated(valid), st.just(valid)))
    EXAMPLES["grid.reply"] += 1
    before = server.outcomes()
    server.grid._on_payload("dev-0", payload)  # the transport thread's entry point
    assert server.outcomes() == before + 1
    server.grid.pull_messages([server.mid])  # free the slot for the next example


# -- .tflite inspector -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_bytes(tiny_cnn_tflite: Path) -> bytes:
    return tiny_cnn_tflite.read_bytes()


@FAST
@given(data=st.data())
def test_tflite_inspector_refuses_damage_with_a_model_file_error(model_bytes: bytes, data: st.DataObject) -> None:
    payload = data.draw(st.one_of(mutated(model_bytes), st.binary(max_size=256)))
    EXAMPLES["tflite.inspect_bytes"] += 1
    try:
        report = inspect_bytes(payload, source="fuzz.tflite")
    except ModelFileError as exc:
        msg = str(exc)
        assert msg.startswith("fuzz.tflite: ") and "\n" not in msg
        return
    assert report.flash_bytes == len(payload)  # a flip in weight bytes leaves a structurally valid model
    EXAMPLES["tflite.still-valid"] += 1


# -- registry inputs -------------------------------------------------------------------------------
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=4),
                    max_leaves=12)


@st.composite
def mutated_td(draw: st.DrawFn) -> Any:
    doc = td("fuzz-01", 262144, 1048576, ["scalar-signal"])
    if draw(st.booleans()):
        return draw(JSON)
    for _ in range(draw(st.integers(1, 3))):
        board = doc.get("tinyfleet:board")
        target = board if isinstance(board, dict) and board and draw(st.booleans()) else doc
        if not target:
            break
        key = draw(st.sampled_from(sorted(target)))
        if draw(st.booleans()):
            del target[key]
        else:
            target[key] = draw(JSON)
    return doc


@pytest.fixture(scope="module")
def store() -> Any:
    s = EmbeddedStore()
    yield s
    s.close()


@SLOW
@given(doc=mutated_td())
def test_thing_descriptions_fail_with_a_registry_error_and_write_nothing(store: EmbeddedStore, doc: Any) -> None:
    EXAMPLES["registry.td"] += 1
    before = len(store)
    try:
        parse_td(doc, source="fuzz.td.json")
        add_device(store, doc, source="fuzz.td.json")
    except RegistryError as exc:
        assert "fuzz.td.json" in str(exc) and "\n" not in str(exc).strip().split("\n")[0]
        assert len(store) == before
        return
    EXAMPLES["registry.td.accepted"] += 1


def _jsonld() -> bytes:
    g = Graph()
    g.parse(data=TINYML_SCHEMA_KG, format="turtle")
    return g.serialize(format="json-ld").encode()


VALID_TTL = TINYML_SCHEMA_KG.encode()
VALID_JSONLD = _jsonld()


@SLOW
@given(data=st.data())
def test_turtle_and_jsonld_imports_are_all_or_nothing(store: EmbeddedStore, tmp_path_factory: pytest.TempPathFactory,
                                                      data: st.DataObject) -> None:
    suffix, valid = data.draw(st.sampled_from([(".ttl", VALID_TTL), (".jsonld", VALID_JSONLD)]))
    payload = data.draw(mutated(valid))
    path = tmp_path_factory.mktemp("fuzzrdf") / f"input{suffix}"
    path.write_bytes(payload)
    EXAMPLES[f"registry.import{suffix}"] += 1
    before = len(store)
    try:
        import_file(store, path)
    except RegistryError as exc:
        assert str(path) in str(exc)
        assert len(store) == before
        return
    EXAMPLES[f"registry.import{suffix}.accepted"] += 1


def test_zz_report_counts() -> None:
    """Print how many examples each property ran (docs/reliability.md records a run of this)."""
    print("\nfuzz examples:", json.dumps(dict(sorted(EXAMPLES.items()))))
    assert EXAMPLES["protocol.decode_result"] > 0 or not EXAMPLES  # file run alone: all present


@pytest.mark.parametrize("line", [
    '<http://example.org/a\x0eb> <http://schema.org/name> "x" .',
    '<http://example.org/a> <http://schema.org/url> <http://example.org/o\x0e> .',
    '<http://example.org/a> <http://schema.org/name> "x"^^<http://example.org/dt\x0e> .',
    '<http://example.org/a\\u000eb> <http://schema.org/name> "x" .',
    '<http://example.org/a%zz> <http://schema.org/name> "x" .',
], ids=["subject", "object", "datatype", "escaped", "bad-percent"])
def test_a_control_character_in_an_iri_is_refused_naming_the_file(store: EmbeddedStore, tmp_path: Path,
                                                                 line: str) -> None:
    """Found by this file's fuzzer: rdflib parses the IRI, Oxigraph refused it with no file name (issue #12, 10a;
    the stray '%' by `make fuzz`)."""
    path = tmp_path / "control.ttl"
    path.write_text(TINYML_SCHEMA_KG + "\n" + line + "\n")
    before = len(store)
    with pytest.raises(RegistryError, match=r"control\.ttl: (datatype )?IRI '.*' is not an absolute IRI"):
        import_file(store, path)
    assert len(store) == before


def test_a_metric_integer_too_large_for_a_float_is_a_protocol_error() -> None:
    """A 400-digit JSON integer made `math.isfinite` raise OverflowError out of the decoder (issue #12)."""
    import struct

    hlen = struct.unpack_from("<I", VALID_RESULT, 0)[0]
    header = json.loads(VALID_RESULT[4:4 + hlen])
    header["metrics"]["train-loss"] = 10**400
    raw = json.dumps(header).encode()
    payload = struct.pack("<I", len(raw)) + raw + VALID_RESULT[4 + hlen:]
    with pytest.raises(ProtocolError, match="finite numbers"):
        protocol.decode_result(payload)

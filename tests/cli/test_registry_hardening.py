"""Crafted registry inputs (issue #18 review): a one-line error, the right exit code, nothing written.

Bad files exit 1 and bad options exit 2, each with exactly one `error:` line that names what and
where, and no traceback; the store is left as it was. The crafted .tflite files are built here with
the TFLite flatbuffer schema that ai-edge-litert ships (no TensorFlow), the published-style board is
the faithful copy of How-to-Manage-TinyML-at-Scale's Adafruit PyBadge with one figure changed.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import flatbuffers
import pytest
from ai_edge_litert import schema_py_generated as schema
from click.testing import Result

from firmware_models.arena_estimate import MAX_CALL_DEPTH
from firmware_models.exceptions import ModelFileError
from firmware_models.tflite_inspect import inspect_bytes
from registry.interop import import_file, prepare
from registry.namespaces import TF
from registry.store import open_store
from tests.support.published import LEGACY

Cli = Callable[..., Result]
PYBADGE = LEGACY / "adafruit_pybadge.ttl"
RAM_109_KB = "schema:value 109 ;"


def _one_error(r: Result, code: int, *fragments: str) -> str:
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stdout == ""
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr
    for f in fragments:
        assert f in errors[0], r.stderr
    return errors[0]


def _triples(store_dir: Path) -> int:
    with open_store(store_dir) as st:
        return len(st)


# -- 1: published memory figures -------------------------------------------------------------------
def _board(tmp_path: Path, ram: str) -> Path:
    text = PYBADGE.read_text(encoding="utf-8")
    assert text.count(RAM_109_KB) == 1
    out = tmp_path / "board.ttl"
    out.write_text(text.replace(RAM_109_KB, f"schema:value {ram} ;"), encoding="utf-8")
    return out


@pytest.mark.parametrize("ram, says", [("1e400", "is not a finite number"),
                                       ('"INF"^^xsd:double', "is not a finite number"),
                                       ('"NaN"^^xsd:double', "is not a finite number"),
                                       ("99999999999999999999999999999", "outside 0 .. 2**63 bytes"),
                                       ("9223372036854776", "outside 0 .. 2**63 bytes"),  # kB: just over 2**63 B
                                       ("-1", "outside 0 .. 2**63 bytes"),
                                       ('"lots"', "is not a number")])
def test_a_published_ram_figure_must_be_a_finite_sane_number(cli: Cli, tmp_path: Path, ram: str, says: str) -> None:
    board, store = _board(tmp_path, ram), tmp_path / "reg"
    for command in (["registry", "validate", str(board)], ["registry", "import", str(board), "--store", str(store)]):
        r = cli(*command)
        _one_error(r, 1, str(board), "nothing written")
        assert says in r.stderr and "memory figure" in r.stderr, r.stderr
    assert _triples(store) == 0


@pytest.mark.parametrize("value", ['"NaN"^^xsd:double', "1e400", '"-INF"^^xsd:double'])
def test_a_published_metric_value_must_be_finite(cli: Cli, tmp_path: Path, value: str) -> None:
    text, accuracy = (LEGACY / "tflite_models.ttl").read_text(encoding="utf-8"), "nnet:hasMetricValue 9.21e+01 ."
    assert text.count(accuracy) == 1
    models, store = tmp_path / "models.ttl", tmp_path / "reg"
    models.write_text(text.replace(accuracy, f"nnet:hasMetricValue {value} ."), encoding="utf-8")
    r = cli("registry", "import", str(models), "--store", str(store))
    _one_error(r, 1, str(models), "nothing written")
    assert "is not a finite number" in r.stderr, r.stderr
    assert _triples(store) == 0


def test_published_memory_figures_convert_exactly(tmp_path: Path) -> None:
    for ram, expected in (("9007199254740993", 9_007_199_254_740_993_000),  # 2**53 + 1 kB: a float drops the 1
                          ("0.5", 500), ("109", 109_000), ('"9223372036854775.807"^^xsd:decimal', 2**63 - 1)):
        g = prepare(_board(tmp_path, ram))
        assert [int(o) for o in g.objects(None, TF.ramBytes)] == [expected], ram


# -- 2: crafted .tflite files ----------------------------------------------------------------------
def _tensor(name: str) -> schema.TensorT:
    t = schema.TensorT()
    t.shape, t.type, t.buffer, t.name = [1, 4], schema.TensorType.INT8, 0, name
    return t


def _code(op: int) -> schema.OperatorCodeT:
    c = schema.OperatorCodeT()
    c.builtinCode = c.deprecatedBuiltinCode = op
    return c


def _subgraph(calls: list[int], *, output: int = 1) -> schema.SubGraphT:
    """x, y -> one ADD (outputs `output`), then one IF per entry of `calls` (then and else: that subgraph)."""
    sg = schema.SubGraphT()
    sg.tensors, sg.inputs, sg.outputs = [_tensor("x"), _tensor("y")], [0], [1]
    add = schema.OperatorT()
    add.opcodeIndex, add.inputs, add.outputs = 0, [0, 0], [output]
    sg.operators = [add]
    for sub in calls:
        cond = schema.OperatorT()
        cond.opcodeIndex, cond.inputs, cond.outputs = 1, [0, 0], [1]
        cond.builtinOptionsType = schema.BuiltinOptions.IfOptions
        cond.builtinOptions = schema.IfOptionsT()
        cond.builtinOptions.thenSubgraphIndex = cond.builtinOptions.elseSubgraphIndex = sub
        sg.operators.append(cond)
    return sg


def _model(*subgraphs: schema.SubGraphT) -> bytes:
    m = schema.ModelT()
    m.version, m.buffers = 3, [schema.BufferT()]
    m.operatorCodes = [_code(schema.BuiltinOperator.ADD), _code(schema.BuiltinOperator.IF)]
    m.subgraphs = list(subgraphs)
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


CRAFTED = {
    "output-out-of-range": (_model(_subgraph([1]), _subgraph([], output=7)),
                            "subgraph 1 operator 0 output refers to missing tensor 7"),
    "if-calls-its-own-subgraph": (_model(_subgraph([0])), "subgraph 0 calls subgraph 0"),
    "if-calls-its-caller": (_model(_subgraph([1]), _subgraph([0])), "subgraph 1 calls subgraph 0"),
    "if-calls-a-missing-subgraph": (_model(_subgraph([5])), "calls missing subgraph 5"),
}


def test_the_crafted_model_builder_builds_models_the_inspector_accepts() -> None:
    report = inspect_bytes(_model(_subgraph([1]), _subgraph([])), source="ok.tflite")
    assert report.op_counts == {"ADD": 2, "IF": 1} and report.arena_estimate_bytes


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_models_fail_with_one_error_naming_the_file(cli: Cli, tmp_path: Path, case: str) -> None:
    data, says = CRAFTED[case]
    path, store = tmp_path / f"{case}.tflite", tmp_path / "reg"
    path.write_bytes(data)
    _one_error(cli("registry", "validate", str(path)), 1, str(path), says)
    _one_error(cli("registry", "add-model", str(path), "--store", str(store)), 1, str(path), says)
    _one_error(cli("models", "inspect", str(path)), 1, str(path), says)
    assert _triples(store) == 0


def test_subgraph_calls_too_deep_or_too_many_are_refused() -> None:
    chain = [_subgraph([i + 1]) for i in range(MAX_CALL_DEPTH + 1)] + [_subgraph([])]
    with pytest.raises(ModelFileError, match=rf"^deep.tflite: subgraph calls nest deeper than {MAX_CALL_DEPTH}$"):
        inspect_bytes(_model(*chain), source="deep.tflite")
    # 25 subgraphs, each calling the next twice: 2**25 calls unrolled, each one planned by the estimate
    diamond = [_subgraph([i + 1, i + 1]) for i in range(24)] + [_subgraph([])]
    with pytest.raises(ModelFileError, match=r"^wide.tflite: subgraph calls unroll to more than 1,000,000 operators"):
        inspect_bytes(_model(*diamond), source="wide.tflite")


# -- 3: JSON-LD contexts that rdflib would fetch ---------------------------------------------------
@pytest.fixture
def context_server() -> Iterator[tuple[str, list[str]]]:
    """A JSON-LD context on 127.0.0.1 that records every request made to it."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            hits.append(self.path)
            body = json.dumps({"@context": {"s": "https://schema.org/"}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/ld+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/ctx.jsonld", hits
    server.shutdown()
    server.server_close()
    thread.join()


def _fetching_documents(url: str, local: Path) -> dict[str, object]:
    thing = {"@id": "https://ex.org/thing-1", "s:name": "thing"}
    return {
        "import": {"@context": {"@import": url, "x": "https://ex.org/x#"}, **thing},
        "import-in-list": {"@context": [{"x": "https://ex.org/x#"}, {"@import": url}], **thing},
        "import-from-file": {"@context": {"@import": local.as_uri()}, **thing},
        "scoped-import": {"@context": {"s": "https://schema.org/",
                                       "s:knows": {"@id": "https://schema.org/knows", "@context": {"@import": url}}},
                          **thing, "s:knows": {"@id": "https://ex.org/thing-2", "s:name": "other"}},
        "nested-remote": {"@context": {"s": "https://schema.org/"}, **thing,
                          "s:knows": {"@context": url, "@id": "https://ex.org/thing-2"}},
        "remote": {"@context": url, **thing},
    }


def test_jsonld_contexts_are_never_fetched(cli: Cli, tmp_path: Path, context_server: tuple[str, list[str]]) -> None:
    url, hits = context_server
    local = tmp_path / "local-context.jsonld"
    local.write_text(json.dumps({"@context": {"s": "https://schema.org/"}}), encoding="utf-8")
    store = tmp_path / "reg"
    for name, doc in _fetching_documents(url, local).items():
        path = tmp_path / f"{name}.jsonld"
        path.write_text(json.dumps(doc), encoding="utf-8")
        for command in (["registry", "validate", str(path)], ["registry", "import", str(path), "--store", str(store)]):
            line = _one_error(cli(*command), 1, str(path))
            assert "@context" in line and ("inline it" in line), line
        assert hits == [], name
    assert _triples(store) == 0
    inline = tmp_path / "inline.jsonld"  # the same document with its context inline imports
    inline.write_text(json.dumps({"@context": {"s": "https://schema.org/"}, "@id": "https://ex.org/thing-1",
                                  "s:name": "thing"}), encoding="utf-8")
    assert import_file(open_store(memory=True), inline) == 1


# -- 4, 5: options ---------------------------------------------------------------------------------
@pytest.fixture
def published_models(tmp_path: Path) -> Path:
    store = tmp_path / "reg"
    with open_store(store) as st:
        assert import_file(st, LEGACY / "tflite_models.ttl") > 0
    return store


def test_an_unknown_order_is_a_usage_error_listing_what_is_known(cli: Cli, published_models: Path) -> None:
    store = ["--store", str(published_models)]
    line = _one_error(cli("registry", "models", "--order-by", "nope", *store), 2, "--order-by 'nope'")
    assert "name, ram, flash, macs" in line and "accuracy" in line, line
    _one_error(cli("registry", "models", "--order-by", "nope", "--json", *store), 2, "--order-by 'nope'")
    ranked = cli("registry", "models", "--order-by", "accuracy", "--sensor", "microphone", "--json", *store)
    assert ranked.exit_code == 0, ranked.stderr
    assert json.loads(ranked.stdout)[0]["name"] == "Micro_Speech_Yes_No_3"
    nothing = cli("registry", "models", "--order-by", "accuracy", "--task", "no-such-task", "--json", *store)
    assert nothing.exit_code == 0 and json.loads(nothing.stdout) == []  # a known metric, no model left: no error


@pytest.mark.parametrize("args, option", [(["match", "--ram", "12zB"], "--ram"),
                                          (["match", "--flash", "-5kB"], "--flash"),
                                          (["models", "--ram", "lots"], "--ram"),
                                          (["models", "--flash", "1e3"], "--flash"),
                                          (["match", "--sensor", "Bad Kind"], "sensor kind")])
def test_unreadable_requirement_options_are_usage_errors(cli: Cli, tmp_path: Path, args: list[str],
                                                         option: str) -> None:
    _one_error(cli("registry", *args, "--store", str(tmp_path / "reg")), 2, option)

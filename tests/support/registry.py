"""Shared pieces of the registry tests: a real Oxigraph SPARQL server, TDs, a TinyML-schema style KG."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SHA_SMALL = "1" * 64
SHA_BIG = "2" * 64


def oxigraph_binary() -> str | None:
    """`oxigraph` from the venv (next to python) or PATH."""
    here = Path(sys.executable).with_name("oxigraph")
    return str(here) if here.exists() else shutil.which("oxigraph")


@dataclass
class OxigraphServer:
    url: str
    pid: int


def td(device_id: str, ram: int, flash: int | None, sensors: list[str], *, sha: str | None = None,
       mcu: str = "nRF52840") -> dict[str, Any]:
    """A TD shaped like devices.wire.thing_description's (the fields the registry reads)."""
    board: dict[str, Any] = {"tinyfleet:name": "test", "tinyfleet:mcu": mcu, "tinyfleet:ramBytes": ram}
    if flash is not None:
        board["tinyfleet:flashBytes"] = flash
    return {"@context": ["https://www.w3.org/2022/wot/td/v1.1", {"tinyfleet": "https://w3id.org/tinyfleet/ns#"}],
            "@type": ["Thing"], "id": f"urn:tinyfleet:device:{device_id}", "title": device_id,
            "securityDefinitions": {"nosec_sc": {"scheme": "nosec"}}, "security": ["nosec_sc"],
            "tinyfleet:board": board, "tinyfleet:sensors": sensors, "tinyfleet:modelSha256": sha,
            "properties": {"presence": {"forms": [{"href": "mqtt://127.0.0.1:1883"}]}}}


def report(sha: str, *, arena: int, flash: int) -> dict[str, Any]:
    """A minimal inspection dict (the keys of firmware_models.tflite_inspect.ModelReport.to_dict())."""
    return {"sha256": sha, "flash_bytes": flash, "arena_bytes": arena, "macs": 100, "params": 50,
            "ops": [{"index": 0, "op": "FULLY_CONNECTED", "inputs": [0, 1, 2], "outputs": [3], "macs": 100}],
            "inputs": [{"name": "x", "shape": [1, 4], "dtype": "int8", "scale": 0.5, "zero_point": -1}],
            "outputs": [{"name": "y", "shape": [1, 2], "dtype": "int8", "scale": 0.25, "zero_point": 0}]}


# Written in the style of github.com/Haoyu-R/How-to-Manage-TinyML-at-Scale (semantic_schema/*.ttl) and
# tinyml-schema-collab/tinyml-schema (semanticExample/*.ttl): kB figures in nested blank nodes.
TINYML_SCHEMA_KG = """
@prefix demo: <https://w3id.org/tinyml-schema/demo#> .
@prefix nnet: <https://w3id.org/tinyml-schema/neural-network-schema#> .
@prefix om: <http://www.ontology-of-units-of-measure.org/resource/om-2/> .
@prefix rdfs: <http://www.w3.org/2000/01/rdf-schema#> .
@prefix s3n: <http://w3id.org/s3n/> .
@prefix s3n_extend: <http://tinyml-schema.org/s3n_extend/> .
@prefix schema: <https://schema.org/> .
@prefix sosa_extend: <http://tinyml-schema.org/sosa_extend/> .
@prefix ssn: <http://www.w3.org/ns/ssn/> .
@prefix ssn_extend: <http://tinyml-schema.org/ssn_extend/> .
@prefix ssn-system: <http://www.w3.org/ns/ssn/systems/> .
@prefix td: <https://www.w3.org/2019/wot/td#> .

<http://tinyml-schema.org/neuralnetwork/kws-01> a nnet:NeuralNetwork ;
    nnet:hasCategory nnet:Classification ;
    schema:name "Micro_Speech_Yes_No" ;
    schema:description "a NN for speech commands recognition yes/no" ;
    schema:creator "Google" ;
    nnet:hasMultiplyAccumulateOps 3.36e+05 ;
    s3n:hasProcedureFeature [ ssn-system:inCondition [ a s3n:Memory ; rdfs:comment "RAM requirement."@en ;
                                                       schema:minValue "10"@en ; schema:unitCode om:kilobyte ] ] ,
                            [ ssn-system:inCondition [ a s3n_extend:Flash, s3n:Memory ;
                                                       rdfs:label "Flash requirement." ;
                                                       schema:minValue 18.712 ; schema:unitCode om:kilobyte ] ] ;
    ssn:hasInput <http://tinyml-schema.org/neuralnetwork/input_kws-01> .
<http://tinyml-schema.org/neuralnetwork/sensor_1_kws-01> a sosa_extend:Microphone, schema:Sensor ;
    ssn_extend:provideInput <http://tinyml-schema.org/neuralnetwork/input_kws-01> .

<http://tinyml-schema.org/tinyml-demo/nano33-kit> a s3n:SmartSensor ;
    td:title "Arduino-Nano-BLE-33-Tinyml-Kit_1"@en ;
    ssn:hasSubSystem [ a demo:Thermometer ] , [ a demo:Microphone ] , [ a demo:Camera ] ,
      [ a s3n:MicroController ;
        s3n:hasSystemCapability [
          ssn-system:hasSystemProperty [ a demo:Flash ; schema:unitCode om:kilobyte ; schema:value 1024 ] ;
          ssn-system:hasSystemProperty [ a demo:RAM ; schema:unitCode om:kilobyte ; schema:value 256 ] ] ] .

<http://tinyml-schema.org/tinyml-demo/tiny-board> a s3n:SmartSensor ;
    td:title "Tiny_Board_8kB"@en ;
    ssn:hasSubSystem [ a demo:Microphone ] ,
      [ a s3n:MicroController ;
        s3n:hasSystemCapability [
          ssn-system:hasSystemProperty [ a demo:Flash ; schema:unitCode om:kilobyte ; schema:value 64 ] ;
          ssn-system:hasSystemProperty [ a demo:RAM ; schema:unitCode om:kilobyte ; schema:value 8 ] ] ] .
"""

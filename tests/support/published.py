"""The faithful copies of the published TinyML knowledge graphs (tests/registry/published/).

`legacy_files()` are the How-to-Manage-TinyML-at-Scale shapes in the legacy namespace;
`seloc_files(dir)` writes the SeLoC-ML generation of the same graph: identical shapes under the
w3id namespaces (the only difference between the two publications), plus SeLoC-ML's camera board.
"""

from __future__ import annotations

from pathlib import Path

PUBLISHED = Path(__file__).resolve().parents[1] / "registry" / "published"
LEGACY = PUBLISHED / "legacy"
QUERIES = PUBLISHED / "queries"

# Legacy -> w3id, longest first (the SeLoC-ML graph uses exactly these namespaces).
W3ID = "https://w3id.org/tinyml-schema/neural-network-schema"
TO_W3ID = [("http://tinyml-schema.org/networkschema#", f"{W3ID}#"),
           ("http://tinyml-schema.org/s3n_extend/", f"{W3ID}/s3n_extend/"),
           ("http://tinyml-schema.org/sosa_extend/", f"{W3ID}/sosa_extend/"),
           ("http://tinyml-schema.org/ssn_extend/", f"{W3ID}/ssn_extend/"),
           ("http://tinyml-schema.org/neuralnetwork/", f"{W3ID}/neuralnetwork/"),
           ("http://tinyml-schema.org/tinyml-demo/", f"{W3ID}/tinyml-demo/")]

BOARD_FILES = ["arduino_nano_ble_33_tinyml_kit.ttl", "arduino_nano_ble_33_td.ttl", "syntiant_tinyml_board.ttl",
               "adafruit_pybadge.ttl", "adafruit_tflite_micro_kit.ttl", "ssi_web_td.ttl"]


def legacy_files() -> list[Path]:
    """Every legacy file: the ontology module, the models, then one file per board."""
    return [LEGACY / "s3n_core.ttl", LEGACY / "tflite_models.ttl"] + [LEGACY / b for b in BOARD_FILES]


def to_w3id(text: str) -> str:
    """The same Turtle/SPARQL text in the w3id (SeLoC-ML) namespaces."""
    for old, new in TO_W3ID:
        text = text.replace(old, new)
    return text


def seloc_files(directory: Path) -> list[Path]:
    """Write the SeLoC-ML generation of the fixture graph into `directory`; return the files."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for src in legacy_files():
        dst = directory / src.name
        dst.write_text(to_w3id(src.read_text(encoding="utf-8")), encoding="utf-8")
        out.append(dst)
    camera = directory / "npu_s7_realsense.ttl"
    camera.write_text(to_w3id((LEGACY / "adafruit_pybadge.ttl").read_text(encoding="utf-8"))
                      .replace("adafruit_pybadge-322-000-000-005", "npu_s7_realsense-322-000-000-007")
                      .replace("Adafruit-Pybadge_1", "NPU-S7-RealSense_1")
                      .replace("Adafruit Pybadge.", "Siemens S7 + NPU + RealSense Camera.")
                      .replace("sosa_extend:Accelerometer", "sosa_extend:Camera")
                      .replace("schema:value 385", "schema:value 1024000")
                      .replace("schema:value 109", "schema:value 1024000"), encoding="utf-8")
    out.append(camera)
    return out


def query(name: str, *, w3id: bool = False) -> str:
    """A published question (queries/<name>.rq), in the legacy or the w3id namespaces."""
    text = (QUERIES / f"{name}.rq").read_text(encoding="utf-8")
    return to_w3id(text) if w3id else text

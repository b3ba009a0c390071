"""Firmware projects from a registry match: `tinyfleet firmware generate` (SeLoC-ML's "recipes").

Given a model version and a board (a registered device) that the registry says can run it, write a
project for the board's family and record it in the registry with PROV-O lineage (model version
-> firmware project -> board):

* Arm Cortex-M boards (Arduino/PlatformIO layout): the model TFLite Micro runs (the backbone, or the
  whole int8 model of a backbone-free use case) as an aligned C array, a ``MicroMutableOpResolver``
  with exactly its operators, the TFLM arena measured for it plus a stated margin, the C learner
  sized for the head (``tf_config.h``), the protocol agent configured for the fleet, and a
  ``Makefile`` whose ``host-test`` checks learner + codec against golden vectors exported by the
  numpy reference and whose ``size`` cross-builds them for the Cortex-M4 (``build/size.json``);
* Linux boards (a Raspberry Pi): the same C sources plus the libmosquitto agent and its config.

Credentials never enter the tree: the firmware reads them at build time (Cortex-M) or run time
(Linux) from a separate file. TFLite Micro itself is named as the board toolchain's dependency
(``platformio.ini``); it is not on this machine's package indexes and is not linked here.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from devices.boards import BOARDS, Board
from devices.c import C_DIR
from devices.c.cortex_m4 import predicted_learner, weights_header
from devices.c.files import (
    HeadLayout,
    agent_capacities,
    codec_cases,
    config_header,
    data_tensors,
    frame_file_bytes,
    golden_codec,
    golden_learner,
    head_tensors,
)
from devices.learning.head import MLPHead
from devices.simulator import LearnerFactory
from devices.wire.thing_description import thing_description
from firmware_models.c_export import c_identifier, c_source_pair
from firmware_models.exceptions import TinyFleetError
from firmware_models.tflite_inspect import inspect_bytes
from firmware_models.usecases import get_use_case
from firmware_models.usecases.base import ARTIFACT_BACKBONE, ARTIFACT_CARD, ARTIFACT_HEAD, ARTIFACT_MODEL
from registry.lineage import record_firmware
from registry.questions import device_profile, devices_for_model, explain_model, model_profile, resolve
from registry.store import RegistryStore

TFLM_LIBRARY = "https://github.com/tensorflow/tflite-micro-arduino-examples"
ARENA_MARGIN_FRACTION = 0.10
ARENA_MARGIN_MIN = 1024
"""Arena margin: 10 % of the measured arena, at least 1 KiB (kernel scratch differs between TFLM builds)."""
GOLDEN_STEPS, GOLDEN_LR, GOLDEN_CLIP = 1000, 0.005, 10.0
"""Golden SGD run: lr 0.005, where float32 SGD is not chaotic (see `devices.c.files.golden_learner`)."""
C_SOURCES = ("tf_json", "tf_codec", "tf_learner", "tf_sha256", "tf_agent")
MCU_AGENT = {"TF_AGENT_MAX_SAMPLES": 16, "TF_AGENT_CACHE_ENTRIES": 2, "TF_AGENT_MAX_TASK_HEADER": 2048}
"""Agent capacities of a microcontroller: 16 local samples, the last 2 replies, 2 KiB task headers."""


class FirmwareError(TinyFleetError):
    """A firmware project cannot be generated (no match, unsupported board, wrong model folder)."""


@dataclass(frozen=True)
class Family:
    """How a board family's project is laid out and built."""

    name: str
    kind: str  # "cortex-m" or "linux"
    pio_platform: str = ""
    pio_board: str = ""
    net_include: str = "<Ethernet.h>"
    net_client: str = "EthernetClient"
    net_begin: str = "  static byte mac[] = {0x02, 0x74, 0x66, 0x00, 0x00, 0x01};\n  Ethernet.begin(mac);"


FAMILIES = {
    "nano33ble": Family("arduino-nrf52840", "cortex-m", "nordicnrf52", "nano33ble"),
    "stm32f429": Family("stm32f4", "cortex-m", "ststm32", "disco_f429zi"),
    "rpi4": Family("linux", "linux"),
}


@dataclass
class FirmwareProject:
    """What `generate` wrote and recorded."""

    out: Path
    project_id: str
    iri: str
    family: str
    model: str
    device: str
    arena_measured: int
    arena_margin: int
    ops: list[str]
    layout: HeadLayout
    learner_ram: int
    files: list[str] = field(default_factory=list)
    match: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"out": str(self.out), "project_id": self.project_id, "iri": self.iri, "family": self.family,
                "model": self.model, "device": self.device, "arena_bytes": self.arena_measured + self.arena_margin,
                "arena_measured_bytes": self.arena_measured, "arena_margin_bytes": self.arena_margin,
                "ops": self.ops, "head": list(self.layout.sizes), "learner_ram_bytes": self.learner_ram,
                "files": self.files, "match": self.match}


def board_family(profile: dict[str, Any]) -> tuple[Family, Board | None]:
    """The project family of a registered device, from its board title or MCU."""
    names = {str(profile.get(k) or "") for k in ("board", "mcu")}
    board = next((b for b in BOARDS.values() if b.title in names or b.name in names), None)
    if board is None:
        board = next((b for b in BOARDS.values() if b.mcu in names), None)
    if board is not None and board.name in FAMILIES:
        return FAMILIES[board.name], board
    core = board.cpu if board else str(profile.get("mcu") or "")
    cpu = core.lower()
    if "cortex-m" in cpu:
        return Family("cortex-m", "cortex-m", "CHANGE-ME", "CHANGE-ME"), board
    if "cortex-a" in cpu or "x86" in cpu:
        return FAMILIES["rpi4"], board
    what = profile.get("board") or profile.get("mcu") or profile.get("iri")
    raise FirmwareError(f"no firmware template for board {what} ({core or 'unknown core'}): tinyfleet generates "
                        "Arm Cortex-M (Arduino/PlatformIO) and Linux (libmosquitto) projects")


def _model_folder(models_dir: Path, name: str | None, sha: str) -> tuple[Path, Path]:
    """The built model folder and the file in it that is the registered model version."""
    candidates = [models_dir / name, models_dir] if name else [models_dir]
    for d in candidates:
        for artifact in (ARTIFACT_MODEL, ARTIFACT_BACKBONE):
            f = d / artifact
            if f.is_file() and hashlib.sha256(f.read_bytes()).hexdigest() == sha:
                return d, f
    raise FirmwareError(f"{models_dir}: no {ARTIFACT_MODEL} or {ARTIFACT_BACKBONE} with the registered model's "
                        f"sha256 {sha[:12]}... (pass --models with the folder `tinyfleet models build` wrote)")


def _match(store: RegistryStore, model_iri: Any, device_iri: Any, model: str, board: str,
           explain: bool) -> dict[str, Any]:
    """The registry's match row of (model, board); raises (with the reasons if `explain`) when it cannot run it."""
    for row in devices_for_model(store, model_iri):
        if str(row["iri"]) == str(device_iri):
            return row
    if not explain:
        raise FirmwareError(f"board {board} cannot run model {model} (add --explain for the reasons)")
    why = next((r.get("reasons", []) for r in explain_model(store, model_iri)["excluded"]
                if str(r["iri"]) == str(device_iri)), ["the registry does not list it as eligible"])
    raise FirmwareError(f"board {board} cannot run model {model}: {'; '.join(why)}")


def _arena(card: dict[str, Any], runs_backbone: bool) -> int:
    section = card.get("backbone" if runs_backbone else "model") or {}
    value = section.get("arena_bytes") if isinstance(section, dict) else None
    value = value if value is not None else (None if runs_backbone else card.get("arena_bytes"))
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise FirmwareError("the model card states no measured TFLM arena (rebuild with `tinyfleet models build`)")
    return value


def resolver_method(op: str) -> str:
    """TFLite builtin op -> MicroMutableOpResolver method (CONV_2D -> AddConv2D, PADV2 -> AddPadV2)."""
    special = {"PADV2": "PadV2", "ADD_N": "AddN"}
    if op in special:
        return "Add" + special[op]
    return "Add" + "".join(p if p[:1].isdigit() else p.capitalize() for p in op.split("_"))


def _c_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _fill(template: str, values: dict[str, Any]) -> str:
    text = (C_DIR / "templates" / template).read_text()
    for k, v in values.items():
        text = text.replace(f"@@{k}@@", str(v))
    if "@@" in text:
        raise FirmwareError(f"template {template}: unfilled placeholder near {text[text.index('@@'):][:40]!r}")
    return text


def generate(store: RegistryStore, *, model: str, board: str, models_dir: Path, out: Path, fleet: str | None = None,
             broker: str = "mqtt://localhost:1883", force: bool = False, seed: int = 0,
             explain: bool = False) -> FirmwareProject:
    """Write the firmware project for (`model`, `board`) into `out` and record its lineage.

    Raises `FirmwareError` when the registry says the board cannot run the model (with the reasons),
    when the board has no template, or when `models_dir` does not hold the registered model version.
    """
    from devices.link.address import parse_broker_url

    address = parse_broker_url(broker)
    model_iri = resolve(store, model, kind="model")
    device_iri = resolve(store, board, kind="device")
    match = _match(store, model_iri, device_iri, model, board, explain)
    profile = device_profile(store, device_iri)
    family, board_profile = board_family(profile)
    model_info = model_profile(store, model_iri)
    sha = str(model_info["sha256"] or str(model_iri).rsplit("/", 1)[-1])
    name = str(model_info["name"]) if model_info["name"] else None
    folder, _ = _model_folder(Path(models_dir), name, sha)
    card = json.loads((folder / ARTIFACT_CARD).read_text()) if (folder / ARTIFACT_CARD).is_file() else {}
    uc = get_use_case(str(card.get("task") or card.get("name") or name))
    head = MLPHead.from_npz(folder / ARTIFACT_HEAD, kind=uc.kind)
    layout = HeadLayout.of(head)
    runs_backbone = (folder / ARTIFACT_BACKBONE).is_file()
    tflm_model = (folder / (ARTIFACT_BACKBONE if runs_backbone else ARTIFACT_MODEL)).read_bytes()
    report = inspect_bytes(tflm_model, source=str(folder))
    ops = list(dict.fromkeys(o.op for o in report.ops))
    arena = _arena(card, runs_backbone)
    margin = int(math.ceil(max(ARENA_MARGIN_MIN, ARENA_MARGIN_FRACTION * arena) / 16) * 16)
    inp = report.inputs[0]
    sample_bytes = int(np.prod(inp.shape[1:])) * (1 if inp.dtype in ("int8", "uint8") else 4)
    predicted = predicted_learner(layout, sample_bytes)
    device_id = str(profile.get("id") or profile.get("title"))
    fleet_name = fleet or str(profile.get("fleet") or "default")
    project_id = f"{c_identifier(name or uc.name)}-{device_id}-{sha[:12]}".replace("_", "-")

    data = uc.devices("train", 1, samples_per_device=64, seed=seed)[0]  # golden vectors: real features
    learner = LearnerFactory(uc, folder, seed=seed)(0, data)
    feats = learner.features(data.x)
    ridge = family.kind == "linux"
    golden = golden_learner(head, feats, data.y, steps=GOLDEN_STEPS, lr=GOLDEN_LR, clip=GOLDEN_CLIP, seed=seed,
                            ridge_lambda=1e-2 if ridge else None)
    td = thing_description(device_id=device_id, fleet=fleet_name, board=board_profile or BOARDS["nano33ble"],
                           use_case=uc.name, host=address.host, port=address.port, tls=address.tls,
                           sensors=tuple(uc.sensors), authenticated=True, model_sha256=sha)
    files: dict[str, str | bytes] = {}
    agent = MCU_AGENT if family.kind == "cortex-m" else agent_capacities(layout, 256)
    files["src/tf_config.h"] = config_header(layout, sample_bytes=sample_bytes, ridge=ridge, agent=agent,
                                             comment=f"Model {name} ({sha[:12]}) for {device_id}.")
    for stem in C_SOURCES:
        for ext in (".c", ".h"):
            files[f"src/{stem}{ext}"] = (C_DIR / "src" / f"{stem}{ext}").read_bytes()
    files["test/host_test.c"] = (C_DIR / "tests" / "host_test.c").read_bytes()
    files["test/golden/learner.tfb"] = golden
    files["test/golden/codec.bin"] = golden_codec(codec_cases(seed, n_mutations=200))
    files[".gitignore"] = (C_DIR / "templates" / "gitignore").read_bytes()
    values = {"GENERATED": datetime.now(UTC).strftime("%Y-%m-%d"), "MODEL_NAME": name or uc.name,
              "DEVICE": device_id, "BOARD_TITLE": profile.get("board") or profile.get("mcu") or "?",
              "MODEL_SHA12": sha[:12], "MCU": profile.get("mcu") or "?", "FLEET": fleet_name}
    if family.kind == "cortex-m":
        ident = c_identifier(name or uc.name)
        header, source = c_source_pair(tflm_model, ident)
        files[f"src/{ident}_model_data.h"], files[f"src/{ident}_model_data.cc"] = header, source
        files["src/model_data.h"] = f'#include "{ident}_model_data.h"\n'
        files["src/tf_head_weights.h"] = weights_header(head)
        scale, zp = (inp.scale or 1.0), (inp.zero_point or 0)
        files["src/fleet_config.h"] = "\n".join([
            "/* Generated by tinyfleet: who this device is and where its fleet lives (no credentials here). */",
            "#ifndef FLEET_CONFIG_H", "#define FLEET_CONFIG_H", f"#define TF_DEVICE_ID {_c_string(device_id)}",
            f"#define TF_FLEET {_c_string(fleet_name)}",
            f"#define TF_BOARD {_c_string(board_profile.name if board_profile else device_id)}",
            f"#define TF_BROKER_HOST {_c_string(address.host)}", f"#define TF_BROKER_PORT {address.port}",
            f"#define TF_RAM_BYTES {int(match.get('ram_bytes') or 0)}",
            f"#define TF_FLASH_BYTES {int(match.get('flash_bytes') or 0)}",
            f"#define TF_MEMORY_BYTES {arena + margin + predicted['ram']}", "#define TF_TELEMETRY_MS 10000",
            f"#define TF_DEVICE_MAX_TASK_BYTES {2048 + 8 * layout.n_params}",
            f"#define TF_HAS_BACKBONE {int(runs_backbone)}", f"#define TF_INPUT_SCALE {float(scale):.9e}f",
            f"#define TF_INPUT_ZERO_POINT {int(zp)}",
            f"#define TF_THING_DESCRIPTION {_c_string(json.dumps(td, separators=(',', ':')))}", "#endif", ""])
        for f in ("startup.c", "mps2.ld", "size_main.c", "baseline_main.c"):
            files[f"mcu/{f}"] = (C_DIR / "mcu" / f).read_bytes()
        values.update({"PIO_ENV": family.name, "PIO_PLATFORM": family.pio_platform, "PIO_BOARD": family.pio_board,
                       "TFLM_LIB": TFLM_LIBRARY, "ARENA": arena + margin, "ARENA_MEASURED": arena,
                       "ARENA_MARGIN": margin, "N_OPS": len(ops), "MODEL_ARRAY": f"{ident}_model_data",
                       "RESOLVER_ADDS": "\n".join(f"  resolver.{resolver_method(o)}();" for o in ops),
                       "NET_INCLUDE": family.net_include, "NET_CLIENT": family.net_client,
                       "NET_BEGIN": family.net_begin})
        files["Makefile"] = _fill("Makefile.cortexm.in", values)
        files["platformio.ini"] = _fill("platformio.ini.in", values)
        files["src/main.cpp"] = _fill("main.cpp.in", values)
        files["tools/credentials_flags.py"] = (C_DIR / "templates" / "credentials_flags.py.in").read_bytes()
    else:
        files["agent/tf_agent_linux.c"] = (C_DIR / "agent" / "tf_agent_linux.c").read_bytes()
        files["Makefile"] = _fill("Makefile.linux.in", values)
        files["head.tfb"] = frame_file_bytes(head_tensors(head.get_weights()), what="head")
        files["data.tfb"] = frame_file_bytes(data_tensors(feats, data.y, head.kind), what="data")
        files["td.json"] = json.dumps(td, separators=(",", ":"))
        files["config.json"] = json.dumps({
            "device": device_id, "fleet": fleet_name, "broker": address.url, "credentials": "credentials.json",
            "td": "td.json", "head": "head.tfb", "data": "data.tfb", "kind": head.kind, "activation": "relu",
            "board": board_profile.name if board_profile else "", "ram-bytes": int(match.get("ram_bytes") or 0),
            "flash-bytes": int(match.get("flash_bytes") or 0), "memory-bytes": arena + predicted["ram"],
            "telemetry-s": 10, "seed": seed, "lr": learner.lr, "clip-norm": learner.clip_norm or 0.0,
            "eval-fraction": 0.2, "sensors": list(uc.sensors)}, indent=2) + "\n"
    manifest = {"schema": "tinyfleet.firmware-project/1", "project": project_id, "family": family.name,
                "model": {"iri": str(model_iri), "name": name, "sha256": sha, "tflm_model": ARTIFACT_BACKBONE
                          if runs_backbone else ARTIFACT_MODEL, "ops": ops},
                "device": {"iri": str(device_iri), "id": device_id, "board": profile.get("board"),
                           "mcu": profile.get("mcu"), "ram_bytes": match.get("ram_bytes"),
                           "flash_bytes": match.get("flash_bytes")},
                "fleet": fleet_name, "broker": address.url,
                "arena": {"measured_bytes": arena, "margin_bytes": margin, "allocated_bytes": arena + margin,
                          "margin_rule": "max(1 KiB, 10 %), rounded up to 16 bytes"},
                "learner": {"head": list(layout.sizes), "kind": layout.kind, "params": layout.n_params,
                            "sample_bytes": sample_bytes, "predicted": predicted},
                "golden": {"steps": GOLDEN_STEPS, "lr": GOLDEN_LR, "clip": GOLDEN_CLIP, "tolerance": 1e-5}}
    files["README.md"] = _readme(manifest, family)
    files["tinyfleet-project.json"] = json.dumps(manifest, indent=2) + "\n"
    _write_tree(Path(out), files, force=force)
    iri = record_firmware(store, model_iri, device_iri, project_id, family=family.name, arena_bytes=arena + margin,
                          learner_ram_bytes=predicted["ram"], generated=datetime.now(UTC),
                          title=f"{name} firmware for {device_id}")
    return FirmwareProject(Path(out), project_id, str(iri), family.name, str(model_iri), str(device_iri), arena,
                           margin, ops, layout, predicted["ram"], sorted(files), match)


def _write_tree(out: Path, files: dict[str, str | bytes], *, force: bool) -> None:
    """Write every file into a temporary folder next to `out`, then move it into place (all or nothing)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise FirmwareError(f"{out} exists and is not empty (pass --force to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for rel, content in files.items():
            p = tmp / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(content if isinstance(content, bytes) else content.encode())
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.rename(out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FirmwareError(f"{out}: cannot write the project ({exc.strerror or exc})") from None


def _readme(m: dict[str, Any], family: Family) -> str:
    model, dev, arena, learner = m["model"], m["device"], m["arena"], m["learner"]
    pred = learner["predicted"]
    lines = [f"# {model['name']} on {dev['id']} ({dev['board'] or dev['mcu']})", "",
             "Generated by `tinyfleet firmware generate` from a registry match: model version "
             f"`{model['sha256'][:12]}` "
             f"({model['iri']}) can run on device `{dev['id']}` ({dev['ram_bytes']} B RAM, {dev['flash_bytes']} B "
             f"flash). The registry records this project with PROV-O lineage (model version -> firmware project "
             f"`{m['project']}` -> board).", "",
             "## What is inside", "",
             f"* `{model['tflm_model']}` as an aligned C array (`src/*_model_data.cc`), run by TensorFlow Lite Micro "
             f"with a `MicroMutableOpResolver` of exactly its operators: {', '.join(model['ops'])}.",
             f"* TFLM arena: {arena['allocated_bytes']} B = {arena['measured_bytes']} B measured by tinyfleet "
             f"(smallest arena that allocates and invokes) + {arena['margin_bytes']} B margin "
             f"({arena['margin_rule']}).",
             "* The C learner (`src/tf_learner.c`, float32, no heap) for the head "
             f"{'-'.join(map(str, learner['head']))} "
             f"({learner['kind']}, {learner['params']} parameters), every buffer sized in `src/tf_config.h`. "
             f"Predicted learner RAM: {pred['ram']} B = head {pred['head_weights']} + error vectors "
             f"{pred['gradients']} + activations {pred['activations']} + one sample {pred['buffer']}.",
             f"* The protocol agent (`src/tf_agent.c`) for fleet `{m['fleet']}` on `{m['broker']}`: topics "
             f"`tinyfleet/v1/{m['fleet']}/{dev['id']}/{{td,presence,telemetry,task,result}}`, client id = user "
             "name = device id.",
             "* `test/golden/`: vectors exported by tinyfleet's numpy learner and Python frame decoder.", "",
             "## Build and check", "",
             "```sh", "make host-test   # learner + codec for this machine vs the golden vectors (gcc)"]
    if family.kind == "cortex-m":
        lines += ["make size        # Cortex-M4 build (arm-none-eabi-gcc) -> build/size.json",
                  f"pio run -e {family.name}   # the firmware (PlatformIO fetches the toolchain, TFLite Micro, "
                  "ArduinoMqttClient)", "```", "",
                  "## Credentials", "",
                  "Never in this tree. Enrol the device (`tinyfleet devices enroll "
                  f"{dev['id']} --fleet {m['fleet']} --json > credentials.json`, git-ignored) or point "
                  "`TINYFLEET_CREDENTIALS` at the file; `tools/credentials_flags.py` turns it into build flags.", "",
                  "## Network", "",
                  f"`src/main.cpp` uses an Arduino network `Client` ({family.net_client}); change the `net` object and "
                  "its `begin` call in `setup()` for your board's network (WiFiNINA, an Ethernet shield, ...). "
                  "Replace `read_labelled_sample` with the board's sensor code."]
    else:
        lines += ["make agent       # build/tf-agent on libmosquitto (apt-get install libmosquitto-dev)",
                  "make size        # build/size.json of the agent", "make run         # join the fleet", "```", "",
                  "## Credentials", "",
                  "Never in this tree: `config.json` names `credentials.json` (git-ignored), e.g. "
                  f"`tinyfleet devices enroll {dev['id']} --fleet {m['fleet']} --json > credentials.json`. "
                  "`data.tfb` holds example samples: replace it with the device's own (a tinyfleet frame file "
                  "with tensors x and y, docs/firmware.md)."]
    return "\n".join(lines) + "\n"

"""Describe a .tflite model (ours or third-party) in RDF and add it to the registry.

The description is written twice over, on purpose: once in the published TinyML-schema style
(`s3n:hasProcedureFeature` / `ssn-system:inCondition` memory conditions, `nnet:inputLayer` ...
layers, `ssn:hasInput`), so that queries written for that knowledge graph work on ours, and once
as byte-exact `tf:` shortcuts (`tf:ramRequiredBytes`, `tf:flashRequiredBytes`,
`tf:requiresSensorKind`) that matchmaking compares directly.

Identity is the sha256 of the .tflite bytes: the same file always gets the same IRI, and adding it
again replaces its description (a new card, new metrics) instead of duplicating it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rdflib import Graph, Literal, URIRef
from rdflib.namespace import RDF, RDFS, XSD

from registry.exceptions import RegistryInputError
from registry.namespaces import NNET, OM, S3N, SCHEMA, SSN, SSNS, TF, check_iri, mint_model, part
from registry.queries import load_query
from registry.store import RegistryStore
from registry.validation import validate

# TFLite builtin op -> nnet:LayerType individual of the TinyML-schema (others get a tf: layer type).
_LAYER_TYPES = {
    "FULLY_CONNECTED": NNET.FullyConnected, "LOGISTIC": NNET.Logistic, "RELU": NNET.Relu,
    "DEQUANTIZE": NNET.Dequantize, "QUANTIZE": NNET.Quantize, "SOFTMAX": NNET.Softmax,
    "DEPTHWISE_CONV_2D": NNET.DepthwiseConv2D, "RESHAPE": NNET.Reshape, "MAX_POOL_2D": NNET.MaxPool2D,
    "CONV_2D": NNET.Conv2D, "AVERAGE_POOL_2D": NNET.AveragePool2D,
    "RESIZE_NEAREST_NEIGHBOR": NNET.ResizeNearestNeighbor,
}
_QUANTIZATION = {"int8": NNET.Int8, "int16": NNET.Int16, "float16": NNET.Float16, "float32": NNET.Float32}
_ACTIVATIONS = {0: None, 1: "relu", 2: "relu_n1_to_1", 3: "relu6", 4: "tanh", 5: "sign_bit", 6: "sigmoid"}


def _shape(shape: Any) -> Literal:
    return Literal(json.dumps([int(s) for s in (shape or [])], separators=(",", ":")))


def _get(d: Mapping[str, Any] | Any, key: str, default: Any = None) -> Any:
    if isinstance(d, Mapping):
        return d.get(key, default)
    return getattr(d, key, default)


def layer_details(data: bytes) -> tuple[list[list[int]], dict[int, str]]:
    """Shapes of every tensor of subgraph 0 and the fused activation of each operator.

    Why here and not in the inspector's report: the registry describes every layer's input and
    output shapes (nnet:shapeIn/shapeOut), while the report lists only model inputs/outputs.
    """
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    sg = model.subgraphs[0]
    shapes = [[int(s) for s in (t.shape if t.shape is not None else [])] for t in (sg.tensors or [])]
    acts: dict[int, str] = {}
    for i, op in enumerate(sg.operators or []):
        fused = getattr(op.builtinOptions, "fusedActivationFunction", None) if op.builtinOptions is not None else None
        name = _ACTIVATIONS.get(int(fused)) if fused is not None else None
        if name:
            acts[i] = name
    return shapes, acts


def model_graph(report: Mapping[str, Any], card: Mapping[str, Any] | None = None, *,
                tensor_shapes: list[list[int]] | None = None, activations: Mapping[int, str] | None = None,
                name: str | None = None, allow_static_arena: bool = False) -> tuple[URIRef, Graph]:
    """The RDF description of one model version.

    Parameters
    ----------
    report : mapping
        `firmware_models.tflite_inspect.ModelReport.to_dict()` (or the same keys in a plain dict):
        sha256, flash_bytes, arena_bytes, macs, params, ops, inputs, outputs.
    card : mapping, optional
        Model card (firmware_models.card): name, task, kind, description, sensors, metrics,
        created, creator, license, data, version.
    tensor_shapes, activations : optional
        From `layer_details`, for per-layer shapes and fused activations.
    name : str, optional
        Name when the card has none (default: first 12 hex digits of the sha256).
    allow_static_arena : bool, default=False
        When TFLite Micro cannot run the model, use the report's static arena estimate as the RAM
        requirement (marked `tf:ramRequirementMethod "static-estimate"`, with TFLM's reason in
        `tf:tflmError`) instead of refusing the model.

    Returns
    -------
    (URIRef, Graph)
        The model's IRI and its description (IRIs only, no blank nodes).
    """
    card = card or {}
    sha = str(report.get("sha256") or "")
    m = mint_model(sha)
    arena = report.get("arena_bytes")
    if arena is None:
        arena = card.get("arena_bytes")
    method = "measured"
    why = report.get("arena_error")
    if arena is None:
        estimate = report.get("arena_estimate_bytes")
        if allow_static_arena and estimate:
            arena, method = estimate, "static-estimate"
        else:
            label = report.get("source") or f"model {sha[:12]}"
            hint = (f"; --allow-static-arena registers it with the static estimate ({estimate} B)" if estimate
                    else "; the registry needs it as the model's RAM requirement")
            raise RegistryInputError(f"{label}: {why or 'TFLite Micro arena not measured'}{hint}")
    g = Graph()
    g.add((m, RDF.type, NNET.NeuralNetwork))
    g.add((m, RDF.type, S3N.Algorithm))
    g.add((m, SCHEMA.name, Literal(str(card.get("name") or name or f"model-{sha[:12]}"))))
    g.add((m, SCHEMA.identifier, Literal(sha)))
    g.add((m, NNET.hasID, Literal(sha)))
    g.add((m, TF.sha256, Literal(sha)))
    g.add((m, SCHEMA.runtimePlatform, Literal("TFLite Micro")))
    g.add((m, SCHEMA.encodingFormat, Literal("application/vnd.tflite")))
    for key, prop in (("description", SCHEMA.description), ("version", SCHEMA.version),
                      ("creator", SCHEMA.creator), ("license", SCHEMA.license)):
        if card.get(key):
            g.add((m, prop, Literal(str(card[key]))))
    if card.get("created"):
        g.add((m, SCHEMA.dateCreated, Literal(str(card["created"]), datatype=XSD.dateTime)))
    task = card.get("task")
    if task:
        g.add((m, TF.task, Literal(str(task))))
    if card.get("kind"):
        g.add((m, SCHEMA.keywords, Literal(str(card["kind"]))))
    data = card.get("data") or card.get("training_data")
    if isinstance(data, Mapping):
        text = data.get("source") or data.get("generator") or data.get("name") or json.dumps(data, sort_keys=True)
        g.add((m, SCHEMA.isBasedOn, Literal(str(text)[:500])))
    elif data:
        g.add((m, SCHEMA.isBasedOn, Literal(str(data))))

    flash = int(report.get("flash_bytes") or 0)
    g.add((m, NNET.hasMultiplyAccumulateOps, Literal(int(report.get("macs") or 0))))
    g.add((m, TF.parameterCount, Literal(int(report.get("params") or 0))))
    g.add((m, TF.ramRequiredBytes, Literal(int(arena))))
    g.add((m, TF.ramRequirementMethod, Literal(method)))
    if why and method != "measured":
        g.add((m, TF.tflmError, Literal(str(why))))
    g.add((m, TF.flashRequiredBytes, Literal(flash)))
    learning = (card.get("ram") or {}).get("online_learning_bytes") if isinstance(card.get("ram"), Mapping) else None
    if learning is not None:
        g.add((m, TF.learningRamRequiredBytes, Literal(int(learning))))
    # Published style: one procedure feature per memory condition, stated in bytes.
    ram_comment = ("RAM requirement (TFLite Micro arena)." if method == "measured" else
                   "RAM requirement (static estimate of the TFLite Micro arena; TFLite Micro cannot run this model).")
    for kind, cls, value, comment in (("ram", TF.RAM, int(arena), ram_comment),
                                      ("flash", TF.Flash, flash, "Flash requirement (.tflite bytes).")):
        feature, condition = part(m, "feature", kind), part(m, "condition", kind)
        g.add((m, S3N.hasProcedureFeature, feature))
        g.add((feature, RDF.type, S3N.ProcedureFeature))
        g.add((feature, SSNS.inCondition, condition))
        g.add((condition, RDF.type, S3N.Memory))
        g.add((condition, RDF.type, cls))
        g.add((condition, SCHEMA.minValue, Literal(value)))
        g.add((condition, SCHEMA.unitCode, OM.byte))
        g.add((condition, RDFS.comment, Literal(comment, lang="en")))

    quant = {str(_get(t, "dtype")) for t in list(report.get("inputs") or []) + list(report.get("outputs") or [])}
    for q in sorted(quant):
        if q in _QUANTIZATION:
            g.add((m, NNET.hasQuantization, _QUANTIZATION[q]))

    sensors = [str(s) for s in (card.get("sensors") or [])]
    for s in sensors:
        g.add((m, TF.requiresSensorKind, Literal(s)))
    for direction, items, prop, cls in (("input", report.get("inputs") or [], SSN.hasInput, NNET.NetworkInput),
                                        ("output", report.get("outputs") or [], SSN.hasOutput, NNET.NetworkOutput)):
        for i, t in enumerate(items):
            node = part(m, direction, i)
            g.add((m, prop, node))
            g.add((node, RDF.type, cls))
            g.add((node, SCHEMA.name, Literal(str(_get(t, "name") or f"{direction}{i}"))))
            g.add((node, TF.shape, _shape(_get(t, "shape"))))
            g.add((node, TF.dtype, Literal(str(_get(t, "dtype")))))
            scale, zp = _get(t, "scale"), _get(t, "zero_point")
            quantization = _get(t, "quantization")
            if scale is None and isinstance(quantization, Mapping):
                scale, zp = quantization.get("scale"), quantization.get("zero_point")
            if scale is not None:
                g.add((node, TF.scale, Literal(float(scale))))
                g.add((node, TF.zeroPoint, Literal(int(zp or 0))))
            if direction == "input":
                for s in sensors:
                    g.add((node, TF.sensorKind, Literal(s)))

    ops = list(report.get("ops") or [])
    for pos, op in enumerate(ops):
        layer = part(m, "layer", pos)
        prop = NNET.inputLayer if pos == 0 else NNET.outputLayer if pos == len(ops) - 1 else NNET.middleLayer
        g.add((m, prop, layer))
        g.add((layer, RDF.type, NNET.Layer))
        opname = str(_get(op, "op"))
        g.add((layer, NNET.hasIndex, Literal(int(_get(op, "index", pos)))))
        g.add((layer, TF.opName, Literal(opname)))
        g.add((layer, NNET.hasLayerType, _LAYER_TYPES.get(opname, TF[f"layer-{opname.replace(':', '-')}"])))
        g.add((layer, TF.multiplyAccumulateOps, Literal(int(_get(op, "macs") or 0))))
        if activations and int(_get(op, "index", pos)) in activations:
            g.add((layer, TF.activation, Literal(activations[int(_get(op, "index", pos))])))
        if tensor_shapes is not None:
            ins = [i for i in (_get(op, "inputs") or []) if 0 <= int(i) < len(tensor_shapes)]
            outs = [i for i in (_get(op, "outputs") or []) if 0 <= int(i) < len(tensor_shapes)]
            if ins:
                g.add((layer, NNET.shapeIn, _shape(tensor_shapes[int(ins[0])])))
            if outs:
                g.add((layer, NNET.shapeOut, _shape(tensor_shapes[int(outs[0])])))

    for name_, score, precision in _metrics(card.get("metrics")):
        node = part(m, "metric", f"{precision or 'any'}-{name_}")
        g.add((m, TF.hasMetric, node))
        g.add((node, RDF.type, TF.Metric))
        g.add((node, SCHEMA.name, Literal(name_)))
        g.add((node, SCHEMA.value, Literal(float(score))))
        if precision:
            g.add((node, TF.precision, Literal(precision)))
    for link_key in ("url", "citation", "code_repository"):
        if card.get(link_key):
            prop = SCHEMA.url if link_key == "url" else SCHEMA.citation
            g.add((m, prop, check_iri(str(card[link_key]), what=link_key)))
    return m, g


def _metrics(metrics: Any) -> list[tuple[str, float, str | None]]:
    """Flatten a card's metrics ({"int8": {"mse": 0.1}} or {"accuracy": 0.9}) to (name, value, precision)."""
    out: list[tuple[str, float, str | None]] = []
    if not isinstance(metrics, Mapping):
        return out
    for k, v in metrics.items():
        if isinstance(v, Mapping):
            for name_, value in v.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    out.append((str(name_), float(value), str(k)))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append((str(k), float(v), None))
    return out


def read_card(path: Path) -> dict[str, Any]:
    """Read a model card; one-line errors for a missing or malformed file."""
    try:
        card = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegistryInputError(f"{path}: card not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RegistryInputError(f"{path}: card is not valid JSON ({exc})") from None
    if not isinstance(card, dict):
        raise RegistryInputError(f"{path}: card must be a JSON object")
    return card


def describe_model_file(path: Path, card: Mapping[str, Any] | None = None, *,
                        allow_static_arena: bool = False) -> tuple[URIRef, Graph]:
    """Inspect a .tflite file (TFLM arena measured) and build its description."""
    from firmware_models.exceptions import ModelFileError
    from firmware_models.tflite_inspect import inspect_tflite

    path = Path(path)
    try:
        report = inspect_tflite(path, measure_arena=True)
    except ModelFileError as exc:
        raise RegistryInputError(str(exc)) from None
    d = report.to_dict()
    if card and card.get("sha256") and card["sha256"] != d["sha256"]:
        raise RegistryInputError(f"{path}: the card describes another file (card sha256 {str(card['sha256'])[:12]}..., "
                                 f"file {d['sha256'][:12]}...)")
    shapes, acts = layer_details(path.read_bytes())
    return model_graph(d, card, tensor_shapes=shapes, activations=acts, name=path.stem,
                       allow_static_arena=allow_static_arena)


def add_model(store: RegistryStore, path: Path | str, card: Path | str | Mapping[str, Any] | None = None, *,
              allow_static_arena: bool = False) -> URIRef:
    """Inspect, describe, validate and add (or replace) one model version; all or nothing.

    The same bytes added under another name (two published names for one file) keep every name:
    the first stays `schema:name`, the others become `schema:alternateName`, and each resolves.
    Returns the model's IRI.
    """
    card_dict = read_card(Path(card)) if isinstance(card, (str, Path)) else (dict(card) if card else None)
    iri, g = describe_model_file(Path(path), card_dict, allow_static_arena=allow_static_arena)
    keep_names(store, iri, g)
    validate(g, source=str(path))
    store.write(g, replace_owners=[iri])
    return iri


def keep_names(store: RegistryStore, iri: URIRef, g: Graph) -> None:
    """Carry the names the model already has in `store` into its new description `g` (aliases)."""
    old = [str(r["name"]) for r in store.select(load_query("model_names"), {"m": iri})]
    if not old:
        return
    new = [str(n) for n in g.objects(iri, SCHEMA.name)]
    primary = old[0]
    g.remove((iri, SCHEMA.name, None))
    g.add((iri, SCHEMA.name, Literal(primary)))
    for n in dict.fromkeys(old[1:] + new):
        if n != primary:
            g.add((iri, SCHEMA.alternateName, Literal(n)))


def add_model_report(store: RegistryStore, report: Mapping[str, Any], card: Mapping[str, Any] | None = None) -> URIRef:
    """Add a model from an inspection dict (no file at hand, e.g. a model reported by a device)."""
    iri, g = model_graph(report, card)
    keep_names(store, iri, g)
    validate(g, source=f"model {report.get('sha256', '?')}")
    store.write(g, replace_owners=[iri])
    return iri

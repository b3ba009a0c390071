"""Read any .tflite flatbuffer and say what a microcontroller would have to run.

The report lists the operators in execution order, tensor shapes and dtypes, the affine
quantization of inputs and outputs, the parameter count, the multiply-accumulate count (MACs),
the flash cost (file size), the TFLite Micro arena (measured by `firmware_models.arena`), a static
arena estimate that needs no TFLM (`firmware_models.arena_estimate`) and the sha256. Parsing uses
`ai_edge_litert.schema_py_generated` only, never TensorFlow, because the registry and the device
side import this module.

MACs, per operator (shapes in TFLite's NHWC order, batch included; one MAC = one multiply + add):

- ``CONV_2D``: ``prod(output_shape) * K_h * K_w * C_in_per_filter`` where the filter tensor is
  ``[C_out, K_h, K_w, C_in_per_filter]``. Each output element is a dot product over the receptive
  field of all (grouped) input channels.
- ``DEPTHWISE_CONV_2D``: ``prod(output_shape) * K_h * K_w`` (filter ``[1, K_h, K_w, C_out]``).
  Each output element sees one input channel only.
- ``FULLY_CONNECTED``: ``prod(output_shape) * N_in`` (weights ``[N_out, N_in]``).
- ``TRANSPOSE_CONV``: ``prod(input_shape) * K_h * K_w * C_out`` (filter ``[C_out, K_h, K_w, C_in]``):
  every input element is scattered into a K_h x K_w x C_out patch.
- ``BATCH_MATMUL``: ``prod(output_shape) * K`` with K the contracted dimension.
- Every other operator counts 0 MACs (element-wise work, pooling and activations are not MACs).
Bias additions are not counted, following the usual convention (and TFLM's own profiler).
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from firmware_models.exceptions import ModelFileError

TFLITE_IDENTIFIER = b"TFL3"

# Operators whose second (and third) inputs are learned parameters when they are constant.
_WEIGHT_OPS = frozenset({
    "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_3D",
    "BATCH_MATMUL", "UNIDIRECTIONAL_SEQUENCE_LSTM", "SVDF", "EMBEDDING_LOOKUP",
})


@dataclass
class TensorReport:
    """One tensor as the interpreter sees it.

    Attributes
    ----------
    name : str
        Tensor name from the converter (useful for matching Keras layers).
    shape : list of int
        Static shape (batch axis included).
    dtype : str
        numpy dtype name ("int8", "float32", ...).
    scale, zero_point : float or None, int or None
        Per-tensor affine quantization (real = scale * (q - zero_point)); None when unquantized.
        Per-channel tensors report their first channel here; `n_scales` says how many exist.
    """

    index: int
    name: str
    shape: list[int]
    dtype: str
    scale: float | None = None
    zero_point: int | None = None
    n_scales: int = 0


@dataclass
class OpReport:
    """One operator in execution order."""

    index: int
    op: str
    inputs: list[int]
    outputs: list[int]
    macs: int


@dataclass
class ModelReport:
    """Everything `inspect_tflite` finds out about a model; `to_dict()` is the `--json` form.

    `arena_bytes` is None when it was not measured (``measure_arena=False``) or when TFLite Micro
    cannot run the model; `arena_error` then says why (TFLM's own words). `arena_estimate_bytes`
    is the static estimate (greedy plan of tensor lifetimes + TFLM bookkeeping), always present;
    `arena_estimate` holds its parts.
    """

    source: str
    sha256: str
    flash_bytes: int
    params: int
    macs: int
    ops: list[OpReport]
    inputs: list[TensorReport]
    outputs: list[TensorReport]
    subgraphs: int
    n_tensors: int
    constant_bytes: int
    schema_version: int
    description: str
    arena_bytes: int | None = None
    arena_reported_bytes: int | None = None
    arena_probes: int = 0
    arena_error: str | None = None
    op_counts: dict[str, int] = field(default_factory=dict)
    arena_estimate_bytes: int | None = None
    arena_estimate: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (ops as a list of dicts, in execution order)."""
        return asdict(self)


def read_model_bytes(path: str | Path) -> bytes:
    """Read a model file, refusing missing, empty and non-TFLite files with a one-line reason."""
    p = Path(path)
    if not p.exists():
        raise ModelFileError(f"{p}: model file not found")
    if not p.is_file():
        raise ModelFileError(f"{p}: not a regular file")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"{p}: cannot read ({exc.strerror})") from None
    check_tflite_bytes(data, str(p))
    return data


def check_tflite_bytes(data: bytes, source: str) -> None:
    """Raise ModelFileError unless `data` starts like a TFLite flatbuffer."""
    if not data:
        raise ModelFileError(f"{source}: empty file (0 bytes)")
    if len(data) < 8:
        raise ModelFileError(f"{source}: truncated ({len(data)} bytes, a TFLite header needs 8)")
    ident = data[4:8]
    if ident != TFLITE_IDENTIFIER:
        raise ModelFileError(f"{source}: not a TFLite flatbuffer (bad identifier {_printable(ident)!r})")


def _printable(b: bytes) -> str:
    return "".join(chr(c) if 32 <= c < 127 else f"\\x{c:02x}" for c in b)


def _op_names() -> dict[int, str]:
    from ai_edge_litert import schema_py_generated as schema

    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)}


def _dtype_names() -> dict[int, str]:
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_") and isinstance(v, int)}
    names.update({0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 5: "string", 6: "bool",
                  7: "int16", 9: "int8", 10: "float64"})
    return names


def _parse(data: bytes, source: str) -> Any:
    from ai_edge_litert import schema_py_generated as schema

    try:
        model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
        subgraphs = model.subgraphs or []
        # Touch every table we will use, so a truncated file fails here and not half-way.
        for sg in subgraphs:
            for t in sg.tensors or []:
                _ = t.shape, t.type, t.buffer
            for op in sg.operators or []:
                _ = op.opcodeIndex, op.inputs, op.outputs
    except (struct.error, IndexError, ValueError) as exc:  # flatbuffers reads past the end of a cut file
        detail = "data refers past the end of the file" if isinstance(exc, (struct.error, IndexError)) else str(exc)
        raise ModelFileError(f"{source}: truncated or corrupt TFLite flatbuffer ({len(data)} bytes; "
                             f"{detail.splitlines()[0] if detail else type(exc).__name__})") from None
    except Exception as exc:  # noqa: BLE001 - any other garbage the generated reader trips on
        raise ModelFileError(f"{source}: corrupt TFLite flatbuffer ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})") from None
    if not subgraphs:
        raise ModelFileError(f"{source}: TFLite model has no subgraph")
    return model


def _buffer_len(model: Any, buffer_index: int) -> int:
    buffers = model.buffers or []
    if buffer_index <= 0 or buffer_index >= len(buffers):
        return 0
    b = buffers[buffer_index]
    if b.data is not None and len(b.data):
        return int(len(b.data))
    return int(b.size or 0)  # models > 2 GB keep data outside the flatbuffer (offset/size)


def _tensor_report(model: Any, sg: Any, index: int, dtypes: dict[int, str], source: str) -> TensorReport:
    tensors = sg.tensors or []
    if not 0 <= index < len(tensors):
        raise ModelFileError(f"{source}: subgraph input/output refers to missing tensor {index} "
                             f"(the model has {len(tensors)})")
    t = tensors[index]
    name = t.name.decode("utf-8", "replace") if isinstance(t.name, bytes) else str(t.name or "")
    shape = [int(s) for s in (t.shape if t.shape is not None else [])]
    rep = TensorReport(index=index, name=name, shape=shape, dtype=dtypes.get(int(t.type), f"type{t.type}"))
    q = t.quantization
    if q is not None and q.scale is not None and len(q.scale):
        rep.scale = float(q.scale[0])
        rep.zero_point = int(q.zeroPoint[0]) if q.zeroPoint is not None and len(q.zeroPoint) else 0
        rep.n_scales = int(len(q.scale))
    return rep


def op_macs(op: str, input_shapes: list[list[int]], output_shapes: list[list[int]]) -> int:
    """MACs of one operator from its tensor shapes (formulas in the module docstring)."""
    if not output_shapes or not input_shapes:
        return 0
    out = output_shapes[0]
    n_out = math.prod(out) if out else 0
    if op == "CONV_2D" and len(input_shapes) > 1 and len(input_shapes[1]) == 4:
        _, kh, kw, cin = input_shapes[1]
        return int(n_out * kh * kw * cin)
    if op == "DEPTHWISE_CONV_2D" and len(input_shapes) > 1 and len(input_shapes[1]) == 4:
        _, kh, kw, _ = input_shapes[1]
        return int(n_out * kh * kw)
    if op == "FULLY_CONNECTED" and len(input_shapes) > 1 and len(input_shapes[1]) == 2:
        return int(n_out * input_shapes[1][1])
    if op == "TRANSPOSE_CONV" and len(input_shapes) > 2 and len(input_shapes[1]) == 4:
        cout, kh, kw, _ = input_shapes[1]
        return int(math.prod(input_shapes[2]) * kh * kw * cout)
    if op == "BATCH_MATMUL" and len(input_shapes) > 1 and input_shapes[0]:
        return int(n_out * input_shapes[0][-1])
    return 0


def _indices(values: Any) -> list[int]:
    return [int(v) for v in values] if values is not None else []


def inspect_bytes(data: bytes, *, source: str = "<bytes>") -> ModelReport:
    """Static report of a model held in memory (no arena measurement; see `inspect_tflite`)."""
    check_tflite_bytes(data, source)
    model = _parse(data, source)
    names, dtypes = _op_names(), _dtype_names()
    opcodes = model.operatorCodes or []
    ops: list[OpReport] = []
    op_counts: dict[str, int] = {}
    param_tensors: set[tuple[int, int]] = set()
    constant_bytes = 0
    for si, sg in enumerate(model.subgraphs):
        tensors = sg.tensors or []
        shapes = [[int(s) for s in (t.shape if t.shape is not None else [])] for t in tensors]
        for t in tensors:
            constant_bytes += _buffer_len(model, int(t.buffer))
        for oi, op in enumerate(sg.operators or []):
            code = opcodes[op.opcodeIndex] if op.opcodeIndex < len(opcodes) else None
            if code is None:
                raise ModelFileError(f"{source}: operator {oi} refers to missing opcode {op.opcodeIndex}")
            builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
            name = names.get(builtin, f"BUILTIN_{builtin}")
            if name == "CUSTOM":
                cc = code.customCode
                name = f"CUSTOM:{cc.decode() if isinstance(cc, bytes) else cc}"
            ins = [int(i) for i in (op.inputs if op.inputs is not None else [])]
            outs = [int(i) for i in (op.outputs if op.outputs is not None else [])]
            in_shapes = [shapes[i] if 0 <= i < len(shapes) else [] for i in ins]
            out_shapes = [shapes[i] if 0 <= i < len(shapes) else [] for i in outs]
            macs = op_macs(name, in_shapes, out_shapes)
            if si == 0:
                ops.append(OpReport(oi, name, ins, outs, macs))
            else:
                ops.append(OpReport(oi, f"{name}@subgraph{si}", ins, outs, macs))
            op_counts[name] = op_counts.get(name, 0) + 1
            if name in _WEIGHT_OPS:
                for i in ins[1:]:
                    if 0 <= i < len(tensors) and _buffer_len(model, int(tensors[i].buffer)) > 0:
                        param_tensors.add((si, i))
    params = sum(math.prod(model.subgraphs[si].tensors[i].shape) for si, i in param_tensors)
    main = model.subgraphs[0]
    from firmware_models.arena_estimate import estimate_model

    estimate = estimate_model(model, names, source=source)
    desc = model.description.decode("utf-8", "replace") if isinstance(model.description, bytes) else ""
    return ModelReport(
        source=source,
        sha256=hashlib.sha256(data).hexdigest(),
        flash_bytes=len(data),
        params=int(params),
        macs=int(sum(o.macs for o in ops)),
        ops=ops,
        inputs=[_tensor_report(model, main, int(i), dtypes, source) for i in _indices(main.inputs)],
        outputs=[_tensor_report(model, main, int(i), dtypes, source) for i in _indices(main.outputs)],
        subgraphs=len(model.subgraphs),
        n_tensors=sum(len(sg.tensors or []) for sg in model.subgraphs),
        constant_bytes=int(constant_bytes),
        schema_version=int(model.version),
        description=desc,
        op_counts=op_counts,
        arena_estimate_bytes=estimate.arena_bytes,
        arena_estimate=estimate.to_dict(),
    )


def inspect_tflite(path: str | Path, *, measure_arena: bool = True, timeout: float = 60.0) -> ModelReport:
    """Full report of a .tflite file, including the TFLM arena measured in subprocesses.

    Parameters
    ----------
    path : str or Path
        Any .tflite file (ours or third-party).
    measure_arena : bool, default=True
        Off for quick static reports; the measurement spawns ~5-12 short subprocesses.
    timeout : float, default=60.0
        Seconds allowed per arena probe subprocess.

    Raises
    ------
    ModelFileError
        Missing, empty, truncated or non-TFLite file (the message names the file).
    """
    data = read_model_bytes(path)
    report = inspect_bytes(data, source=str(path))
    if measure_arena:
        from firmware_models.arena import measure_arena as _measure

        result = _measure(Path(path), timeout=timeout)
        report.arena_bytes = result.arena_bytes
        report.arena_reported_bytes = result.reported_bytes
        report.arena_probes = result.probes
        report.arena_error = result.error
    return report


def shape_dtype_str(t: TensorReport) -> str:
    """Compact "int8[1,28,28,1] s=0.0039 zp=-128" for tables."""
    q = f" s={t.scale:.6g} zp={t.zero_point}" if t.scale is not None else ""
    return f"{t.dtype}[{','.join(str(s) for s in t.shape)}]{q}"


__all__ = ["ModelReport", "OpReport", "TensorReport", "inspect_bytes", "inspect_tflite", "op_macs",
           "read_model_bytes", "check_tflite_bytes", "shape_dtype_str"]

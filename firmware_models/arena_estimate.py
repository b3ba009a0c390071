"""A static TFLite Micro arena estimate: TFLM's greedy memory plan plus its bookkeeping, without TFLM.

Why a static estimate next to the measured arena (`firmware_models.arena`): the measurement needs
TFLite Micro to run the model, and some published models it refuses (hybrid uint8/TOCO-era models,
operators it lacks). The estimate still says roughly how much RAM such a model would need, and on
models TFLM runs it is a cross-check of the measurement.

The arena TFLM needs has three parts (micro_allocator.cc, recording_micro_allocator.cc):

1. **Head: the activation plan.** `plan_tensors` reproduces TFLM's `GreedyMemoryPlanner`
   (memory_planner/greedy_memory_planner.cc) over the lifetimes `AllocationInfoBuilder`
   (micro_allocation_info.cc) assigns: subgraph inputs and outputs live from scope 0, each operator
   opens a scope, an output is created in its operator's scope, a tensor lives until the last
   operator that reads it, subgraph outputs live to the end; constants (tensors with a buffer),
   variables and empty tensors are not planned; sizes are rounded up to 16 bytes; buffers are
   placed largest first into the first gap that is free for their whole lifetime. On 40 models
   (the 23 published How-to-Manage models, 16 single-operator models, ours) this equals the
   "Arena allocation head" TFLM reports to the byte, except one model with 72 buffers (+0.7 %).
2. **Tail: persistent bookkeeping**, estimated from the struct sizes TFLM records on a 64-bit host:
   24 B per `TfLiteEvalTensor`, 64 B per `NodeAndRegistration`, 64 B per persistent `TfLiteTensor`
   (subgraph inputs and outputs) plus 32 B of quantization data for a quantized one, each
   kernel's `OpData` (`OP_DATA_BYTES`), 8 B per output channel of a per-channel quantized
   convolution or fully connected layer (int32 multiplier and shift), and about 504 B + 19 B per
   operator for the interpreter, allocator and builtin options.
3. **Temporaries** that exist before the plan is committed and must fit in the head too: kernels'
   `Prepare` allocates temporary `TfLiteTensor`s (with per-channel zero points), and planning
   itself needs 32 B per tensor (`AllocationInfo`) and 40 B per planned buffer. The head must be
   the largest of plan and temporaries.

The constants of 2 and 3 were read off `print_allocations()` of the single-operator and published
models above, not of tinyfleet's own models, which are the held-out check (within 10 %, see
docs/models.md). The estimate is for the host build of TFLM that `firmware_models.arena` measures;
32-bit MCUs have smaller structs, so it is an upper bound there.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from firmware_models.exceptions import ModelFileError

ALIGNMENT = 16
"""TFLM's arena buffer alignment (MicroArenaBufferAlignment)."""

_DTYPE_BYTES = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 8: 8, 9: 1, 10: 8, 11: 16, 12: 8, 13: 4, 15: 1, 16: 2, 17: 1}
"""TfLiteTypeSizeOf by TFLite TensorType code (float32, float16, int32, uint8, int64, bool, int16, ...)."""

OP_DATA_BYTES = {
    "FULLY_CONNECTED": 72, "CONV_2D": 84, "DEPTHWISE_CONV_2D": 76, "TRANSPOSE_CONV": 84,
    "AVERAGE_POOL_2D": 48, "MAX_POOL_2D": 48, "SOFTMAX": 96, "ADD": 64, "SUB": 64, "MUL": 48,
    "PAD": 32, "QUANTIZE": 20, "DEQUANTIZE": 20, "LOGISTIC": 20, "TANH": 20,
}
"""Persistent kernel data per operator (bytes, before alignment); other operators count `DEFAULT_OP_DATA`."""
DEFAULT_OP_DATA = 24
PER_CHANNEL_BYTES = 8
PER_CHANNEL_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"})
MAX_CALL_DEPTH = 32
"""Deepest nesting of IF/WHILE/CALL_ONCE subgraph calls a model may have (each level is a stack frame)."""
MAX_UNROLLED_OPERATORS = 1_000_000
"""Most operators the plan may visit, counting a subgraph's operators once per call of it."""
EVAL_TENSOR_BYTES = 24
NODE_BYTES = 64
IO_TENSOR_BYTES = 64
IO_QUANT_BYTES = 32
FIXED_TAIL_BYTES = 504
PER_OP_TAIL_BYTES = 19
PLAN_INFO_BYTES = 32
PLAN_BUFFER_BYTES = 40
# Temporaries of a kernel's Prepare: (base bytes, bytes per output channel of its filter).
PREPARE_TEMP = {"FULLY_CONNECTED": (240, 4), "CONV_2D": (640, 12), "DEPTHWISE_CONV_2D": (640, 12),
                "TRANSPOSE_CONV": (640, 12)}
DEFAULT_PREPARE_TEMP = (160, 0)


@dataclass
class Buffer:
    """One planned tensor: bytes (aligned) and the allocation scopes it is alive in."""

    tensor: int
    size: int
    first: int
    last: int
    offset: int = -1


@dataclass
class ArenaEstimate:
    """The static estimate and its parts (bytes); `to_dict()` is the `--json` form."""

    arena_bytes: int
    planned_bytes: int
    persistent_bytes: int
    temporary_bytes: int
    planned_buffers: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _align(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def greedy_plan(buffers: list[Buffer]) -> int:
    """Place `buffers` as TFLM's GreedyMemoryPlanner does; set their offsets; return the peak bytes.

    Largest first (a stable sort, like TFLM's bubble sort), each into the lowest offset whose gap
    to the next buffer alive at the same time is big enough.
    """
    order = sorted(range(len(buffers)), key=lambda i: -buffers[i].size)
    placed: list[Buffer] = []
    for i in order:
        b = buffers[i]
        alive = sorted((p for p in placed if not (p.first > b.last or b.first > p.last)), key=lambda p: p.offset)
        offset = 0
        for p in alive:
            if p.offset - offset >= b.size:
                break
            offset = max(offset, p.offset + p.size)
        b.offset = offset
        placed.append(b)
    return max((b.offset + b.size for b in buffers), default=0)


def _has_data(model: Any, tensor: Any) -> bool:
    buffers = model.buffers or []
    if not 0 < tensor.buffer < len(buffers):
        return False
    buf = buffers[tensor.buffer]
    return bool((buf.data is not None and len(buf.data)) or (buf.size or 0))


def _tensor_bytes(tensor: Any) -> int:
    shape = [int(s) for s in (tensor.shape if tensor.shape is not None else [])]
    return math.prod(shape) * _DTYPE_BYTES.get(int(tensor.type), 4) if shape else _DTYPE_BYTES.get(int(tensor.type), 4)


def _io(sg: Any) -> list[int]:
    """Indices of a subgraph's inputs, then outputs."""
    return [int(t) for part in (sg.inputs, sg.outputs) if part is not None for t in part]


def subgraphs_called(op: Any, name: str) -> list[int]:
    opts = op.builtinOptions
    if opts is None:
        return []
    keys = {"IF": ("thenSubgraphIndex", "elseSubgraphIndex"), "WHILE": ("condSubgraphIndex", "bodySubgraphIndex"),
            "CALL_ONCE": ("initSubgraphIndex",)}.get(name, ())
    return [int(getattr(opts, k)) for k in keys if getattr(opts, k, None) is not None]


def _check_indices(model: Any, op_names: dict[int, str], source: str) -> list[list[int]]:
    """Every tensor and subgraph index in range; returns the subgraphs each subgraph calls."""
    subgraphs = model.subgraphs or []
    calls: list[list[int]] = []
    for si, sg in enumerate(subgraphs):
        n = len(sg.tensors or [])
        for t in _io(sg):
            if not 0 <= t < n:
                raise ModelFileError(f"{source}: subgraph {si} input/output refers to missing tensor {t} "
                                     f"(the subgraph has {n})")
        called: list[int] = []
        for oi, op in enumerate(sg.operators or []):
            for kind, indices, lowest in (("input", op.inputs, -1), ("output", op.outputs, 0)):  # -1: optional input
                for t in (int(i) for i in (indices if indices is not None else [])):
                    if not lowest <= t < n:
                        raise ModelFileError(f"{source}: subgraph {si} operator {oi} {kind} refers to missing "
                                             f"tensor {t} (the subgraph has {n})")
            for sub in subgraphs_called(op, op_names.get(op.opcodeIndex, "")):
                if not 0 <= sub < len(subgraphs):
                    raise ModelFileError(f"{source}: subgraph {si} operator {oi} calls missing subgraph {sub} "
                                         f"(the model has {len(subgraphs)})")
                called.append(sub)
        calls.append(called)
    return calls


def check_structure(model: Any, op_names: dict[int, str], source: str) -> None:
    """Raise ModelFileError unless every index is in range and subgraph calls form a small tree.

    Why: the plan walks the model as TFLM would, following IF/WHILE/CALL_ONCE into the subgraphs they
    call. A crafted file can point past a tensor list, call a subgraph from itself (TFLM would recurse
    forever), nest calls deeper than a stack, or make a diamond of calls whose unrolled walk is
    exponential; each is refused here, naming the file, before any of it is followed.
    `op_names` maps operator-code indices (not builtin codes) to names.
    """
    calls = _check_indices(model, op_names, source)
    subgraphs = model.subgraphs or []
    done: dict[int, tuple[int, int]] = {}  # subgraph -> (operators visited when it is called, call depth below it)

    def walk(si: int, path: tuple[int, ...]) -> tuple[int, int]:
        work, height = len(subgraphs[si].operators or []), 0
        for sub in calls[si]:
            if sub in path:
                raise ModelFileError(f"{source}: subgraph {si} calls subgraph {sub}, which is already running "
                                     f"(recursive control flow)")
            if len(path) >= MAX_CALL_DEPTH:
                raise ModelFileError(f"{source}: subgraph calls nest deeper than {MAX_CALL_DEPTH}")
            sub_work, sub_height = done[sub] if sub in done else walk(sub, (*path, sub))
            if len(path) + sub_height >= MAX_CALL_DEPTH:
                raise ModelFileError(f"{source}: subgraph calls nest deeper than {MAX_CALL_DEPTH}")
            work, height = work + sub_work, max(height, sub_height + 1)
            if work > MAX_UNROLLED_OPERATORS:
                raise ModelFileError(f"{source}: subgraph calls unroll to more than {MAX_UNROLLED_OPERATORS:,} "
                                     f"operators")
        done[si] = (work, height)
        return work, height

    walk(0, (0,))


def plan_tensors(model: Any, op_names: dict[int, str]) -> list[Buffer]:
    """Lifetimes of every tensor TFLM plans, in allocation scopes (micro_allocation_info.cc)."""
    first: dict[tuple[int, int], int] = {}
    last: dict[tuple[int, int], int] = {}
    scope = 0

    def created(key: tuple[int, int]) -> None:
        first[key] = scope
        last[key] = scope

    def mark(si: int) -> None:
        nonlocal scope
        sg = model.subgraphs[si]
        for t in _io(sg):
            created((si, t))
        for op in sg.operators or []:
            scope += 1
            outs = [int(t) for t in (op.outputs if op.outputs is not None else [])]
            for t in outs:
                created((si, t))
            for sub in subgraphs_called(op, op_names.get(op.opcodeIndex, "")):
                scope += 1
                mark(sub)  # check_structure: in range, acyclic, bounded depth and work
            for t in (op.inputs if op.inputs is not None else []):
                if int(t) >= 0:
                    last[(si, int(t))] = scope
            for t in outs:
                last[(si, t)] = scope
        for t in sg.outputs if sg.outputs is not None else []:
            last[(si, int(t))] = scope

    mark(0)
    out = []
    for (si, ti), f in sorted(first.items()):  # TFLM adds buffers in tensor order; ties keep that order
        tensor = model.subgraphs[si].tensors[ti]
        size = _tensor_bytes(tensor)
        if size == 0 or tensor.isVariable or _has_data(model, tensor):
            continue
        out.append(Buffer(ti, _align(size), f, last.get((si, ti), f)))
    return out


def _channels(sg: Any, op: Any) -> int:
    ins = op.inputs if op.inputs is not None else []
    if len(ins) < 2 or not 0 <= int(ins[1]) < len(sg.tensors or []):
        return 0
    q = sg.tensors[int(ins[1])].quantization
    return len(q.scale) if q is not None and q.scale is not None else 0


def estimate_model(model: Any, op_names_by_code: dict[int, str], *, source: str = "<model>") -> ArenaEstimate:
    """The static arena estimate of a parsed model (`schema_py_generated.ModelT`).

    `op_names_by_code` maps builtin operator codes to names (tflite_inspect's table). Raises
    ModelFileError naming `source` for a model whose indices or subgraph calls cannot be followed.
    """
    codes = model.operatorCodes or []
    index_names = {i: op_names_by_code.get(max(int(c.builtinCode), int(c.deprecatedBuiltinCode)), "")
                   for i, c in enumerate(codes)}
    check_structure(model, index_names, source)
    buffers = plan_tensors(model, index_names)
    planned = greedy_plan(buffers)
    n_tensors = sum(len(sg.tensors or []) for sg in model.subgraphs)
    persistent = FIXED_TAIL_BYTES + EVAL_TENSOR_BYTES * n_tensors
    prepare = 0
    for sg in model.subgraphs:
        for op in sg.operators or []:
            name = index_names.get(op.opcodeIndex, "")
            channels = _channels(sg, op) if name in PER_CHANNEL_OPS else 0
            persistent += NODE_BYTES + PER_OP_TAIL_BYTES + _align(OP_DATA_BYTES.get(name, DEFAULT_OP_DATA))
            if channels > 1:
                persistent += _align(PER_CHANNEL_BYTES * channels)
            base, per_channel = PREPARE_TEMP.get(name, DEFAULT_PREPARE_TEMP)
            prepare = max(prepare, base + per_channel * channels)
    main = model.subgraphs[0]
    for t in _io(main):
        q = main.tensors[t].quantization
        quantized = q is not None and q.scale is not None and len(q.scale) > 0
        persistent += IO_TENSOR_BYTES + (IO_QUANT_BYTES if quantized else 0)
    planning = PLAN_INFO_BYTES * n_tensors + 8 + PLAN_BUFFER_BYTES * len(buffers)
    temporary = _align(max(prepare, planning))
    head = max(planned, temporary)
    return ArenaEstimate(arena_bytes=_align(head + persistent), planned_bytes=planned,
                         persistent_bytes=_align(persistent), temporary_bytes=temporary, planned_buffers=len(buffers))


__all__ = ["ArenaEstimate", "Buffer", "check_structure", "estimate_model", "greedy_plan", "plan_tensors"]

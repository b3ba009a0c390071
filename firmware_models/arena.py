"""The smallest TFLite Micro tensor arena with which a model really allocates and invokes.

Why subprocesses: a too-small arena makes TFLM raise "failed to allocate tensors" the first time,
but repeated failing constructions in one process have segfaulted (shared notes, toolchain §3).
Every probe therefore runs in a fresh interpreter process (`python -m firmware_models.arena`),
and a crash counts as "does not fit".

Why search instead of reading the report: `print_allocations()` prints the arena actually used
after allocation, but temporary allocations during `Prepare` can need more (an MLP reported 2,048
bytes and needed 2,576). The reported total is only a lower bound. The method:

1. One subprocess with a generous arena (64 KiB + 10 x model size, doubled up to 64 MiB until it
   fits) allocates, invokes on zeros and prints its allocation report; its "Arena allocation total"
   is the lower bound L. When the generous arena fails, one probe with the 64 MiB maximum decides
   whether size is the problem at all: if TFLM refuses the model there too (a hybrid model, an
   operator it lacks), its own log lines are the reason reported, instead of "does not fit".
2. Probe L; if it fits, L is the answer. Otherwise grow an upper bound U = L + 256, + 512, ...
   until a probe fits, then binary-search (L, U] in steps of `granularity` (16 bytes, TFLM's
   buffer alignment). The result is the smallest multiple of 16 above L that allocates AND invokes.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

_TOTAL_RE = re.compile(r"Arena allocation total (\d+) bytes")
_HEAD_RE = re.compile(r"Arena allocation head (\d+) bytes")
# "tensorflow/lite/micro/kernels/conv_common.cc Hybrid models ..." / "....cc:516 false was not true."
_SOURCE_PREFIX = re.compile(r"^\S+\.(?:cc|c|h|cpp)(?::\d+)?\s+")
MAX_ARENA = 64 * 1024 * 1024
_REFUSED = "TFLite Micro cannot run the model: "
GRANULARITY = 16
PROBE_OK = 0
PROBE_TOO_SMALL = 3
PROBE_OTHER_ERROR = 4


@dataclass
class ProbeResult:
    """Outcome of one arena probe subprocess."""

    arena_size: int
    ok: bool
    returncode: int
    reported_total: int | None
    message: str
    reported_head: int | None = None
    """TFLM's non-persistent ("head") bytes: the activation plan, when a report was printed."""


@dataclass
class ArenaResult:
    """The measured minimum arena (None with `error` set when TFLM cannot run the model)."""

    arena_bytes: int | None
    reported_bytes: int | None
    probes: int
    error: str | None = None


def probe(model_path: Path, arena_size: int, *, report: bool = False, timeout: float = 60.0) -> ProbeResult:
    """Try `arena_size` in a fresh process: construct the TFLM interpreter, invoke once on zeros.

    A segfault, a timeout or any failure is "does not fit"; `message` holds the child's last line.
    """
    cmd = [sys.executable, "-m", "firmware_models.arena", str(model_path), str(int(arena_size))]
    if report:
        cmd.append("--report")
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return ProbeResult(arena_size, False, -1, None, f"probe timed out after {timeout:.0f} s")
    text = proc.stdout + proc.stderr
    m = _TOTAL_RE.search(text)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("probe:")]
    msg = lines[-1][len("probe:"):].strip() if lines else (f"signal {-proc.returncode}" if proc.returncode < 0 else "")
    reason = tflm_reason(text)
    if proc.returncode < 0:
        msg = f"TFLite Micro crashed (signal {-proc.returncode})" + (f": {reason}" if reason else "")
    elif proc.returncode != PROBE_OK and reason:
        msg = reason
    head = _HEAD_RE.search(text)
    return ProbeResult(arena_size, proc.returncode == PROBE_OK, proc.returncode,
                       int(m.group(1)) if m else None, msg, int(head.group(1)) if head else None)


def tflm_reason(log: str) -> str:
    """TFLite Micro's own error lines from a probe's output, on one line ('; '-separated).

    Source-file prefixes are dropped, duplicates and the allocation report removed, so the user
    reads e.g. "Hybrid models are not supported on TFLite Micro.; Node CONV_2D (number 2) failed
    to prepare with status 1".
    """
    out: list[str] = []
    for raw in log.splitlines():
        line = raw.strip()
        if not line or line.startswith(("probe:", "[RecordingMicroAllocator]")):
            continue
        line = _SOURCE_PREFIX.sub("", line)
        if line not in out:
            out.append(line)
    return "; ".join(out)


def _round_up(n: int, step: int = GRANULARITY) -> int:
    return ((n + step - 1) // step) * step


_MEASURED: dict[str, ArenaResult] = {}
"""Conclusive measurements of this process, by the model bytes' sha256 (at most `_MEASURED_MAX`)."""
_MEASURED_MAX = 256


def measure_arena(model_path: str | Path, *, timeout: float = 60.0) -> ArenaResult:
    """Smallest arena (bytes, multiple of 16) with which TFLM allocates and invokes the model.

    The answer depends only on the model's bytes and this TFLM build, so a process measures the same
    bytes once (re-adding a model, one file under two names): a figure, or TFLM's refusal, is kept; a
    crash or a timeout, which a busy machine can cause, is not.
    """
    path = Path(model_path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    known = _MEASURED.get(digest)
    if known is not None:
        return replace(known)
    result = _measure(path, timeout)
    conclusive = result.arena_bytes is not None or (
        result.error is not None and result.error.startswith(_REFUSED)
        and not any(w in result.error for w in ("timed out", "crashed")))
    if conclusive:
        if len(_MEASURED) >= _MEASURED_MAX:
            _MEASURED.clear()
        _MEASURED[digest] = replace(result)
    return result


def _measure(path: Path, timeout: float) -> ArenaResult:
    n_probes = 0
    size = _round_up(64 * 1024 + 10 * path.stat().st_size)
    first: ProbeResult | None = None
    checked_max = False
    while size <= MAX_ARENA:
        first = probe(path, size, report=True, timeout=timeout)
        n_probes += 1
        if first.ok:
            break
        if first.returncode not in (PROBE_TOO_SMALL, PROBE_OTHER_ERROR) and first.returncode >= 0:
            return ArenaResult(None, None, n_probes, f"{_REFUSED}{first.message}")
        if not checked_max and size < MAX_ARENA:
            # Is size the problem at all? TFLM reports "too small" and "cannot run" alike.
            top = probe(path, MAX_ARENA, timeout=timeout)
            n_probes += 1
            checked_max = True
            if not top.ok:
                return ArenaResult(None, None, n_probes, f"{_REFUSED}{top.message}")
        size *= 2
    if first is None or not first.ok:
        return ArenaResult(None, None, n_probes, f"does not fit in {MAX_ARENA} bytes of arena")
    reported = first.reported_total
    high = size
    low = _round_up(reported) if reported else GRANULARITY
    if low >= high:
        return ArenaResult(high, reported, n_probes)
    # Probe the lower bound itself, then grow an upper bound geometrically.
    step = 0
    candidate = low
    while candidate < high:
        res = probe(path, candidate, timeout=timeout)
        n_probes += 1
        if res.ok:
            high = candidate
            break
        low = candidate + GRANULARITY  # candidate does not fit: the answer is larger
        step = 256 if step == 0 else step * 2
        candidate = _round_up(candidate + step)
    if low >= high:
        return ArenaResult(high, reported, n_probes)
    # Invariant: `high` fits; everything below `low` fails. Binary search in 16-byte steps.
    while low < high:
        mid = _round_up((low + high) // 2)
        if mid >= high:
            mid = high - GRANULARITY
            if mid < low:
                break
        res = probe(path, mid, timeout=timeout)
        n_probes += 1
        if res.ok:
            high = mid
        else:
            low = mid + GRANULARITY
    return ArenaResult(high, reported, n_probes)


def _count_inputs(data: bytes) -> int:
    from ai_edge_litert import schema_py_generated as schema

    return int(schema.Model.GetRootAs(data, 0).Subgraphs(0).InputsLength())


def _probe_main(argv: list[str]) -> int:
    """Child side of `probe`: exit 0 fits, 3 allocation failed, 4 any other failure."""
    import numpy as np

    model_path, arena_size = Path(argv[0]), int(argv[1])
    report = "--report" in argv[2:]
    try:
        from tflite_micro import runtime
    except ImportError as exc:
        print(f"probe: tflite_micro not importable ({exc})", file=sys.stderr)
        return PROBE_OTHER_ERROR
    saved = os.dup(1)
    os.dup2(2, 1)  # the TFLM wrapper print()s to stdout; keep the child's stdout clean anyway
    try:
        try:
            it = runtime.Interpreter.from_file(str(model_path), arena_size=arena_size)
        except RuntimeError as exc:
            text = str(exc)
            code = PROBE_TOO_SMALL if "allocate" in text.lower() else PROBE_OTHER_ERROR
            print(f"probe: {text.strip().splitlines()[-1] if text.strip() else 'RuntimeError'}", file=sys.stderr)
            return code
        except Exception as exc:  # noqa: BLE001 - any load failure means "TFLM cannot run this model"
            print(f"probe: {type(exc).__name__}: {exc}", file=sys.stderr)
            return PROBE_OTHER_ERROR
        try:
            for i in range(_count_inputs(model_path.read_bytes())):  # past-the-end indices may crash TFLM
                d = it.get_input_details(i)
                it.set_input(np.zeros(d["shape"], dtype=d["dtype"]), i)
            it.invoke()
        except Exception as exc:  # noqa: BLE001
            print(f"probe: invoke failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return PROBE_TOO_SMALL if "alloc" in str(exc).lower() else PROBE_OTHER_ERROR
        if report:
            sys.stderr.flush()
            it.print_allocations()
        return PROBE_OK
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


if __name__ == "__main__":
    sys.exit(_probe_main(sys.argv[1:]))

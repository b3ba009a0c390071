"""One loader for every TFLite interpreter tinyfleet can run.

Order of preference: ai-edge-litert (LiteRT, the maintained successor of tflite-runtime, same API),
then tflite-runtime if a user installed it (release 2.14 crashes with numpy 2, so it is only a
fallback), then TFLite Micro's Python interpreter (the judge of what fits a microcontroller, ~20x
slower). `tf.lite.Interpreter` is deprecated and is never used.

All backends are wrapped in `TFLiteModel`, which speaks quantized tensors in and out and knows the
input/output quantization, so callers never touch backend-specific APIs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from firmware_models.exceptions import InterpreterUnavailableError, ModelFileError
from firmware_models.quiet import stdout_to_stderr

Backend = Literal["litert", "tflite_runtime", "tflm"]
BACKEND_ORDER: tuple[Backend, ...] = ("litert", "tflite_runtime", "tflm")


@dataclass(frozen=True)
class TensorInfo:
    """Shape, dtype and affine quantization (real = scale * (q - zero_point)) of one tensor."""

    shape: tuple[int, ...]
    dtype: np.dtype
    scale: float
    zero_point: int

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Float values to this tensor's integer type (identity for float tensors)."""
        if self.dtype.kind == "f" or self.scale == 0.0:
            return np.asarray(x, dtype=self.dtype)
        info = np.iinfo(self.dtype)
        v = np.asarray(x, dtype=np.float64) / self.scale
        # TFLite's QUANTIZE uses std::round (half away from zero), not numpy's half-to-even.
        q = np.sign(v) * np.floor(np.abs(v) + 0.5) + self.zero_point
        return np.clip(q, info.min, info.max).astype(self.dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        """Integer tensor values to float32 (identity for float tensors)."""
        if self.dtype.kind == "f" or self.scale == 0.0:
            return np.asarray(q, dtype=np.float32)
        return ((np.asarray(q, dtype=np.float32) - self.zero_point) * self.scale).astype(np.float32)


class TFLiteModel:
    """A loaded single-subgraph TFLite model on one backend.

    Use `TFLiteModel.from_file(path)` or `TFLiteModel.from_bytes(data)`; then `invoke(q)` with one
    quantized input batch of shape `input.shape` (batch 1), or `predict(x)` with float samples
    (quantized, run one at a time, dequantized).
    """

    def __init__(self, model_bytes: bytes, *, backend: Backend | None = None, arena_size: int | None = None,
                 source: str = "<bytes>") -> None:
        if not model_bytes:
            raise ModelFileError(f"{source}: empty model")
        self.source = source
        self.model_bytes = bytes(model_bytes)
        choices = [backend] if backend else list(BACKEND_ORDER)
        errors: list[str] = []
        for name in choices:
            try:
                self._impl = _open(name, self.model_bytes, arena_size)
                self.backend: Backend = name
                break
            except ImportError as exc:
                errors.append(f"{name}: {exc}")
            except (RuntimeError, ValueError) as exc:
                raise ModelFileError(f"{source}: {name} cannot load the model ({_one_line(exc)})") from None
        else:
            raise InterpreterUnavailableError(
                "no TFLite interpreter available (install ai-edge-litert): " + "; ".join(errors))
        self.input, self.output = self._impl.io()

    @classmethod
    def from_file(cls, path: str | Path, *, backend: Backend | None = None,
                  arena_size: int | None = None) -> TFLiteModel:
        """Load a .tflite file; errors name the file."""
        p = Path(path)
        if not p.is_file():
            raise ModelFileError(f"{p}: model file not found")
        return cls(p.read_bytes(), backend=backend, arena_size=arena_size, source=str(p))

    @classmethod
    def from_bytes(cls, data: bytes, *, backend: Backend | None = None,
                   arena_size: int | None = None) -> TFLiteModel:
        """Load a model held in memory."""
        return cls(data, backend=backend, arena_size=arena_size)

    def invoke(self, q: np.ndarray) -> np.ndarray:
        """Run one quantized input (shape = `self.input.shape`); returns the raw output tensor."""
        q = np.asarray(q, dtype=self.input.dtype).reshape(self.input.shape)
        return self._impl.invoke(q)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Float samples (n, *input_shape[1:]) -> dequantized float outputs (n, *output_shape[1:])."""
        x = np.asarray(x, dtype=np.float32).reshape((-1, *self.input.shape[1:]))
        outs = [self.output.dequantize(self.invoke(self.input.quantize(xi[None]))) for xi in x]
        if not outs:
            return np.zeros((0, *self.output.shape[1:]), np.float32)
        return np.concatenate(outs, axis=0)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def _tensor_info(detail: dict[str, Any]) -> TensorInfo:
    q = detail.get("quantization_parameters") or {}
    scales = q.get("scales")
    zps = q.get("zero_points")
    if scales is not None and len(scales) and zps is not None and len(zps):
        scale, zp = float(scales[0]), int(zps[0])
    else:
        scale, zp = (detail.get("quantization") or (0.0, 0))[:2]
    return TensorInfo(tuple(int(s) for s in detail["shape"]), np.dtype(detail["dtype"]), float(scale), int(zp))


class _TfliteApi:
    """ai-edge-litert and tflite-runtime share the tf.lite.Interpreter API."""

    def __init__(self, module: str, model_bytes: bytes) -> None:
        interp_cls = importlib.import_module(module).Interpreter
        self.it = interp_cls(model_content=model_bytes)
        self.it.allocate_tensors()
        self._in = self.it.get_input_details()[0]
        self._out = self.it.get_output_details()[0]

    def io(self) -> tuple[TensorInfo, TensorInfo]:
        return _tensor_info(self._in), _tensor_info(self._out)

    def invoke(self, q: np.ndarray) -> np.ndarray:
        self.it.set_tensor(self._in["index"], q)
        self.it.invoke()
        return np.array(self.it.get_tensor(self._out["index"]))


class _TflmApi:
    """TFLite Micro's Python interpreter (reference kernels, arena-limited like a microcontroller)."""

    def __init__(self, model_bytes: bytes, arena_size: int | None) -> None:
        from tflite_micro import runtime

        with stdout_to_stderr():  # its constructor print()s to stdout
            self.it = runtime.Interpreter.from_bytes(model_bytes, arena_size=arena_size)

    def io(self) -> tuple[TensorInfo, TensorInfo]:
        return _tensor_info(self.it.get_input_details(0)), _tensor_info(self.it.get_output_details(0))

    def invoke(self, q: np.ndarray) -> np.ndarray:
        self.it.set_input(q, 0)
        self.it.invoke()
        return np.array(self.it.get_output(0))


def _open(name: Backend, model_bytes: bytes, arena_size: int | None) -> _TfliteApi | _TflmApi:
    if name == "litert":
        return _TfliteApi("ai_edge_litert.interpreter", model_bytes)
    if name == "tflite_runtime":
        try:
            return _TfliteApi("tflite_runtime.interpreter", model_bytes)
        except (AttributeError, SystemError) as exc:  # the numpy-2 crash of tflite-runtime 2.14
            raise ImportError(f"tflite_runtime unusable: {exc}") from None
    return _TflmApi(model_bytes, arena_size)

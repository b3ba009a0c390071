"""Keras (float32) -> full-int8 TFLite, the only format tinyfleet ships to devices.

Full int8 means int8 weights, activations, input and output, calibrated on a representative data
set: microcontrollers without an FPU then never touch floats, and TFLite Micro's int8 kernels
(CMSIS-NN on Cortex-M) apply. TensorFlow is imported inside the function, never at module import.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from firmware_models.exceptions import TinyFleetError
from firmware_models.quiet import quiet_tensorflow_env, stdout_to_stderr


class ConversionError(TinyFleetError):
    """The TFLite converter rejected a model or its representative data."""


def to_full_int8(keras_model: Any, representative_x: np.ndarray, *, n_calibration: int = 200) -> bytes:
    """Convert a Keras model to a full-int8 TFLite flatbuffer.

    Parameters
    ----------
    keras_model : keras.Model
        A float32 model with one input.
    representative_x : np.ndarray
        Samples of the real input distribution, shape (n, *input_shape). Quantization ranges are
        calibrated on the first `n_calibration` of them, so they must cover what devices will see.
    n_calibration : int, default=200
        How many samples calibrate activation ranges; more is slower but rarely better.

    Returns
    -------
    bytes
        The .tflite flatbuffer (int8 input and output).

    Notes
    -----
    The converter prints "Saved artifact at ..." to stdout; the call runs with fd 1 redirected to
    stderr so that `--json` output stays clean.
    """
    quiet_tensorflow_env()
    import tensorflow as tf

    x = np.asarray(representative_x, dtype=np.float32)
    if x.ndim < 2 or len(x) == 0:
        raise ConversionError(f"representative data must have shape (n, ...) with n > 0, got {x.shape}")
    n = min(int(n_calibration), len(x))

    def representative() -> Any:
        for i in range(n):
            yield [x[i:i + 1]]

    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    with stdout_to_stderr(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        try:
            return bytes(converter.convert())
        except Exception as exc:  # noqa: BLE001 - converter errors are long MLIR dumps
            lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
            raise ConversionError(f"int8 conversion failed: {lines[0] if lines else type(exc).__name__}") from None

"""Keras (float32) -> full-int8 TFLite, the only format tinyfleet ships to devices.

Full int8 means int8 weights, activations, input and output, calibrated on a representative data
set: microcontrollers without an FPU then never touch floats, and TFLite Micro's int8 kernels
(CMSIS-NN on Cortex-M) apply. TensorFlow is imported inside the function, never at module import.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np

from firmware_models.exceptions import TinyFleetError
from firmware_models.quiet import capture_fd, quiet_tensorflow_env

log = logging.getLogger(__name__)


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
    The converter prints "Saved artifact at ..." to stdout and a summary line to C-level stderr;
    both are captured (logged at debug level) so that `--json` output and progress bars stay clean.
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
    # Both file descriptors are captured: "Saved artifact" (fd 1) would corrupt --json, and the
    # C-level "fully_quantize: ..." line (fd 2) would tear through progress bars. Kept at debug level.
    with capture_fd(1) as out_text, capture_fd(2) as err_text, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        try:
            result = bytes(converter.convert())
            error = None
        except Exception as exc:  # noqa: BLE001 - converter errors are long MLIR dumps
            lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
            result, error = b"", f"int8 conversion failed: {lines[0] if lines else type(exc).__name__}"
    log.debug("converter stdout: %s", "".join(out_text))
    log.debug("converter stderr: %s", "".join(err_text))
    if error is not None:
        raise ConversionError(error)
    return result

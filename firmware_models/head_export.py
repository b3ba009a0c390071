"""Turn a float head learned by the fleet back into a full-int8 TFLite model for deployment.

After a federated run the global head is a list of float32 arrays (w0, b0, w1, b1, ...; ReLU
between layers, linear output — the layout of ``head.npz``). Devices that run inference with an
interpreter (or a microcontroller flashed with the C array) need the whole network as one int8
flatbuffer: this rebuilds the head as Dense layers in Keras, puts the use case's float backbone
(``backbone.keras``, saved by the build) in front of it when there is one, loads the weights and
converts with the project's one int8 converter. For sine the head *is* the whole model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from firmware_models.convert import to_full_int8
from firmware_models.exceptions import ModelFileError, TinyFleetError
from firmware_models.quiet import quiet_tensorflow_env
from firmware_models.usecases.base import ARTIFACT_BACKBONE, ARTIFACT_BACKBONE_KERAS


def fused_model_int8(model_dir: str | Path, weights: Sequence[np.ndarray], representative_x: np.ndarray) -> bytes:
    """Full-int8 TFLite bytes of backbone + head `weights`, calibrated on raw inputs `representative_x`.

    Parameters
    ----------
    model_dir : path
        A built use case (``tinyfleet models build``); its ``backbone.keras`` is used when the use
        case has a backbone.
    weights : sequence of np.ndarray
        The head, [w0, b0, w1, b1, ...].
    representative_x : np.ndarray
        Raw model inputs (what devices sense), shape (n, *input_shape).
    """
    ws = [np.asarray(w, np.float32) for w in weights]
    if len(ws) < 2 or len(ws) % 2:
        raise TinyFleetError(f"a head needs (weight, bias) pairs; got {len(ws)} arrays")
    quiet_tensorflow_env()
    import keras

    d = Path(model_dir)
    x = np.asarray(representative_x, np.float32)
    layers = [keras.layers.Dense(int(ws[i].shape[1]), activation=None if i == len(ws) - 2 else "relu")
              for i in range(0, len(ws), 2)]
    if (d / ARTIFACT_BACKBONE).is_file():
        if not (d / ARTIFACT_BACKBONE_KERAS).is_file():
            raise ModelFileError(f"{d}: no {ARTIFACT_BACKBONE_KERAS} next to {ARTIFACT_BACKBONE}; "
                                 "rebuild the model with `tinyfleet models build`")
        backbone = keras.models.load_model(d / ARTIFACT_BACKBONE_KERAS, compile=False)
        backbone.trainable = False
        model = keras.Sequential([keras.Input(x.shape[1:]), backbone, keras.layers.Flatten(), *layers])
    else:
        model = keras.Sequential([keras.Input((int(ws[0].shape[0]),)), *layers])
        x = x.reshape(len(x), -1)
    for layer, i in zip(layers, range(0, len(ws), 2), strict=True):
        layer.set_weights([ws[i], ws[i + 1]])
    return to_full_int8(model, x)

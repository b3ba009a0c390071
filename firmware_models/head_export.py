"""Turn a float head learned by the fleet back into a full-int8 TFLite model for deployment.

After a federated run the global head is a list of float32 arrays (w0, b0, w1, b1, ...; ReLU
between layers, linear output — the layout of ``head.npz``). Devices that run inference with an
interpreter (or a microcontroller flashed with the C array) need it as an int8 flatbuffer: this
rebuilds the same Dense stack in Keras, loads the weights and converts it with the one int8
converter of the project. For a backbone-free use case (sine) the head *is* the whole model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from firmware_models.convert import to_full_int8
from firmware_models.exceptions import TinyFleetError
from firmware_models.quiet import quiet_tensorflow_env


def head_to_int8(weights: Sequence[np.ndarray], representative_features: np.ndarray) -> bytes:
    """Full-int8 TFLite bytes of the MLP head `weights`, calibrated on `representative_features`."""
    ws = [np.asarray(w, np.float32) for w in weights]
    if len(ws) < 2 or len(ws) % 2:
        raise TinyFleetError(f"a head needs (weight, bias) pairs; got {len(ws)} arrays")
    quiet_tensorflow_env()
    import keras

    n_in = int(ws[0].shape[0])
    layers = []
    for i in range(0, len(ws), 2):
        last = i == len(ws) - 2
        layers.append(keras.layers.Dense(int(ws[i].shape[1]), activation=None if last else "relu"))
    model = keras.Sequential([keras.Input((n_in,)), *layers], name="head")
    for layer, i in zip(layers, range(0, len(ws), 2), strict=True):
        layer.set_weights([ws[i], ws[i + 1]])
    feats = np.asarray(representative_features, np.float32).reshape(-1, n_in)
    return to_full_int8(model, feats)

"""Numpy-only signal front ends shared by training (firmware_models) and devices.

Nothing here imports TensorFlow: a device computes exactly the features the backbone was trained
on, with the same code, on a gateway that has only numpy and a TFLite interpreter.
"""

from firmware_models.features.audio import (
    CLIP_SAMPLES,
    N_FRAMES,
    N_MELS,
    SAMPLE_RATE,
    fit_clip,
    log_mel,
    log_mel_batch,
    mel_filterbank,
)
from firmware_models.features.resample import resample
from firmware_models.features.wav import read_wav, write_wav

__all__ = [
    "CLIP_SAMPLES",
    "N_FRAMES",
    "N_MELS",
    "SAMPLE_RATE",
    "fit_clip",
    "log_mel",
    "log_mel_batch",
    "mel_filterbank",
    "read_wav",
    "resample",
    "write_wav",
]

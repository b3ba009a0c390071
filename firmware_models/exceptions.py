"""The error hierarchy of tinyfleet.

Every error a user can cause (a bad file, a bad argument, a bad message) is a `TinyFleetError`
subclass. The CLI turns them into one stderr line and the error's `exit_code`; anything else is a
bug and keeps its traceback. The base lives in the lowest package so that every package can
subclass it without importing upwards.
"""


class TinyFleetError(Exception):
    """A problem the user can fix; its message names what and where."""

    exit_code = 1


class ModelFileError(TinyFleetError):
    """A model file is missing, empty, truncated or not a TFLite flatbuffer."""


class UnknownUseCaseError(TinyFleetError):
    """A use-case name that tinyfleet does not know."""

    exit_code = 2


class DatasetError(TinyFleetError):
    """A data folder or file (Omniglot, Speech Commands, UCI CSV) is missing or malformed."""


class InterpreterUnavailableError(TinyFleetError):
    """No TFLite interpreter (ai-edge-litert, tflite-runtime, TFLite Micro) can be imported."""


class HeadFileError(TinyFleetError):
    """A head.npz file is missing, unreadable or not a w0, b0, w1, b1, ... stack."""

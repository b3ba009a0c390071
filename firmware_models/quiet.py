"""Keep third-party chatter out of stdout.

`TFLiteConverter.convert()` prints "Saved artifact at ..." to stdout and TFLite Micro prints from
C++ straight to file descriptors 1 and 2, so `--json` output would be corrupted. Redirecting
`sys.stdout` is not enough for C-level writes: this swaps the file descriptor itself, and redirects
`sys.stdout` too, for when it is not file descriptor 1 (the CLI run in-process by a test runner or a notebook).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator


def quiet_tensorflow_env() -> None:
    """Silence TensorFlow's import-time logging; call before importing TensorFlow."""
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to fd 1 (Python and C) to fd 2 while the block runs."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@contextlib.contextmanager
def capture_fd(fd: int) -> Iterator[list[str]]:
    """Capture what C code writes to `fd`; the text is appended to the yielded list on exit."""
    import tempfile

    out: list[str] = []
    if fd == 1:
        sys.stdout.flush()
    else:
        sys.stderr.flush()
    saved = os.dup(fd)
    python_text = io.StringIO()
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        try:
            os.dup2(tmp.fileno(), fd)
            with contextlib.redirect_stdout(python_text) if fd == 1 else contextlib.nullcontext():
                yield out
        finally:
            (sys.stdout if fd == 1 else sys.stderr).flush()
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode("utf-8", "replace") + python_text.getvalue())

"""Installed versions of the tools tinyfleet depends on, without importing them.

`importlib.metadata` reads the installed distributions' metadata, so asking for TensorFlow's
version costs milliseconds instead of a 3-6 s `import tensorflow`; `tinyfleet doctor` and every
model card use it.
"""

from __future__ import annotations

import importlib.metadata
import platform

# Display name -> distribution names to try, in order (TensorFlow ships as tensorflow-cpu here).
TOOLS: dict[str, tuple[str, ...]] = {
    "tensorflow": ("tensorflow-cpu", "tensorflow", "tensorflow-macos", "tf-nightly"),
    "keras": ("keras",),
    "ai-edge-litert": ("ai-edge-litert",),
    "tflite-runtime": ("tflite-runtime",),
    "tflite-micro": ("tflite-micro",),
    "flwr": ("flwr",),
    "rdflib": ("rdflib",),
    "oxrdflib": ("oxrdflib",),
    "pyshacl": ("pyshacl",),
    "paho-mqtt": ("paho-mqtt",),
    "numpy": ("numpy",),
    "tinyfleet": ("tinyfleet",),
}


def dist_version(*names: str) -> str | None:
    """Version of the first installed distribution among `names`, or None."""
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def tool_versions(tools: dict[str, tuple[str, ...]] | None = None) -> dict[str, str | None]:
    """{tool: version or None}, plus the Python version, for cards and `doctor`."""
    found = {name: dist_version(*dists) for name, dists in (tools or TOOLS).items()}
    found["python"] = platform.python_version()
    return found

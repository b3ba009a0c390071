"""The device side in C: a C99 learner, wire codec and agent that join the same runs as Python devices.

The C sources ship inside this package (``src/`` learner, codec, JSON reader, SHA-256, agent core;
``agent/`` the Linux main on libmosquitto; ``mcu/`` the Cortex-M4 start-up, linker script and
benchmark; ``tests/`` the golden-vector check; ``fuzz/`` the libFuzzer target; ``templates/`` the
firmware project), so ``tinyfleet firmware generate`` works from an installed wheel. This package
only adds the Python that sizes, builds and feeds them: `devices.c.files` (configuration headers,
frame files, golden vectors) and `devices.c.build` (compilers, the QEMU run, ELF sizes).
"""

from __future__ import annotations

from pathlib import Path

C_DIR = Path(__file__).resolve().parent
"""Root of the shipped C sources."""

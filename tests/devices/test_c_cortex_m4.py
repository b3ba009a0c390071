"""The C learner cross-built for a Cortex-M4F (arm-none-eabi-gcc, hard float) and run on QEMU.

* Size: the learner + codec ELF minus an empty start-up ELF must need <= 8 KiB of RAM for the sine
  head and stay within 10 % of `firmware_models.memory_budget` (head weights + error vectors +
  activations + one sample): the learner keeps nothing the budget does not count.
* One SGD step on QEMU's mps2-an386 (Cortex-M4F, semihosting) from numpy's start weights lands
  within 1e-5 of numpy's step; its instruction count comes from `-icount shift=0` (checked by a
  calibration loop of known length).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from devices.c.cortex_m4 import measure_size, run_one_step
from devices.learning.head import MLPHead
from tests.conftest import require_c_tools
from tests.support.models import SineBuild


def test_sine_learner_fits_8_kib_and_the_memory_budget(sine_build: SineBuild, c_build_dir: Path) -> None:
    require_c_tools("arm")
    head = MLPHead.from_npz(sine_build.directory / "head.npz", kind="regression")
    size = measure_size(head, sample_bytes=4, out_dir=c_build_dir)
    assert size["learner_ram"] <= 8 * 1024, size
    assert abs(size["ram_vs_predicted"]) <= 0.10, size
    assert size["predicted"]["ram"] == 4 * (1153 + 65 + 66) + 4  # weights + error vectors + activations + sample
    assert size["learner"]["text"] > 4 * 1153  # the initial weights live in flash, next to the code


def test_one_sgd_step_on_qemu_matches_numpy(sine_build: SineBuild, c_build_dir: Path) -> None:
    require_c_tools("arm", "qemu")
    head = MLPHead.from_npz(sine_build.directory / "head.npz", kind="regression")
    out = run_one_step(head, np.array([1.3], np.float32), np.array([2.7], np.float32), lr=0.02, clip=10.0,
                       out_dir=c_build_dir)
    assert out["matches_numpy"] and out["max_abs_vs_numpy"] <= 1e-5, out
    assert abs(out["loss"] - out["loss_numpy"]) <= 1e-5 * max(1.0, abs(out["loss_numpy"]))
    assert out["instructions_per_tick"] == 40.0  # 25 MHz timer, 1 ns per instruction
    assert 3_000 < out["instructions_per_sgd_step"] < 200_000, out

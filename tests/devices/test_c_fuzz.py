"""libFuzzer (Debian's clang 14) on the C codec and the whole C agent, under ASan + UBSan.

Each input is a task payload: decoded, every tensor expanded, then handled by a real agent whose
reply must itself decode as a valid result frame (fuzz/fuzz_codec.c aborts otherwise). The seed
corpus holds valid train/evaluate/adapt/deploy/result frames and the hand-made malformed cases of
`devices.c.files.codec_cases`. A crash, an out-of-bounds read, undefined behaviour or an invalid
reply fails the test with libFuzzer's report.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np

from devices.c.build import build_fuzzer
from devices.c.files import HeadLayout, codec_cases
from devices.wire.protocol import encode_task
from tests.conftest import require_c_tools

RUNS = 20_000


def _corpus(directory: Path) -> None:
    rng = np.random.default_rng(0)
    w = [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32),
         rng.normal(size=(4, 2)).astype(np.float32), rng.normal(size=2).astype(np.float32)]
    seeds = [encode_task("task.train", config={"local-steps": 20, "lr": 0.05, "top-p": 0.3, "local-layers": [1],
                                               "reconstruct-steps": 3, "server-round": 1, "seed": 3},
                         weights=w, run="r", server_round=1)[1],
             encode_task("task.train", config={"local-steps": 20, "lr": 0.05}, weights=w)[1],
             encode_task("task.train", config={"local-steps": 20, "lr": 0.05, "proximal-mu": 0.3, "clipping_norm": 0.1,
                                               "top-p": 0.5, "required": ["proximal-mu", "clipping_norm"]},
                         weights=w, run="r", server_round=2)[1],
             encode_task("task.evaluate", weights=w, config={"required": ["some-key"]})[1],
             encode_task("task.evaluate", weights=w, config={"local-layers": [1]})[1],
             encode_task("task.adapt", config={"shots": 4, "steps": 10}, weights=w)[1],
             *codec_cases(n_mutations=30)]
    directory.mkdir()
    for i, s in enumerate(seeds):
        (directory / f"seed-{i:03d}").write_bytes(s)


def test_codec_and_agent_survive_fuzzing_under_sanitizers(c_build_dir: Path, tmp_path: Path) -> None:
    require_c_tools("clang")
    exe = build_fuzzer(HeadLayout((3, 4, 2), "regression"), out_dir=c_build_dir)
    corpus = tmp_path / "corpus"
    _corpus(corpus)
    proc = subprocess.run([str(exe), str(corpus), f"-runs={RUNS}", "-seed=1", "-max_len=4096", "-timeout=10",
                           "-print_final_stats=1", f"-artifact_prefix={tmp_path}/"],
                          capture_output=True, text=True, timeout=600, check=False)
    report = proc.stderr
    assert proc.returncode == 0, report[-4000:]
    for bad in ("ERROR: AddressSanitizer", "runtime error:", "ERROR: libFuzzer", "invalid frame"):
        assert bad not in report, report[-4000:]
    runs = int(re.search(r"stat::number_of_executed_units:\s+(\d+)", report).group(1))  # type: ignore[union-attr]
    assert runs >= RUNS
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("leak-*"))

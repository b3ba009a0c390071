"""Build and run the C device side: host programs (gcc/clang), Cortex-M4 ELFs, QEMU, ELF sizes.

Every build is keyed by a hash of its sources, configuration header, flags and compiler, and kept
in a cache folder, so a test session or a benchmark compiles each variant once. The tools are
Debian's (``make system-deps`` installs them): gcc, clang + libFuzzer, libmosquitto-dev,
gcc-arm-none-eabi + libnewlib-arm-none-eabi and qemu-system-arm (machine mps2-an386 = Cortex-M4F).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from devices.c import C_DIR
from devices.c.files import HeadLayout, agent_capacities, capacity_header, config_header
from devices.exceptions import CBuildError

SRC = C_DIR / "src"
LEARNER = ("src/tf_learner.c",)
CODEC = ("src/tf_json.c", "src/tf_codec.c")
AGENT_CORE = ("src/tf_sha256.c", "src/tf_agent.c")
HOST_FLAGS = ("-std=c99", "-O2", "-Wall", "-Wextra", "-Werror")
SANITIZE = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g")
M4_FLAGS = ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", "-O2", "-std=c99",
            "-ffunction-sections", "-fdata-sections", "-Wl,--gc-sections")
QEMU_MACHINE = "mps2-an386"
TOOLS = {"gcc": "gcc", "clang": "clang", "arm-gcc": "arm-none-eabi-gcc", "arm-size": "arm-none-eabi-size",
         "qemu": "qemu-system-arm"}


def tool(name: str) -> str:
    """Path of a toolchain program; a missing one is a one-line error that says how to get it."""
    exe = TOOLS.get(name, name)
    path = shutil.which(exe)
    if path is None:
        raise CBuildError(f"{exe} is not installed (run `make system-deps`: it installs gcc, clang, "
                          "libmosquitto-dev, gcc-arm-none-eabi, libnewlib-arm-none-eabi and qemu-system-arm)")
    return path


def cache_dir() -> Path:
    """Default build cache: ``$TINYFLEET_C_CACHE`` or ``~/.cache/tinyfleet/c``."""
    env = os.environ.get("TINYFLEET_C_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tinyfleet" / "c"
    base.mkdir(parents=True, exist_ok=True)
    return base


def _digest(parts: Iterable[str | bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else p.encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def _run(cmd: Sequence[str], *, what: str, timeout: float = 300.0, cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False)
    except subprocess.TimeoutExpired:
        raise CBuildError(f"{what} timed out after {timeout:g} s") from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise CBuildError(f"{what} failed (exit {proc.returncode}): {' | '.join(detail[-6:])[:1500]}")
    return proc.stdout


def compile_program(name: str, sources: Sequence[Path], *, config: str, out_dir: Path | None = None,
                    compiler: str = "gcc", flags: Sequence[str] = HOST_FLAGS, libs: Sequence[str] = ("-lm",),
                    extra_headers: dict[str, str] | None = None) -> Path:
    """Compile `sources` with ``tf_config.h`` = `config` (and other generated headers); cached.

    Returns the path of the program (or ELF). The cache key covers every source, header and flag.
    """
    cc = tool(compiler)
    headers = {"tf_config.h": config, **(extra_headers or {})}
    shipped = sorted(SRC.glob("*.h")) + sorted((C_DIR / "mcu").glob("*.h"))
    key = _digest([cc, *flags, *libs, *(f"{k}={v}" for k, v in sorted(headers.items())),
                   *(p.read_bytes() for p in [*sources, *shipped])])
    out = Path(out_dir) if out_dir is not None else cache_dir()
    target = out / f"{name}-{key}"
    if target.is_file():
        return target
    inc = out / f"include-{key}"
    inc.mkdir(parents=True, exist_ok=True)
    for fname, text in headers.items():
        (inc / fname).write_text(text)
    tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
    _run([cc, *flags, f"-I{inc}", f"-I{SRC}", *map(str, sources), "-o", str(tmp), *libs],
         what=f"building {name} with {Path(cc).name}")
    os.replace(tmp, target)
    return target


def src(*names: str) -> list[Path]:
    """Shipped C files by their path under devices/c."""
    return [C_DIR / n for n in names]


# ------------------------------------------------------------------------------------------ host programs
def build_host_test(layout: HeadLayout | None = None, *, out_dir: Path | None = None, sanitize: bool = False) -> Path:
    """The golden-vector checker (tests/host_test.c), optionally under ASan + UBSan.

    With `layout`, every buffer is sized exactly for that head (as in a firmware project); without,
    generic capacities let one build check any head up to 8 layers and 65,536 parameters.
    """
    flags = (*HOST_FLAGS, *SANITIZE) if sanitize else HOST_FLAGS
    config = config_header(layout) if layout is not None else capacity_header()
    return compile_program("host_test" + ("-asan" if sanitize else ""),
                           src(*LEARNER, *CODEC, "tests/host_test.c"), config=config, out_dir=out_dir, flags=flags)


def build_agent(layout: HeadLayout, samples: int, *, out_dir: Path | None = None) -> Path:
    """``tf-agent``: the Linux device on libmosquitto, sized for `layout` and `samples` local samples."""
    cfg = config_header(layout, agent=agent_capacities(layout, samples))
    return compile_program("tf-agent", src(*LEARNER, *CODEC, *AGENT_CORE, "agent/tf_agent_linux.c"), config=cfg,
                           out_dir=out_dir, libs=("-lmosquitto", "-lm"))


def build_fuzzer(layout: HeadLayout, *, out_dir: Path | None = None) -> Path:
    """The libFuzzer target (fuzz/fuzz_codec.c) under ASan + UBSan (Debian's clang + libclang-rt)."""
    cfg = config_header(layout, agent=agent_capacities(layout, 16, cache_entries=4, max_task_header=4096))
    flags = ("-std=c99", "-O1", "-g", "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=all",
             "-fno-omit-frame-pointer")
    return compile_program("fuzz_codec", src(*LEARNER, *CODEC, *AGENT_CORE, "fuzz/fuzz_codec.c"), config=cfg,
                           out_dir=out_dir, compiler="clang", flags=flags)


def run_host_test(exe: Path, golden_dir: Path, *, timeout: float = 120.0) -> dict[str, object]:
    """Run the golden check; returns its JSON summary (with ``exit`` = its exit code)."""
    proc = subprocess.run([str(exe), str(golden_dir)], capture_output=True, text=True, timeout=timeout, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise CBuildError(f"{exe.name} printed no summary (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
    out: dict[str, object] = json.loads(lines[-1])
    out["exit"] = proc.returncode
    out["stderr"] = proc.stderr[-4000:]
    return out


# ------------------------------------------------------------------------------------------ Cortex-M4
def build_cortex_m4(name: str, main: Path, *, config: str, extra_headers: dict[str, str] | None = None,
                    semihosting: bool = False, out_dir: Path | None = None,
                    sources: Sequence[str] = (*LEARNER, *CODEC)) -> Path:
    """An ELF for the Cortex-M4F (arm-none-eabi-gcc, hard float) with mcu/startup.c and mcu/mps2.ld.

    Semihosting builds link newlib's rdimon (printf and the exit code reach QEMU's host); size builds
    link nosys and no stdio, so the ELF holds the learner, not a C library.
    """
    flags = [*M4_FLAGS, f"-T{C_DIR / 'mcu' / 'mps2.ld'}"]
    flags += ["-DTF_SEMIHOSTING", "--specs=rdimon.specs"] if semihosting else ["--specs=nosys.specs", "-nostartfiles"]
    return compile_program(name, [*src(*sources, "mcu/startup.c"), main], config=config, out_dir=out_dir,
                           compiler="arm-gcc", flags=flags, libs=("-lm",), extra_headers=extra_headers)


@dataclass(frozen=True)
class ElfSize:
    """``arm-none-eabi-size`` of an ELF (Berkeley format): flash = text + data, RAM = data + bss."""

    text: int
    data: int
    bss: int

    @property
    def ram(self) -> int:
        return self.data + self.bss

    @property
    def flash(self) -> int:
        return self.text + self.data

    def as_dict(self) -> dict[str, int]:
        return {"text": self.text, "data": self.data, "bss": self.bss}

    def __sub__(self, other: ElfSize) -> ElfSize:
        return ElfSize(self.text - other.text, self.data - other.data, self.bss - other.bss)


def elf_size(elf: Path) -> ElfSize:
    """text/data/bss of an ELF."""
    out = _run([tool("arm-size"), "-B", str(elf)], what=f"arm-none-eabi-size {elf.name}")
    rows = [ln.split() for ln in out.strip().splitlines()[1:]]
    if not rows or len(rows[0]) < 3:
        raise CBuildError(f"arm-none-eabi-size printed nothing usable for {elf}")
    return ElfSize(int(rows[0][0]), int(rows[0][1]), int(rows[0][2]))


def run_qemu(elf: Path, *, timeout: float = 120.0) -> tuple[int, str]:
    """Run an ELF on QEMU's mps2-an386 with semihosting and ``-icount shift=0`` (1 instruction = 1 ns)."""
    cmd = [tool("qemu"), "-machine", QEMU_MACHINE, "-nographic", "-monitor", "none", "-serial", "none",
           "-semihosting-config", "enable=on,target=native", "-icount", "shift=0", "-kernel", str(elf)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise CBuildError(f"QEMU did not finish {elf.name} within {timeout:g} s") from None
    return proc.returncode, proc.stdout


_FIGURE = re.compile(r"^(\w+) (\S+)(?: (\w+) (\S+))?$")


def parse_bench(stdout: str) -> dict[str, float]:
    """The ``name value [name value]`` lines bench_main.c prints, as one dict."""
    out: dict[str, float] = {}
    for line in stdout.splitlines():
        m = _FIGURE.match(line.strip())
        if m:
            out[m.group(1)] = float(m.group(2))
            if m.group(3):
                out[f"{m.group(1)}_{m.group(3)}"] = float(m.group(4))
    return out

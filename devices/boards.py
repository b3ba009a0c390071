"""Board profiles: what a device declares about itself (RAM, flash, MCU, clock, sensors).

A device refuses a model that does not fit its profile, its Thing Description advertises the
profile, and the registry matches models to devices with it. The figures are the vendors'
datasheet numbers for the boards named; `sensors` lists the sensor kinds a device of that
profile carries (on board, or on the sensor kit named in `notes`), spelled like
`UseCase.sensors` so that matchmaking can compare them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from devices.exceptions import UnknownBoardError

KIB = 1024
MIB = 1024 * 1024


@dataclass(frozen=True)
class Board:
    """One board profile.

    Attributes
    ----------
    name : str
        CLI name, e.g. "nano33ble".
    title : str
        Human name of the board.
    mcu : str
        Microcontroller or SoC.
    cpu : str
        Core (what decides the instruction set and FPU).
    clock_hz : int
        Core clock.
    ram_bytes : int
        RAM available to the application (SRAM; DRAM for application processors).
    flash_bytes : int
        Program/model storage (internal flash; SD card for a Raspberry Pi).
    sensors : tuple of str
        Sensor kinds present.
    notes : str
        Where the numbers and the sensor list come from.
    """

    name: str
    title: str
    mcu: str
    cpu: str
    clock_hz: int
    ram_bytes: int
    flash_bytes: int
    sensors: tuple[str, ...]
    notes: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (sensors as a list)."""
        d = asdict(self)
        d["sensors"] = list(self.sensors)
        return d


BOARDS: Mapping[str, Board] = {b.name: b for b in (
    Board("nano33ble", "Arduino Nano 33 BLE Sense", "nRF52840", "Arm Cortex-M4F", 64_000_000, 256 * KIB, 1 * MIB,
          ("microphone", "accelerometer", "gyroscope", "magnetometer", "temperature", "humidity", "pressure",
           "light", "proximity", "gesture", "scalar-signal"),
          "Arduino datasheet ABX00031; sensors on board (MP34DT05 mic, LSM9DS1 IMU, HTS221, LPS22HB, APDS-9960); "
          "'scalar-signal' = the analog input of the sine demo"),
    Board("esp32", "Espressif ESP32-DevKitC with a room-sensor kit", "ESP32-D0WD", "Xtensa LX6 (dual core)",
          240_000_000, 520 * KIB, 4 * MIB,
          ("temperature", "humidity", "co2", "light", "motion", "microphone", "scalar-signal"),
          "Espressif ESP32 datasheet (520 KB SRAM) and ESP32-WROOM-32 module (4 MB flash); sensors on an attached "
          "kit (e.g. SCD30 CO2/temperature/humidity, BH1750 light, PIR motion, INMP441 microphone)"),
    Board("stm32f429", "STM32F429I-DISC1 (Cortex-M4, 256 KB RAM)", "STM32F429ZI", "Arm Cortex-M4F", 180_000_000,
          256 * KIB, 2 * MIB, ("gyroscope", "camera", "touchscreen", "scalar-signal"),
          "ST datasheet DS9405: 256 KB SRAM (incl. 64 KB CCM), 2 MB flash; the class of MCU used by TinyReptile"),
    Board("rpi4", "Raspberry Pi 4 Model B (4 GB)", "BCM2711", "Arm Cortex-A72 (quad core)", 1_500_000_000,
          4 * 1024 * MIB, 32 * 1024 * MIB,
          ("microphone", "camera", "temperature", "humidity", "co2", "light", "motion", "scalar-signal"),
          "Raspberry Pi 4 product brief; flash = a 32 GB microSD card; sensors on USB/I2C add-ons"),
    Board("esp32cam", "AI-Thinker ESP32-CAM", "ESP32-D0WDQ6", "Xtensa LX6 (dual core)", 240_000_000, 520 * KIB,
          4 * MIB, ("camera",),
          "AI-Thinker ESP32-CAM module: 520 KB SRAM (+4 MB PSRAM), 4 MB flash, OV2640 camera as its only sensor; "
          "it lacks the sensors of the sine, keyword and presence use cases"),
    Board("uno", "Arduino Uno Rev3", "ATmega328P", "AVR (8-bit)", 16_000_000, 2 * KIB, 32 * KIB,
          ("temperature", "light", "scalar-signal"),
          "Arduino datasheet A000066: 2 KB SRAM, 32 KB flash; deliberately too small for most models"),
)}

DEFAULT_BOARD = "nano33ble"


def get_board(name: str) -> Board:
    """The profile called `name`; raises `UnknownBoardError` listing the known ones."""
    try:
        return BOARDS[name]
    except KeyError:
        raise UnknownBoardError(f"unknown board {name!r} (known: {', '.join(BOARDS)})") from None


def parse_mix(mix: str) -> list[tuple[Board, float]]:
    """Parse a board mix such as ``"nano33ble:0.5,esp32:0.3,uno:0.2"`` (weights need not sum to 1).

    A name without a weight counts 1. Raises `UnknownBoardError` for unknown names and bad weights.
    """
    out: list[tuple[Board, float]] = []
    for part in (p.strip() for p in mix.split(",")):
        if not part:
            continue
        name, _, weight = part.partition(":")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise UnknownBoardError(f"board mix {mix!r}: weight {weight!r} of {name!r} is not a number") from None
        if not w > 0:
            raise UnknownBoardError(f"board mix {mix!r}: weight of {name!r} must be > 0")
        out.append((get_board(name.strip()), w))
    if not out:
        raise UnknownBoardError(f"board mix {mix!r} names no board")
    return out


def assign_boards(mix: str, n: int) -> list[Board]:
    """Deterministically give `n` devices boards in the proportions of `mix` (largest remainder)."""
    parsed = parse_mix(mix)
    total = sum(w for _, w in parsed)
    exact = [n * w / total for _, w in parsed]
    counts = [int(e) for e in exact]
    for i in sorted(range(len(parsed)), key=lambda i: exact[i] - counts[i], reverse=True)[: n - sum(counts)]:
        counts[i] += 1
    boards = [b for (b, _), c in zip(parsed, counts, strict=True) for _ in range(c)]
    # interleave so that any prefix of the fleet has roughly the same mix
    order = sorted(range(n), key=lambda i: (i * 7919) % max(n, 1))
    return [boards[i] for i in order]

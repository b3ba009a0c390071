"""`tinyfleet models build <task> --data PATH`: training on the real data sets' on-disk formats.

Tiny data sets are written in the real formats (UCI Occupancy CSVs with quoted row ids, Omniglot
`alphabet/character/<id>_<drawer>.png`, Speech Commands `word/<speaker>_nohash_<n>.wav`) and run
through the CLI (in-process); bad data must give one `error: <file>: ...` line, exit 1, and
leave --out untouched.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from click.testing import Result

from broker.process import BrokerInfo
from firmware_models.datasets import building
from firmware_models.datasets.fingerprint import file_list_fingerprint
from firmware_models.features import SAMPLE_RATE, write_wav
from tests.support.cli import clean_environment, invoke

Cli = Callable[..., Result]

UCI_HEADER = '"date","Temperature","Humidity","Light","CO2","HumidityRatio","Occupancy"\n'


def write_uci(path: Path, start: datetime, days: float, seed: int) -> int:
    """A UCI-format CSV of a simulated office (one row per minute); returns the row count."""
    spec = building.random_room("office", np.random.default_rng(seed), "office")
    log = building.simulate_room(spec, days=int(np.ceil(days)), seed=seed)
    n = int(days * building.MINUTES_PER_DAY)
    lines = [UCI_HEADER]
    for i in range(n):
        co2, t, rh, light, _ = (float(v) for v in np.nan_to_num(log.values[i], nan=0.0))
        stamp = (start + timedelta(minutes=i)).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(f'"{i + 1}","{stamp}",{t:.2f},{rh:.3f},{light:.1f},{co2:.2f},{rh / 6000:.6f},{log.occupied[i]}\n')
    path.write_text("".join(lines))
    return n


@pytest.fixture(scope="module")
def uci_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three standard files: 3 training days, 1 + 1 test days (the data set's own split)."""
    root = tmp_path_factory.mktemp("uci")
    write_uci(root / "datatraining.txt", datetime(2015, 2, 4), 3, seed=1)
    write_uci(root / "datatest.txt", datetime(2015, 2, 2), 1, seed=2)
    write_uci(root / "datatest2.txt", datetime(2015, 2, 11), 1, seed=3)
    return root


def write_omniglot(root: Path, *, alphabets: int = 3, characters: int = 5, drawers: int = 6) -> None:
    """105x105 1-bit PNGs, black strokes on white; each character has its own stroke pattern."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for a in range(alphabets):
        for c in range(characters):
            folder = root / f"Alphabet_{a}" / f"character{c + 1:02d}"
            folder.mkdir(parents=True)
            strokes = rng.integers(10, 90, size=(3, 4))
            for d in range(1, drawers + 1):
                img = np.full((105, 105), 255, np.uint8)
                for r0, c0, r1, c1 in strokes:
                    jitter = int(rng.integers(-3, 4))
                    img[min(r0, r1) + jitter:max(r0, r1) + 8 + jitter, min(c0, c1):min(c0, c1) + 8] = 0
                    img[min(r0, r1):min(r0, r1) + 8, min(c0, c1) + jitter:max(c0, c1) + 8 + jitter] = 0
                Image.fromarray(img).convert("1").save(folder / f"{a * 20 + c + 1:04d}_{d:02d}.png")


def _one_error_line(proc, where: str) -> str:  # noqa: ANN001
    assert proc.exit_code == 1, (proc.exit_code, proc.stderr[-1500:])
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {where}"), lines[0]
    assert "Traceback" not in proc.stderr
    return lines[0]


# --- presence on UCI Occupancy -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def presence_build(uci_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """`tinyfleet models build presence --data <uci> --quick --json`, once per module: (out dir, card)."""
    out = tmp_path_factory.mktemp("models")
    with clean_environment(tmp_path_factory.mktemp("cwd")):
        proc = invoke("models", "build", "presence", "--data", str(uci_dir), "--quick", "--out", str(out), "--json")
    assert proc.exit_code == 0, proc.stderr[-2000:]
    return out, json.loads(proc.stdout)


def test_presence_builds_on_uci_files_with_real_provenance(uci_dir: Path, presence_build: tuple[Path, dict]) -> None:
    tmp_path, card = presence_build
    assert json.loads((tmp_path / "presence" / "card.json").read_text())["data"] == card["data"]
    prov = card["data"]
    assert prov["dataset"] == "UCI Occupancy Detection" and "generator" not in prov
    real = prov["real_data"]
    files = [uci_dir / f for f in ("datatraining.txt", "datatest.txt", "datatest2.txt")]
    assert real["path"] == str(uci_dir.resolve()) and real["files"] == 3
    assert real["bytes"] == sum(f.stat().st_size for f in files)
    assert real["file_list_sha256"] == file_list_fingerprint(uci_dir, files)["file_list_sha256"]
    # devices = days: 3 training days, the two test files' days held out (the data set's own split)
    assert real["train_days"] == ["datatraining-2015-02-04", "datatraining-2015-02-05", "datatraining-2015-02-06"]
    assert real["heldout_days"] == ["datatest-2015-02-02", "datatest2-2015-02-11"]
    assert prov["train_rooms"] == 3 and prov["heldout_rooms"] == 2
    assert card["metrics"]["samples"] == prov["heldout_samples"] == 2 * 200
    assert 0.0 <= card["metrics"]["int8"]["accuracy"] <= 1.0
    assert "held-out days" in card["metrics"]["metric"]


def test_fingerprint_changes_when_a_file_changes(uci_dir: Path, tmp_path: Path) -> None:
    files = sorted(uci_dir.iterdir())
    before = file_list_fingerprint(uci_dir, files)
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in files:
        (copy / f.name).write_bytes(f.read_bytes())
    assert file_list_fingerprint(copy, sorted(copy.iterdir()))["file_list_sha256"] == before["file_list_sha256"]
    (copy / "datatest.txt").write_bytes((copy / "datatest.txt").read_bytes()[:-40])
    assert file_list_fingerprint(copy, sorted(copy.iterdir()))["file_list_sha256"] != before["file_list_sha256"]


def _break_uci(data: Path, how: str) -> Path:
    if how == "missing folder":
        return data / "nope"
    if how == "bad number":
        (data / "datatraining.txt").write_text(UCI_HEADER + '"1","2015-02-04 17:51:00",23.1,27,426,x,0.004,1\n')
    elif how == "bad header":
        (data / "datatest.txt").write_text('"date","Temp"\n')
    elif how == "no standard file":
        (data / "datatraining.txt").unlink()
    return data


@pytest.mark.parametrize(("how", "where", "problem"), [
    ("missing folder", "{d}/nope: ", "not found"),
    ("bad number", "{d}/datatraining.txt:2: ", "column 'CO2' is not a number"),
    ("bad header", "{d}/datatest.txt:1: ", "expected header"),
    ("no standard file", "{d}: ", "none of datatraining.txt"),
])
def test_presence_bad_uci_data_is_one_line_and_writes_nothing(cli: Cli, uci_dir: Path, tmp_path: Path, how: str,
                                                              where: str, problem: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "datatraining.txt").write_bytes((uci_dir / "datatraining.txt").read_bytes())
    out = tmp_path / "out"
    proc = cli("models", "build", "presence", "--data", str(_break_uci(data, how)), "--quick", "--out", str(out),
               "--json")
    line = _one_error_line(proc, where.format(d=data))
    assert problem in line
    assert not out.exists()


def test_simulated_fleet_streams_the_real_days(cli: Cli, mosquitto: BrokerInfo, uci_dir: Path,
                                              presence_build: tuple[Path, dict], tmp_path: Path) -> None:
    from devices.link.address import BrokerAddress
    from devices.simulator import FleetSimulator
    from firmware_models.usecases import get_use_case

    out, _ = presence_build
    url = f"mqtt://{mosquitto.host}:{mosquitto.port}"
    proc = cli("devices", "simulate", "--n", "4", "--task", "presence", "--data", str(uci_dir), "--models",
               str(out), "--samples", "40", "--broker", url, "--fleet", "ucisim", "--duration", "1",
               "--telemetry", "0", "--json")
    assert proc.exit_code == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["devices"] == summary["connected"] == 4 and summary["unfit_devices"] == 0
    # in process (no connection): every device's local data is a real day's windows
    sim = FleetSimulator(n=4, use_case="presence", data=uci_dir, address=BrokerAddress(mosquitto.host, mosquitto.port),
                         state_root=tmp_path, models_dir=out, samples_per_device=40, seed=0)
    days = get_use_case("presence", data=uci_dir).devices("train", 4, samples_per_device=40, seed=0)
    for agent, day in zip(sim.agents, days, strict=True):
        np.testing.assert_array_equal(np.concatenate([agent.x_train, agent.x_eval])[:40], day.x)
    bad = cli("devices", "simulate", "--n", "2", "--task", "presence", "--data", str(tmp_path / "nope"),
              "--models", str(out), "--broker", url, "--duration", "0")
    assert bad.exit_code == 1
    assert bad.stderr.strip() == f"error: {tmp_path / 'nope'}: UCI occupancy CSV or folder not found"


def test_single_csv_is_split_chronologically(tmp_path: Path) -> None:
    from firmware_models.usecases import get_use_case

    csv = tmp_path / "occupancy.csv"
    write_uci(csv, datetime(2015, 3, 1, 12, 0), 3.5, seed=4)
    uc = get_use_case("presence", data=csv)
    real = uc.load_real()
    # 12:00 day 1 .. 24:00 day 4 = 4 calendar days; the last one (a quarter) is held out
    assert [d.room for d in real.train] == ["occupancy-2015-03-01", "occupancy-2015-03-02", "occupancy-2015-03-03"]
    assert [d.room for d in real.heldout] == ["occupancy-2015-03-04"]
    devs = uc.devices("train", 4, samples_per_device=50, seed=0)
    assert [d.device_id for d in devs] == ["uci-occupancy-2015-03-01", "uci-occupancy-2015-03-02",
                                           "uci-occupancy-2015-03-03", "uci-occupancy-2015-03-01-r1"]
    assert all(d.x.shape == (50, 30, 6) and set(np.unique(d.y)) <= {0, 1} for d in devs)
    assert not np.array_equal(devs[0].x, devs[3].x)            # a repeated day gets fresh windows
    assert all(np.all(d.x[..., 5] == 0) for d in devs)          # UCI has no motion sensor: flagged missing


def test_data_option_refused_for_sine_and_all(cli: Cli, tmp_path: Path) -> None:
    proc = cli("models", "build", "sine", "--data", str(tmp_path), "--out", str(tmp_path / "o"))
    assert proc.exit_code == 2 and proc.stderr.startswith("error: use case 'sine' has no real data set")
    proc = cli("models", "build", "all", "--data", str(tmp_path), "--out", str(tmp_path / "o"))
    assert proc.exit_code == 2 and "give one use case" in proc.stderr
    assert not (tmp_path / "o").exists()


# --- characters on Omniglot --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def omniglot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One image folder: 3 alphabets x 5 characters x 6 drawers = 90 PNGs."""
    root = tmp_path_factory.mktemp("omniglot") / "images_background"
    write_omniglot(root)
    return root


def test_characters_builds_on_omniglot_with_real_provenance(cli: Cli, omniglot_dir: Path, tmp_path: Path) -> None:
    proc = cli("models", "build", "characters", "--data", str(omniglot_dir), "--quick", "--out", str(tmp_path),
               "--json")
    assert proc.exit_code == 0, proc.stderr[-2000:]
    card = json.loads(proc.stdout)
    prov = card["data"]
    real = prov["real_data"]
    pngs = sorted(omniglot_dir.rglob("*.png"))
    assert prov["dataset"] == "Omniglot" and real["files"] == len(pngs) == 90
    assert real["file_list_sha256"] == file_list_fingerprint(omniglot_dir, pngs)["file_list_sha256"]
    # alphabets -> classes (last 1 of 3 alphabets held out), drawers -> devices (the highest 2 of 6 held out)
    assert real["train_alphabets"] == ["Alphabet_0", "Alphabet_1"] and real["test_alphabets"] == ["Alphabet_2"]
    assert real["train_drawers"] == [1, 2, 3, 4] and real["heldout_drawers"] == [5, 6]
    assert real["train_classes"] == 10 and real["test_classes"] == 5
    assert prov["train_samples"] == 10 * 4                       # held-out drawers never pretrain
    few = card["metrics"]["few_shot"]
    # 6 drawings per held-out character: 1-shot (5 queries) and 5-shot (1 query) episodes
    assert set(few["int8"]) == {"5way_1shot", "5way_5shot"}
    assert 0.0 <= card["metrics"]["int8"]["accuracy"] <= 1.0
    assert (tmp_path / "characters" / "backbone.tflite").is_file()


def test_omniglot_devices_are_drawers(omniglot_dir: Path) -> None:
    from firmware_models.usecases import get_use_case

    uc = get_use_case("characters", data=omniglot_dir)
    train = uc.devices("train", 5, samples_per_device=10, seed=0)
    held = uc.devices("heldout", 2, samples_per_device=10, seed=0)
    assert [d.meta["drawer"] for d in train] == [1, 2, 3, 4, 1]
    assert [d.meta["drawer"] for d in held] == [5, 6]
    assert all(c.startswith("Alphabet_2/") for d in held for c in d.meta["classes"])
    assert not any(c.startswith("Alphabet_2/") for d in train for c in d.meta["classes"])
    d = train[0]
    assert d.x.shape == (10, 28, 28, 1) and d.y.tolist() == [0, 1, 2, 3, 4] * 2
    # the second drawing of a class is the drawer's only drawing, shifted: same ink, not the same pixels
    assert not np.array_equal(d.x[0], d.x[5]) and abs(d.x[0].sum() - d.x[5].sum()) < 0.2 * d.x[0].sum()


@pytest.mark.parametrize(("how", "where", "problem"), [
    ("missing folder", "{d}/nope: ", "Omniglot folder not found"),
    ("broken png", "{d}/Alphabet_1/character02/0022_03.png: ", "not a readable image"),
    ("empty character", "{d}/Alphabet_0/character09: ", "no .png files"),
    ("no drawer", "{d}/Alphabet_0/character01/x.png: ", "no drawer number"),
])
def test_characters_bad_omniglot_is_one_line_and_writes_nothing(cli: Cli, tmp_path: Path, how: str, where: str,
                                                                problem: str) -> None:
    data = tmp_path / "omniglot"
    write_omniglot(data, drawers=3)
    target = data / "nope" if how == "missing folder" else data
    if how == "broken png":
        (data / "Alphabet_1" / "character02" / "0022_03.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    elif how == "empty character":
        (data / "Alphabet_0" / "character09").mkdir()
    elif how == "no drawer":
        (data / "Alphabet_0" / "character01" / "0001_02.png").rename(data / "Alphabet_0" / "character01" / "x.png")
    out = tmp_path / "out"
    proc = cli("models", "build", "characters", "--data", str(target), "--quick", "--out", str(out), "--json")
    assert problem in _one_error_line(proc, where.format(d=data))
    assert not out.exists()


# --- keywords on Speech Commands ---------------------------------------------------------------------

SPEAKERS = ("0a7c2a8d", "3b4f9e1c", "5c8a11ef", "c1d2e3f4")


def write_speech_commands(root: Path) -> None:
    """3 keywords + 1 unknown word by 4 speakers (tones per word, pitch per speaker); the last speaker tests."""
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    for w, word in enumerate(("yes", "no", "up", "bed")):
        (root / word).mkdir(parents=True)
        for s, spk in enumerate(SPEAKERS):
            for rep in range(2):
                f0 = (300 + 250 * w) * (1 + 0.05 * s)
                env = np.exp(-((t - 0.5 - 0.05 * rep) ** 2) / 0.02)
                write_wav(root / word / f"{spk}_nohash_{rep}.wav", 0.3 * env * np.sin(2 * np.pi * f0 * t), SAMPLE_RATE)
    (root / "_background_noise_").mkdir()
    write_wav(root / "_background_noise_" / "white_noise.wav",
              np.random.default_rng(0).normal(0, 0.1, 3 * SAMPLE_RATE), SAMPLE_RATE)
    (root / "testing_list.txt").write_text("".join(f"{w}/{SPEAKERS[3]}_nohash_{r}.wav\n"
                                                   for w in ("yes", "no", "up", "bed") for r in range(2)))
    (root / "validation_list.txt").write_text(f"yes/{SPEAKERS[2]}_nohash_0.wav\n")


@pytest.fixture(scope="module")
def speech_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("speech_commands")
    write_speech_commands(root)
    return root


def test_keywords_builds_on_speech_commands_with_real_provenance(cli: Cli, speech_dir: Path, tmp_path: Path) -> None:
    proc = cli("models", "build", "keywords", "--data", str(speech_dir), "--quick", "--out", str(tmp_path),
               "--json")
    assert proc.exit_code == 0, proc.stderr[-2000:]
    card = json.loads(proc.stdout)
    prov, real = card["data"], card["data"]["real_data"]
    assert prov["dataset"] == "Speech Commands"
    assert real["files"] == 4 * 4 * 2 + 1 + 2                       # clips + noise + the two split lists
    assert "testing_list.txt" in real["split_rule"]
    assert prov["train_speakers"] == 3 and prov["heldout_speakers"] == 1
    assert real["clips_per_label"]["yes"] == 8 and real["clips_per_label"]["_unknown_"] == 8
    # held-out = the testing speaker's 8 clips + 1 silence cut from the noise recording
    assert prov["heldout_samples"] == card["metrics"]["samples"] == 9 and prov["train_samples"] == 24 + 2
    assert card["metrics"]["labels"][-1] == "_silence_"


def test_speech_devices_are_speakers(speech_dir: Path) -> None:
    from firmware_models.usecases import get_use_case

    uc = get_use_case("keywords", data=speech_dir)
    train = uc.devices("train", 3, samples_per_device=24, seed=0)
    held = uc.devices("heldout", 1, samples_per_device=12, seed=0)
    assert [d.meta["speaker"] for d in train] == list(SPEAKERS[:3]) and held[0].meta["speaker"] == SPEAKERS[3]
    d = train[0]
    assert d.x.shape == (24, 49, 40, 1) and np.isfinite(d.x).all()
    assert (d.y == 11).sum() == 2 and set(d.y[d.y != 11].tolist()) == {0, 1, 2, 10}    # silence, yes/no/up, unknown
    assert len({x.tobytes() for x in d.x}) == 24                     # repeats are time-shifted, not copies


@pytest.mark.parametrize(("how", "where", "problem"), [
    ("bad wav", "{d}/no/3b4f9e1c_nohash_1.wav: ", "not a readable PCM wav"),
    ("bad list", "{d}/testing_list.txt:1: ", "expected '<word>/<file>.wav'"),
    ("no keyword", "{d}: ", "none of the keyword folders"),
])
def test_keywords_bad_speech_commands_is_one_line_and_writes_nothing(cli: Cli, tmp_path: Path, how: str, where: str,
                                                                     problem: str) -> None:
    data = tmp_path / "sc"
    write_speech_commands(data)
    if how == "bad wav":
        (data / "no" / "3b4f9e1c_nohash_1.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
    elif how == "bad list":
        (data / "testing_list.txt").write_text("no-slash.wav\n")
    elif how == "no keyword":
        for w in ("yes", "no", "up"):
            (data / w).rename(data / f"x{w}")
    out = tmp_path / "out"
    proc = cli("models", "build", "keywords", "--data", str(data), "--quick", "--out", str(out), "--json")
    assert problem in _one_error_line(proc, where.format(d=data))
    assert not out.exists()

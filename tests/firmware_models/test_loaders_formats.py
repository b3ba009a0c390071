"""Loaders of the real data sets' on-disk formats, tested on tiny files written in those formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from firmware_models.datasets.omniglot import load_omniglot
from firmware_models.datasets.speech_commands import load_speech_commands
from firmware_models.datasets.uci_occupancy import load_uci_occupancy
from firmware_models.exceptions import DatasetError
from firmware_models.features import SAMPLE_RATE, write_wav

UCI_HEADER = '"date","Temperature","Humidity","Light","CO2","HumidityRatio","Occupancy"\n'


def _omniglot(root: Path) -> None:
    from PIL import Image

    for a, alphabet in enumerate(("Alphabet_of_the_Magi", "Futurama")):
        for c in (1, 2):
            folder = root / alphabet / f"character{c:02d}"
            folder.mkdir(parents=True)
            for drawer in (1, 2, 3):
                img = np.full((105, 105), 255, np.uint8)
                img[20 + 10 * c:40 + 10 * c, 30 + 5 * a:80] = 0      # black strokes on white, as in Omniglot
                Image.fromarray(img).convert("1").save(folder / f"{a * 20 + c:04d}_{drawer:02d}.png")


def test_omniglot_layout_is_read_with_labels_drawers_and_ink_up(tmp_path: Path) -> None:
    _omniglot(tmp_path)
    data = load_omniglot(tmp_path)
    assert data.images.shape == (12, 28, 28) and data.images.dtype == np.float32
    assert data.class_names == ["Alphabet_of_the_Magi/character01", "Alphabet_of_the_Magi/character02",
                                "Futurama/character01", "Futurama/character02"]
    assert list(np.bincount(data.labels)) == [3, 3, 3, 3]
    assert sorted(set(data.drawers.tolist())) == [1, 2, 3]
    assert data.images.max() > 0.9 and np.median(data.images) < 0.1     # ink = 1, paper = 0


def test_omniglot_errors_name_the_broken_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="Omniglot folder not found"):
        load_omniglot(tmp_path / "nope")
    _omniglot(tmp_path)
    bad = tmp_path / "Futurama" / "character02" / "0022_01.png"
    bad.write_bytes(b"\x89PNG broken")
    with pytest.raises(DatasetError, match=r"0022_01\.png: not a readable image"):
        load_omniglot(tmp_path)
    empty = tmp_path / "Futurama" / "character03"
    empty.mkdir()
    bad.unlink()
    with pytest.raises(DatasetError, match=r"character03: no \.png files"):
        load_omniglot(tmp_path)


def _speech_commands(root: Path) -> None:
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    for w, word in enumerate(("yes", "no")):
        (root / word).mkdir(parents=True)
        for spk in ("0a7c2a8d", "3b4f9e1c"):
            write_wav(root / word / f"{spk}_nohash_0.wav", 0.3 * np.sin(2 * np.pi * (300 + 200 * w) * t), SAMPLE_RATE)
    write_wav(root / "no" / "5c8a_nohash_1.wav", 0.3 * np.sin(2 * np.pi * 500 * t[:8000]), 8000)  # other rate
    (root / "_background_noise_").mkdir()
    write_wav(root / "_background_noise_" / "white_noise.wav", np.random.default_rng(0).normal(0, 0.1, 32000),
              SAMPLE_RATE)
    (root / "validation_list.txt").write_text("yes/3b4f9e1c_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("no/0a7c2a8d_nohash_0.wav\n")


def test_speech_commands_layout_with_split_lists_and_resampling(tmp_path: Path) -> None:
    _speech_commands(tmp_path)
    clips = load_speech_commands(tmp_path)
    assert clips.waves.shape == (5, SAMPLE_RATE)
    assert clips.words == ["no", "no", "no", "yes", "yes"]
    assert clips.speakers == ["0a7c2a8d", "3b4f9e1c", "5c8a", "0a7c2a8d", "3b4f9e1c"]
    assert clips.splits == ["testing", "training", "training", "training", "validation"]
    assert len(clips.noise) == 1 and len(clips.noise[0]) == 32000


def test_speech_commands_errors_name_the_file(tmp_path: Path) -> None:
    _speech_commands(tmp_path)
    (tmp_path / "testing_list.txt").write_text("just-a-name\n")
    with pytest.raises(DatasetError, match=r"testing_list\.txt:1: expected '<word>/<file>\.wav'"):
        load_speech_commands(tmp_path)
    (tmp_path / "testing_list.txt").write_text("")
    (tmp_path / "yes" / "0a7c2a8d_nohash_0.wav").write_bytes(b"RIFF....garbage")
    with pytest.raises(DatasetError, match=r"0a7c2a8d_nohash_0\.wav: not a readable PCM wav"):
        load_speech_commands(tmp_path)
    with pytest.raises(DatasetError, match=r"stop: word folder not found"):
        load_speech_commands(tmp_path, words=["stop"])


def test_uci_csv_with_quoted_row_ids(tmp_path: Path) -> None:
    path = tmp_path / "datatraining.txt"
    path.write_text(UCI_HEADER
                    + '"1","2015-02-04 17:51:00",23.18,27.272,426,721.25,0.00479298817650529,1\n'
                    + '"2","2015-02-04 17:52:00",23.15,27.2675,429.5,714,0.00478344094931065,1\n'
                    + '"3","2015-02-04 17:53:00",23.15,27.245,426,713.5,0.00477946352442199,0\n')
    log = load_uci_occupancy(path)
    assert log.room == "datatraining"
    np.testing.assert_allclose(log.minutes, [0, 1, 2])
    np.testing.assert_allclose(log.values[0, :4], [721.25, 23.18, 27.272, 426.0])   # co2, T, RH, light
    assert np.isnan(log.values[:, 4]).all()                                         # no motion sensor
    assert log.occupied.tolist() == [1, 1, 0]


@pytest.mark.parametrize(("body", "message"), [
    ('"date","Temp"\n', r"x\.txt:1: expected header"),
    (UCI_HEADER + '"1","2015-02-04 17:51:00",23.18,27.2,426,abc,0.0047,1\n', r"x\.txt:2: column 'CO2' is not a number"),
    (UCI_HEADER + '"1","04/02/2015",23.18,27.2,426,721,0.0047,1\n', r"x\.txt:2: bad date"),
    (UCI_HEADER + '"1","2015-02-04 17:51:00",23.18,27.2,426,721,0.0047,2\n',
     r"x\.txt:2: column 'Occupancy' must be 0 or 1"),
    (UCI_HEADER + '"1","2015-02-04 17:51:00",23.18\n', r"x\.txt:2: expected 7 columns"),
    (UCI_HEADER, r"x\.txt: no data rows"),
])
def test_uci_malformed_rows_name_file_and_line(tmp_path: Path, body: str, message: str) -> None:
    (tmp_path / "x.txt").write_text(body)
    with pytest.raises(DatasetError, match=message):
        load_uci_occupancy(tmp_path / "x.txt")

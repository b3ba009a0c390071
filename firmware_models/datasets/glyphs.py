"""Omniglot-style handwritten characters rendered from installed fonts, one style per writer.

Why fonts: no data may be downloaded at run time, yet the characters task needs hundreds of
classes from many scripts drawn by many hands. Debian's fonts-noto-core has glyphs for dozens of
scripts; each synthetic *writer* draws them with a pen of its own (stroke width, slant, rotation,
size, a personal elastic deformation per character) plus per-sample jitter and sensor noise. As
in Omniglot, whole scripts are held out: meta-test characters come from alphabets never seen in
pretraining.

Rendering needs Pillow and fontTools (both installed with matplotlib), never TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from firmware_models.exceptions import DatasetError

IMAGE_SIZE = 28
_CANVAS = 64           # distortions are applied at this resolution, then box-downsampled to 28
_GLYPH_BOX = 44        # the glyph's longest side on the canvas before the writer's scaling
_RENDER_SIZE = 56      # font size in px for the master rendering
FONT_DIRS = (Path("/usr/share/fonts/truetype/noto"), Path("/usr/share/fonts/truetype/dejavu"),
             Path("/usr/share/fonts/opentype/noto"))

# (script, font file candidates, code point ranges (start, stop inclusive)); order is part of the data.
_SCRIPTS: tuple[tuple[str, tuple[str, ...], tuple[tuple[int, int], ...]], ...] = (
    ("Latin", ("NotoSans-Regular.ttf", "DejaVuSans.ttf"), ((0x41, 0x5A),)),
    ("Greek", ("NotoSans-Regular.ttf", "DejaVuSans.ttf"), ((0x3B1, 0x3C1), (0x3C3, 0x3C9))),
    ("Cyrillic", ("NotoSans-Regular.ttf", "DejaVuSans.ttf"), ((0x411, 0x411), (0x413, 0x414), (0x416, 0x419),
                                                               (0x41B, 0x41B), (0x41F, 0x41F), (0x424, 0x42F))),
    ("Armenian", ("NotoSansArmenian-Regular.ttf",), ((0x531, 0x556),)),
    ("Georgian", ("NotoSansGeorgian-Regular.ttf",), ((0x10D0, 0x10F0),)),
    ("Hebrew", ("NotoSansHebrew-Regular.ttf",), ((0x5D0, 0x5EA),)),
    ("Devanagari", ("NotoSansDevanagari-Regular.ttf",), ((0x905, 0x914), (0x915, 0x939))),
    ("Ethiopic", ("NotoSansEthiopic-Regular.ttf",), ((0x1200, 0x1357),)),
    ("Cherokee", ("NotoSansCherokee-Regular.ttf",), ((0x13A0, 0x13F4),)),
    ("Runic", ("NotoSansRunic-Regular.ttf",), ((0x16A0, 0x16EA),)),
    ("Canadian_Aboriginal", ("NotoSansCanadianAboriginal-Regular.ttf",), ((0x1401, 0x166C),)),
    ("Bengali", ("NotoSansBengali-Regular.ttf",), ((0x985, 0x9B9),)),
    ("Tamil", ("NotoSansTamil-Regular.ttf",), ((0xB85, 0xBB9),)),
    ("Thai", ("NotoSansThai-Regular.ttf",), ((0xE01, 0xE2E),)),
    ("Gothic", ("NotoSansGothic-Regular.ttf",), ((0x10330, 0x1034A),)),
    ("NKo", ("NotoSansNKo-Regular.ttf",), ((0x7CA, 0x7EA),)),
    ("Bamum", ("NotoSansBamum-Regular.ttf",), ((0xA6A0, 0xA6EF),)),
    # meta-test (evaluation) scripts: never used for pretraining or federated training
    ("Tifinagh", ("NotoSansTifinagh-Regular.ttf",), ((0x2D30, 0x2D67),)),
    ("Glagolitic", ("NotoSansGlagolitic-Regular.ttf",), ((0x2C00, 0x2C2E),)),
    ("Gujarati", ("NotoSansGujarati-Regular.ttf",), ((0xA85, 0xAB9),)),
    ("Osmanya", ("NotoSansOsmanya-Regular.ttf",), ((0x10480, 0x1049D),)),
    ("Vai", ("NotoSansVai-Regular.ttf",), ((0xA500, 0xA62B),)),
    ("Adlam", ("NotoSansAdlam-Regular.ttf",), ((0x1E900, 0x1E921),)),
)
TEST_SCRIPTS = frozenset({"Tifinagh", "Glagolitic", "Gujarati", "Osmanya", "Vai", "Adlam"})
MAX_PER_SCRIPT = 30
N_WRITERS = 30         # writers 0..19 train, 20..29 held out
N_TRAIN_WRITERS = 20


@dataclass(frozen=True)
class GlyphClass:
    """One character class: a code point of a script, drawn from `font`."""

    script: str
    char: str
    font: str

    @property
    def name(self) -> str:
        return f"{self.script}/U+{ord(self.char):04X}"


@dataclass(frozen=True)
class WriterStyle:
    """How one writer holds the pen; constant over all characters the writer draws."""

    writer: int
    stroke: int            # extra outline width in master-render pixels
    slant: float           # horizontal shear
    rotation: float        # degrees
    scale: float
    aspect: float
    elastic: float         # amplitude (canvas px) of the personal deformation per character
    jitter: float          # how much two drawings of one character by this writer differ
    noise: float           # additive Gaussian noise sigma on the 28x28 image
    ink: float             # stroke darkness in (0, 1]


def _find_font(candidates: tuple[str, ...]) -> Path | None:
    for name in candidates:
        for d in FONT_DIRS:
            if (d / name).is_file():
                return d / name
    return None


def _spread(items: list[int], k: int) -> list[int]:
    """At most k items evenly spread over the list (keeps the choice deterministic)."""
    if len(items) <= k:
        return items
    idx = np.linspace(0, len(items) - 1, k).round().astype(int)
    return [items[i] for i in idx]


@lru_cache(maxsize=1)
def glyph_catalogue(max_per_script: int = MAX_PER_SCRIPT) -> tuple[GlyphClass, ...]:
    """All character classes available on this machine, deduplicated, in a fixed order.

    A code point is kept when its script's font maps it, it renders with visible ink, and its clean
    28x28 image is not a near-copy (correlation > 0.93) of a glyph already kept (Latin 'A' vs
    Greek 'A' vs Cyrillic 'A').
    """
    from fontTools.ttLib import TTFont

    classes: list[GlyphClass] = []
    kept: list[np.ndarray] = []
    scripts_found = 0
    for script, candidates, ranges in _SCRIPTS:
        font = _find_font(candidates)
        if font is None:
            continue
        cmap = TTFont(str(font), lazy=True, fontNumber=0).getBestCmap()
        points = [cp for a, b in ranges for cp in range(a, b + 1) if cp in cmap]
        added = 0
        for cp in _spread(points, 3 * max_per_script):
            if added >= max_per_script:
                break
            glyph = GlyphClass(script, chr(cp), str(font))
            master = _master(glyph)
            if master is None:
                continue
            small = _to_28(master)
            v = small.ravel() - small.mean()
            v /= np.linalg.norm(v) + 1e-9
            if kept and float(np.max(np.stack(kept) @ v)) > 0.93:
                continue
            kept.append(v)
            classes.append(glyph)
            added += 1
        scripts_found += added > 0
    if scripts_found < 5:
        raise DatasetError(f"only {scripts_found} scripts have fonts in {', '.join(map(str, FONT_DIRS))}; "
                           "install fonts-noto-core")
    return tuple(classes)


def split_classes(catalogue: tuple[GlyphClass, ...]) -> tuple[list[GlyphClass], list[GlyphClass]]:
    """Meta-train classes (background scripts) and meta-test classes (evaluation scripts)."""
    train = [g for g in catalogue if g.script not in TEST_SCRIPTS]
    test = [g for g in catalogue if g.script in TEST_SCRIPTS]
    return train, test


@lru_cache(maxsize=8)
def _font(path: str, size: int):  # noqa: ANN202 - PIL type
    from PIL import ImageFont

    return ImageFont.truetype(path, size)


@lru_cache(maxsize=4096)
def _master_cached(script: str, char: str, font: str, stroke: int) -> np.ndarray | None:
    from PIL import Image, ImageDraw

    img = Image.new("L", (2 * _RENDER_SIZE, 2 * _RENDER_SIZE), 0)
    draw = ImageDraw.Draw(img)
    draw.text((_RENDER_SIZE // 3, _RENDER_SIZE // 3), char, font=_font(font, _RENDER_SIZE), fill=255,
              stroke_width=stroke, stroke_fill=255)
    box = img.getbbox()
    if box is None:
        return None
    crop = img.crop(box)
    w, h = crop.size
    if max(w, h) < 8 or np.asarray(crop).mean() < 8:
        return None
    f = _GLYPH_BOX / max(w, h)
    crop = crop.resize((max(2, round(w * f)), max(2, round(h * f))), Image.Resampling.LANCZOS)
    canvas = np.zeros((_CANVAS, _CANVAS), np.float32)
    cw, ch = crop.size
    x0, y0 = (_CANVAS - cw) // 2, (_CANVAS - ch) // 2
    canvas[y0:y0 + ch, x0:x0 + cw] = np.asarray(crop, np.float32) / 255.0
    canvas.setflags(write=False)
    return canvas


def _master(glyph: GlyphClass, stroke: int = 0) -> np.ndarray | None:
    return _master_cached(glyph.script, glyph.char, glyph.font, stroke)


def _to_28(canvas: np.ndarray) -> np.ndarray:
    """Box-downsample a 64x64 canvas to 28x28 (area average, what a scanner does)."""
    from PIL import Image

    img = Image.fromarray(np.clip(canvas * 255.0, 0, 255).astype(np.uint8))
    return np.asarray(img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX), np.float32) / 255.0


def writer_style(writer: int, seed: int = 0) -> WriterStyle:
    """The pen of writer `writer` (deterministic in `seed` and `writer`)."""
    rng = np.random.default_rng([seed, 7919, writer])
    return WriterStyle(
        writer=writer,
        stroke=int(rng.integers(0, 3)),
        slant=float(rng.uniform(-0.35, 0.35)),
        rotation=float(rng.uniform(-12.0, 12.0)),
        scale=float(rng.uniform(0.78, 1.08)),
        aspect=float(rng.uniform(0.85, 1.15)),
        elastic=float(rng.uniform(1.5, 4.0)),
        jitter=float(rng.uniform(0.6, 1.0)),
        noise=float(rng.uniform(0.0, 0.08)),
        ink=float(rng.uniform(0.7, 1.0)),
    )


def _smooth_field(rng: np.random.Generator, amplitude: float, grid: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random displacement field: random offsets on a coarse grid, bilinearly upsampled."""
    coarse = rng.normal(0.0, amplitude, size=(2, grid, grid))
    pos = np.linspace(0, grid - 1, _CANVAS)
    i0 = np.clip(np.floor(pos).astype(int), 0, grid - 2)
    t = pos - i0
    rows = coarse[:, i0, :] * (1 - t)[None, :, None] + coarse[:, i0 + 1, :] * t[None, :, None]
    full = rows[:, :, i0] * (1 - t)[None, None, :] + rows[:, :, i0 + 1] * t[None, None, :]
    return full[0], full[1]


def _warp(canvas: np.ndarray, matrix: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Sample `canvas` at affine(matrix) + displacement positions with bilinear interpolation."""
    yy, xx = np.mgrid[0:_CANVAS, 0:_CANVAS].astype(np.float64)
    c = (_CANVAS - 1) / 2.0
    u, v = xx - c, yy - c
    sx = matrix[0, 0] * u + matrix[0, 1] * v + matrix[0, 2] + c + dx
    sy = matrix[1, 0] * u + matrix[1, 1] * v + matrix[1, 2] + c + dy
    x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
    fx, fy = sx - x0, sy - y0
    pad = np.pad(canvas, 1)
    def at(yi: np.ndarray, xi: np.ndarray) -> np.ndarray:
        return pad[np.clip(yi + 1, 0, _CANVAS + 1), np.clip(xi + 1, 0, _CANVAS + 1)]
    return ((1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1))
            + fy * ((1 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1))).astype(np.float32)


def render(glyph: GlyphClass, style: WriterStyle, *, sample: int = 0, seed: int = 0) -> np.ndarray:
    """One handwritten sample of `glyph` by `style`'s writer: float32 (28, 28), ink = 1, paper = 0.

    The writer's personal deformation of this character is fixed by (seed, writer, character);
    `sample` adds the small variation between two drawings by the same hand.
    """
    personal = np.random.default_rng([seed, style.writer, ord(glyph.char), 1])
    rng = np.random.default_rng([seed, style.writer, ord(glyph.char), 2, sample])
    stroke = int(np.clip(style.stroke + rng.integers(-1, 2), 0, 3))      # pen pressure varies per drawing
    master = _master(glyph, stroke)
    if master is None:
        raise DatasetError(f"{glyph.name}: glyph does not render from {glyph.font}")
    j = style.jitter
    angle = np.deg2rad(style.rotation + personal.normal(0, 4.0) + rng.normal(0, 10.0 * j))
    scale = style.scale * (1 + rng.normal(0, 0.12 * j))
    shear = style.slant + rng.normal(0, 0.2 * j)
    aspect = style.aspect * (1 + rng.normal(0, 0.1 * j))
    fwd = (np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
           @ np.array([[1.0, shear], [0.0, 1.0]])
           @ np.diag([scale * aspect, scale / aspect]))
    inv = np.linalg.inv(fwd)
    shift = rng.normal(0, 3.0 * j + 0.5, size=2)
    matrix = np.array([[inv[0, 0], inv[0, 1], -shift[0]], [inv[1, 0], inv[1, 1], -shift[1]]])
    pdx, pdy = _smooth_field(personal, style.elastic)
    jdx, jdy = _smooth_field(rng, style.elastic * (0.5 + j))
    warped = _warp(master, matrix, pdx + jdx, pdy + jdy)
    img = _to_28(warped) * style.ink
    img += rng.normal(0.0, style.noise, img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0).astype(np.float32)

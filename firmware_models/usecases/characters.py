"""Handwritten characters: Omniglot-style few-shot classification of brand-new characters.

Data: glyphs of 23 scripts rendered from installed fonts, drawn by 30 synthetic writers
(`firmware_models.datasets.glyphs`); or real Omniglot (`firmware_models.datasets.omniglot`).
A device is a writer doing 5-way episodes: its samples are its own drawings of 5 characters,
labelled 0..4. Training devices use background scripts and writers 0..19; held-out devices use
evaluation scripts (characters never seen in pretraining) and writers 20..29.

Model: a frozen int8 CNN backbone (28x28x1 -> 64 features), pretrained as a classifier over all
training characters, plus a small float head 64 -> 32 -> 5 that a device trains from a few shots.
Federated meta-learning learns that head's initialization; here it starts from Glorot weights.
The card reports 5-way 1-shot and 5-shot nearest-centroid accuracy of float vs int8 features on
held-out writers and characters (head training is measured by `benchmarks.models`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from firmware_models.datasets import glyphs
from firmware_models.datasets.omniglot import OmniglotSplit, load_omniglot_split
from firmware_models.usecases import characters_real
from firmware_models.usecases.base import ARTIFACT_BACKBONE, ARTIFACT_CARD, DeviceData, ProgressFn, Split, UseCase
from firmware_models.usecases.real_data import real_provenance

N_WAY = 5
FEATURES = 64
HEAD_HIDDEN = 32
_SPLIT_STREAM = {"train": 0, "heldout": 1}


def _writers(split: Split) -> list[int]:
    return list(range(glyphs.N_TRAIN_WRITERS)) if split == "train" else \
        list(range(glyphs.N_TRAIN_WRITERS, glyphs.N_WRITERS))


def _classes(split: Split) -> list[glyphs.GlyphClass]:
    train, test = glyphs.split_classes(glyphs.glyph_catalogue())
    return train if split == "train" else test


def render_set(classes: list[glyphs.GlyphClass], writers: list[int], samples: int, *, seed: int,
               first_sample: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every class by every writer, `samples` drawings each: x (n, 28, 28, 1), class index, writer."""
    xs, ys, ws = [], [], []
    for ci, g in enumerate(classes):
        for w in writers:
            style = glyphs.writer_style(w, seed)
            for s in range(first_sample, first_sample + samples):
                xs.append(glyphs.render(g, style, sample=s, seed=seed))
                ys.append(ci)
                ws.append(w)
    return np.stack(xs)[..., None], np.asarray(ys, np.int64), np.asarray(ws, np.int64)


def episode(classes: list[glyphs.GlyphClass], writer: int, n_way: int, k_shot: int, n_query: int,
            rng: np.random.Generator, *, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One writer's N-way K-shot episode: support (n_way*k_shot) and query (n_way*n_query) drawings."""
    chosen = rng.choice(len(classes), size=n_way, replace=False)
    style = glyphs.writer_style(writer, seed)
    sx: list[np.ndarray] = []
    qx: list[np.ndarray] = []
    sy: list[int] = []
    qy: list[int] = []
    for label, ci in enumerate(chosen):
        for s in range(k_shot + n_query):
            img = glyphs.render(classes[int(ci)], style, sample=s, seed=seed)[..., None]
            (sx if s < k_shot else qx).append(img)
            (sy if s < k_shot else qy).append(label)
    return np.stack(sx), np.asarray(sy, np.int64), np.stack(qx), np.asarray(qy, np.int64)


def build_backbone(keras: Any, n_features: int = FEATURES) -> Any:
    """28x28x1 -> conv16 -> pool -> conv32 -> pool -> conv64 -> pool -> conv64 -> global average -> features."""
    layers = keras.layers
    inp = keras.Input((glyphs.IMAGE_SIZE, glyphs.IMAGE_SIZE, 1))
    x = inp
    for i, width in enumerate((16, 32, 48, n_features)):
        x = layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        if i < 3:
            x = layers.MaxPooling2D(2)(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, x, name="characters_backbone")


class CharactersUseCase(UseCase):
    """Few-shot handwritten characters; a device is one writer's 5-way task."""

    name = "characters"
    kind = "classification"
    sensors = ("camera", "touchscreen")
    input_shape = (glyphs.IMAGE_SIZE, glyphs.IMAGE_SIZE, 1)
    description = ("Omniglot-style 5-way few-shot handwritten characters (font-rendered glyphs of 23 scripts, "
                   "30 writers); int8 CNN backbone 28x28 -> 64 features, float head 64-32-5.")
    real_dataset = "Omniglot"

    def _load_real(self, path: Path) -> OmniglotSplit:
        return load_omniglot_split(path, min_classes=N_WAY)

    def devices(self, split: Split, n_devices: int, *, samples_per_device: int, seed: int = 0) -> list[DeviceData]:
        """Writers' 5-way tasks; labels cycle 0..4 so every device is balanced.

        Device i of a split is writer `writers[i % len(writers)]` with its own 5 characters of the
        split (background scripts for "train", evaluation scripts for "heldout").
        """
        if split not in _SPLIT_STREAM:
            raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
        if self.data is not None:    # real Omniglot: device i = drawer i of the split
            return characters_real.real_devices(self.load_real(), split, n_devices, samples_per_device, seed,
                                                _SPLIT_STREAM[split], N_WAY, str(self.data))
        classes, writers = _classes(split), _writers(split)
        out = []
        for i in range(int(n_devices)):
            rng = np.random.default_rng([int(seed), _SPLIT_STREAM[split], i])
            writer = writers[i % len(writers)]
            chosen = rng.choice(len(classes), size=N_WAY, replace=False)
            style = glyphs.writer_style(writer, seed)
            x, y = [], []
            for j in range(int(samples_per_device)):
                label = j % N_WAY
                x.append(glyphs.render(classes[int(chosen[label])], style, sample=j // N_WAY, seed=seed))
                y.append(label)
            out.append(DeviceData(f"writer-{split}-{i:03d}", np.stack(x)[..., None].astype(np.float32),
                                  np.asarray(y, np.int64),
                                  {"writer": writer, "classes": [classes[int(c)].name for c in chosen]}))
        return out

    def build(self, out_dir: Path, *, seed: int = 0, quick: bool = False,
              progress: ProgressFn | None = None) -> dict[str, Any]:
        """Pretrain the backbone on training characters/writers, convert, measure few-shot, export."""
        from firmware_models.build import export_artifacts
        from firmware_models.card import write_card
        from firmware_models.usecases import training

        cfg: dict[str, Any] = {"samples_per_writer": 1, "epochs": 2 if quick else 14, "batch_size": 64,
                               "learning_rate": 3e-3, "episodes": 10 if quick else 200, "n_query": 5,
                               "seed": int(seed)}
        step = progress or (lambda stage, frac: None)
        t0 = time.perf_counter()
        if self.data is None:
            step("render glyphs", 0.0)
            train_classes, test_classes = _classes("train"), _classes("heldout")
            if quick:
                train_classes = train_classes[::8]
            writers = _writers("train")[: 6 if quick else None]
            x, y, _ = render_set(train_classes, writers, cfg["samples_per_writer"], seed=seed)
            n_classes = len(train_classes)
            data_prov: dict[str, Any] = {
                "generator": "firmware_models.datasets.glyphs",
                "train_classes": n_classes, "test_classes": len(test_classes),
                "train_scripts": sorted({g.script for g in train_classes}),
                "test_scripts": sorted({g.script for g in test_classes}),
                "train_writers": len(writers), "heldout_writers": len(_writers("heldout"))}
            heldout_writers = _writers("heldout")
            max_shots = cfg["n_query"] + 5

            def make_episodes(k: int, n_query: int, rng: np.random.Generator) -> list[Any]:
                return [episode(test_classes, heldout_writers[e % len(heldout_writers)], N_WAY, k, n_query,
                                rng, seed=seed) for e in range(cfg["episodes"])]
        else:
            step("read Omniglot", 0.0)
            real: OmniglotSplit = self.load_real()
            x, y, names = characters_real.pretrain_set(real, 120 if quick else None)
            n_classes = len(names)
            max_shots = characters_real.drawings_per_heldout_class(real)
            data_prov = real_provenance(
                "Omniglot", self.data, real.files, real.rule, train_classes=n_classes,
                test_classes=len(real.heldout.class_names),
                train_alphabets=sorted(set(real.train.alphabets)), test_alphabets=sorted(set(real.heldout.alphabets)),
                train_drawers=real.train_drawers, heldout_drawers=real.heldout_drawers)

            def make_episodes(k: int, n_query: int, rng: np.random.Generator) -> list[Any]:
                return characters_real.heldout_episodes(real, N_WAY, k, n_query, cfg["episodes"], rng)
        t_data = time.perf_counter() - t0

        keras = training.seed_everything(seed)
        backbone = build_backbone(keras)
        logits = keras.layers.Dense(n_classes)(keras.layers.Dropout(0.2)(backbone.output))
        pretrain = keras.Model(backbone.input, logits)
        t_train = training.fit_classifier(pretrain, x, y, epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                                          learning_rate=cfg["learning_rate"], progress=step,
                                          stage="pretrain backbone", span=(0.05, 0.6))

        # The deployable network: frozen backbone + the initial 5-way head devices start from.
        head = training.glorot_head((FEATURES, HEAD_HIDDEN, N_WAY), seed)
        dense = [keras.layers.Dense(HEAD_HIDDEN, activation="relu"), keras.layers.Dense(N_WAY)]
        model = keras.Model(backbone.input, dense[1](dense[0](backbone.output)), name="characters")
        dense[0].set_weights(head[:2])
        dense[1].set_weights(head[2:])

        pretrain_acc = float(pretrain.evaluate(x, y, verbose=0, batch_size=256)[1])

        def on_export(stage: str, frac: float) -> None:
            step(stage, 0.6 + 0.25 * frac)

        card = export_artifacts(
            out_dir, self.name, model, x, task=self.name, kind=self.kind, head_weights=head,
            backbone_model=backbone, description=self.description, sensors=self.sensors,
            provenance={**data_prov, "seed": int(seed), "quick": bool(quick), "train_samples": int(len(x)),
                        "training": {k: cfg[k] for k in ("epochs", "batch_size", "learning_rate")},
                        "render_seconds": round(t_data, 3), "train_seconds": round(t_train, 3)},
            progress=on_export)

        step("few-shot episodes (held-out writers x evaluation scripts)", 0.86)
        backbone_int8 = (Path(out_dir) / self.name / ARTIFACT_BACKBONE).read_bytes()
        rng = np.random.default_rng([int(seed), 99])
        fewshot: dict[str, Any] = {"float": {}, "int8": {}, "method": "nearest class mean of L2-normalised "
                                   "backbone features, held-out writers x evaluation scripts" if self.data is None
                                   else "nearest class mean of L2-normalised backbone features, held-out "
                                   "alphabets, support and query by different drawers"}
        shots = [k for k in (1, 5) if k < max_shots]   # a real set may have too few drawings for 5 shots
        for k in shots:
            eps = make_episodes(k, min(cfg["n_query"], max_shots - k), rng)
            fewshot["float"][f"{N_WAY}way_{k}shot"] = training.episode_accuracy(
                lambda a: training.keras_features(backbone, a), eps)
            fewshot["int8"][f"{N_WAY}way_{k}shot"] = training.episode_accuracy(
                lambda a: training.tflite_features(backbone_int8, a), eps)
        headline = f"{N_WAY}way_{shots[-1]}shot"
        card["metrics"].update({
            "float": {"accuracy": fewshot["float"][headline]["accuracy"]},
            "int8": {"accuracy": fewshot["int8"][headline]["accuracy"]},
            "metric": f"{N_WAY}-way {shots[-1]}-shot nearest-centroid accuracy on held-out "
                      + ("writers and scripts" if self.data is None else "Omniglot alphabets"),
            "few_shot": fewshot, "pretrain_train_accuracy": pretrain_acc})
        write_card(card, Path(out_dir) / self.name / ARTIFACT_CARD)
        step("done", 1.0)
        return card

"""The open sets in ../shared/data/segmentation load through the training data path.

Skipped cleanly when the shared data is absent (set GEOSEG_TEST_DATA to point elsewhere).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from geoseg.training.config import TrainConfig
from geoseg.training.data import ChipDataset, build_training_data
from tests.conftest import REPO, shared_data

DATA = shared_data()
SETS = ("dubai", "agoro-fields", "spacenet-rio")

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(
        DATA is None or not all((DATA / "segmentation" / s).is_dir() for s in SETS),
        reason="needs ../shared/data/segmentation (or $GEOSEG_TEST_DATA) with dubai, "
        "agoro-fields and spacenet-rio",
    ),
]


def test_example_config_loads_samples_from_every_open_set():
    assert DATA is not None
    example = REPO / "examples" / "train_config.yaml"
    d = TrainConfig.from_yaml(example.read_text(encoding="utf-8"), example.parent).to_dict()
    seg = DATA / "segmentation"
    # the example points at ../shared/data; follow GEOSEG_TEST_DATA wherever it is
    paths = {
        "dubai": (seg / "dubai" / "images", seg / "dubai" / "masks"),
        "agoro-fields": (seg / "agoro-fields" / "images", seg / "agoro-fields" / "fields.gpkg"),
        "spacenet-rio": (seg / "spacenet-rio" / "images", seg / "spacenet-rio" / "buildings.gpkg"),
    }
    for src in d["sources"]:
        images, labels = paths[src["name"]]
        src["images"], src["labels"] = [str(images)], [str(labels)]
    cfg = TrainConfig.from_dict(d)
    data = build_training_data(cfg)

    crs = {s["name"]: {p["crs"] for p in s["parts"]} for s in data.sources}
    assert crs["dubai"] == {"EPSG:32640"}  # placeholder UTM georeference, kept as it is
    assert crs["spacenet-rio"] == {"EPSG:32723"}  # EPSG:4326 tiles sampled in their UTM zone
    assert len(crs["agoro-fields"]) >= 2 and all(
        c.startswith("EPSG:326") for c in crs["agoro-fields"]
    )
    assert {s["validation"] for s in data.sources} == {"files"}

    chips = ChipDataset(data, data.train_queries(0, count=18))
    seen: dict[str, set[int]] = defaultdict(set)
    for i in range(len(chips)):
        item = chips[i]
        name = cfg.sources[item["source"]].name
        assert item["image"].shape == (3, cfg.chip_size, cfg.chip_size)
        assert item["mask"].shape == (cfg.chip_size, cfg.chip_size)
        img = item["image"].numpy()
        assert img.min() >= 0 and img.max() <= 255
        seen[name] |= set(np.unique(item["mask"].numpy()).tolist())
    # each source only ever produces its own classes (plus background and ignore)
    assert seen["dubai"] <= {0, 1, 2, 255} and seen["dubai"] & {1, 2}
    assert seen["agoro-fields"] <= {0, 3, 255} and 3 in seen["agoro-fields"]
    assert seen["spacenet-rio"] <= {0, 1, 255} and 1 in seen["spacenet-rio"]
    assert data.val_queries

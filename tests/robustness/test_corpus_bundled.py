"""Every raster of the shared corpus with the bundled model: answered, correctly, within 60 s.

``corpus_outcomes_bundled.csv`` records what the bundled model (1 m pixels, RGB) must do
with each file of ``../shared/data/rasters``: ``ok``, or ``error`` with a phrase of the one
error line (paths left out). Most of the corpus is far coarser than 1 m and is refused
before any work; the rest is predicted. Each raster must be answered within
:data:`LIMIT_S` seconds (``benchmarks/corpus_walk.py`` prints the times); all of them
take about 20 s in one process. Skips cleanly without ../shared/data.
"""

from __future__ import annotations

import csv
import re
import shlex
import time
from pathlib import Path

import pytest

from geoseg.cli import main
from tests.robustness.test_corpus import _corpus, _files

TABLE = Path(__file__).with_name("corpus_outcomes_bundled.csv")
ARGS = Path(__file__).with_name("corpus_outcomes.csv")
LIMIT_S = 60.0

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(
        _corpus() is None, reason="../shared/data/rasters is absent (set GEOSEG_TEST_DATA)"
    ),
]


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return {row["path"]: row for row in csv.DictReader(f)}


def _plain(text: str) -> str:
    """A message without paths and with single spaces, as the table records phrases."""
    return re.sub(r"\s+", " ", re.sub(r"/\S+", "", text)).strip()


def test_every_corpus_raster_has_a_bundled_outcome():
    missing = sorted(set(_files()) - set(_rows(TABLE)))
    assert not missing, f"add these corpus files to {TABLE.name}: {missing}"


@pytest.mark.parametrize("name", _files())
def test_bundled_model_answers(
    name: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    row = _rows(TABLE)[name]
    extra = _rows(ARGS).get(name, {}).get("args", "")
    out = tmp_path / "out.gpkg"
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        main(["-q", "predict", str(_corpus() / name), "-o", str(out), *shlex.split(extra)])
        raise SystemExit(0)
    seconds = time.perf_counter() - t0
    code = exit_info.value.code or 0
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert seconds < LIMIT_S, f"{name} took {seconds:.1f} s"
    assert not any("Traceback" in line for line in err)
    if row["outcome"] == "ok":
        assert code == 0, err
        assert out.is_file() and (tmp_path / "out_classes.tif").is_file()
        return
    assert code != 0 and len(err) == 1 and err[0].startswith("geoseg: error:"), err
    assert row["expect"] in _plain(err[0]), err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []

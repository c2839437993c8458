"""Walk the shared robustness corpus with the bundled model: outcome and seconds per raster.

Each raster of ``../shared/data/rasters`` runs through ``geoseg -q predict RASTER -o OUT.gpkg``
in its own process (the extra arguments of ``tests/robustness/corpus_outcomes.csv``, e.g. a band
choice for a 1-band raster, the bundled model, default settings) under a time limit. A raster is
*answered* when the command succeeds, or fails with exactly one ``geoseg: error:`` line and no
traceback, within the limit. Prints one Markdown row per raster and a summary::

    python benchmarks/corpus_walk.py [--limit 60] [--model default] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import csv
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TABLE = REPO / "tests" / "robustness" / "corpus_outcomes.csv"
SUFFIXES = {".tif", ".tiff", ".vrt", ".jpg", ".jp2", ".img", ".png"}


def walk(root: Path, model: str, limit: float) -> list[dict[str, object]]:
    with open(TABLE, newline="", encoding="utf-8") as f:
        extra = {row["path"]: row["args"] for row in csv.DictReader(f)}
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    rows: list[dict[str, object]] = []
    for path in files:
        name = str(path.relative_to(root))
        with tempfile.TemporaryDirectory(prefix="geoseg-walk-") as tmp:
            cmd = [
                sys.executable, "-m", "geoseg", "-q", "predict", str(path),
                "-o", str(Path(tmp) / "out.gpkg"), "--model", model,
                *shlex.split(extra.get(name, "")),
            ]  # fmt: skip
            t0 = time.perf_counter()
            try:
                run = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
                seconds = time.perf_counter() - t0
                err = [x for x in run.stderr.splitlines() if x.strip()]
                errors = [x for x in err if x.startswith("geoseg: error:")]
                if run.returncode == 0:
                    outcome, detail = "ok", ""
                elif "Traceback" in run.stderr:
                    outcome, detail = "traceback", (err or ["?"])[-1]
                elif len(errors) == 1 and err[-1] == errors[0]:
                    outcome, detail = "error", errors[0][len("geoseg: error: ") :]
                else:
                    outcome, detail = "unclear", (err or ["(no message)"])[-1]
            except subprocess.TimeoutExpired:
                seconds, outcome, detail = limit, "timeout", f"no answer within {limit:.0f} s"
        rows.append({"path": name, "outcome": outcome, "seconds": seconds, "detail": detail})
        print(f"# {name}: {outcome} {seconds:.1f} s", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--limit", type=float, default=60.0, help="seconds per raster")
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = ap.parse_args()
    root = args.data / "rasters"
    if not root.is_dir():
        sys.exit(f"{root} does not exist; pass --data")
    t0 = time.perf_counter()
    rows = walk(root, args.model, args.limit)
    print("| raster | outcome | seconds | message |")
    print("|---|---|---|---|")
    for r in rows:
        detail = str(r["detail"]).replace("|", "\\|")
        print(f"| {r['path']} | {r['outcome']} | {r['seconds']:.1f} | {detail} |")
    counts: dict[str, int] = {}
    for r in rows:
        counts[str(r["outcome"])] = counts.get(str(r["outcome"]), 0) + 1
    answered = counts.get("ok", 0) + counts.get("error", 0)
    slowest = max(rows, key=lambda r: float(r["seconds"]))  # type: ignore[arg-type]
    print()
    print(
        f"{len(rows)} rasters in {time.perf_counter() - t0:.0f} s: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        + f"; answered within {args.limit:.0f} s: {answered}/{len(rows)}; slowest "
        f"{slowest['path']} {float(slowest['seconds']):.1f} s"  # type: ignore[arg-type]
    )


if __name__ == "__main__":
    main()

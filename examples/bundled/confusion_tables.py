"""Per-source confusion matrices of ``evaluate_heldout.py`` results, as Markdown tables.

Rows are the true classes a source states (its labelled classes, its background, and the
classes it declares absent, which have no pixel of their own), columns the predicted classes;
each cell is the share of the row's pixels.

Usage::

    python examples/bundled/confusion_tables.py runs/bundled-eval [more eval dirs ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def table(metrics: dict) -> str:
    names = metrics["classes"]
    cm = metrics["pixel"]["confusion"]
    lines = [
        "| true \\ predicted | " + " | ".join(names) + " | pixels |",
        "|---" * (len(names) + 2) + "|",
    ]
    for name, row in zip(names, cm, strict=True):
        total = sum(row)
        if total == 0:
            continue
        cells = " | ".join(f"{v / total:.3f}" for v in row)
        lines.append(f"| {name} | {cells} | {total:,} |")
    return "\n".join(lines)


def main() -> None:
    for folder in map(Path, sys.argv[1:]):
        print(f"## {folder}\n")
        for metrics_file in sorted(folder.glob("*/metrics.json")):
            metrics = json.loads(metrics_file.read_text())
            ious = {
                c: round(m["iou"], 3)
                for c, m in metrics["pixel"]["classes"].items()
                if m.get("iou") is not None
            }
            print(f"### {metrics_file.parent.name} ({len(metrics['images'])} images)\n")
            print(table(metrics))
            print(f"\nIoU: {ious}\n")


if __name__ == "__main__":
    main()

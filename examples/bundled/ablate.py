"""Run one recipe ablation of the bundled model and score it on the held-out split.

A row of docs/training.md's ablation table is one call of this script: it takes a base
training config (by default ``finetune_colour.yaml``, the bundled model's last stage, started
from the bundled weights), changes the given keys, trains for a short budget, packages the
last epoch with the bundled card's clean-up (``package.py --dest``) and scores it with
``evaluate_heldout.py`` on the same held-out files as the bundled model (the run stops if its
file split differs from the bundled card's)::

    python examples/bundled/ablate.py runs/ablate/base
    python examples/bundled/ablate.py runs/ablate/nogen --drop-source synthetic
    python examples/bundled/ablate.py runs/ablate/flatcw --set class_weights=[1,1,1,1]
    python examples/bundled/ablate.py runs/ablate/dubai2 --source-weight dubai=2.0

``--set KEY=VALUE`` takes a YAML value; ``--epochs`` (default 4) sets the budget.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BUNDLED = ROOT / "geoseg" / "models" / "bundled" / "default"


def _absolute(value: str, base: Path) -> str:
    return str((base / value).resolve()) if not Path(value).is_absolute() else value


def build_config(args: argparse.Namespace) -> dict:
    base = args.base.resolve()
    cfg = yaml.safe_load(base.read_text(encoding="utf-8"))
    for key in ("encoder_weights", "init_weights"):
        if cfg.get(key):
            cfg[key] = _absolute(cfg[key], base.parent)
    cfg["init_weights"] = str(args.init.resolve())
    for src in cfg["sources"]:
        for key in ("images", "labels"):
            if isinstance(src.get(key), str):
                src[key] = _absolute(src[key], base.parent)
    cfg["sources"] = [s for s in cfg["sources"] if s["name"] not in args.drop_source]
    for item in args.source_weight:
        name, _, weight = item.partition("=")
        hits = [s for s in cfg["sources"] if s["name"] == name]
        if not hits:
            sys.exit(f"ablate: no source named {name!r} in {base.name}")
        hits[0]["weight"] = float(weight)
    for item in args.set:
        key, _, value = item.partition("=")
        cfg[key] = yaml.safe_load(value)
    cfg["epochs"] = args.epochs
    cfg["output"] = str((args.out / "run").resolve())
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="ablation folder: run/, scored/, eval/")
    ap.add_argument("--base", type=Path, default=HERE / "finetune_colour.yaml")
    ap.add_argument("--init", type=Path, default=BUNDLED, help="starting weights")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=YAML")
    ap.add_argument("--drop-source", action="append", default=[], metavar="NAME")
    ap.add_argument("--source-weight", action="append", default=[], metavar="NAME=W")
    ap.add_argument("--sources", default="", help="held-out sources to score (default: all)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cfg = build_config(args)
    config = args.out / "config.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    run = args.out / "run"
    geoseg = [sys.executable, "-m", "geoseg"]
    if (run / "last" / "model_card.json").is_file():
        print(f"ablate: {run} holds a run; resuming it to {args.epochs} epochs")
        subprocess.run([*geoseg, "train", "--resume", str(run)], check=True)
    else:
        subprocess.run([*geoseg, "train", "--config", str(config)], check=True)
    bundled = json.loads((BUNDLED / "model_card.json").read_text())
    trained = json.loads((run / "last" / "model_card.json").read_text())
    held = {s["name"]: sorted(s["held_out"]) for s in bundled["provenance"]["sources"]}
    for src in trained["provenance"]["sources"]:
        files = sorted(Path(f).name for p in src.get("parts", []) for f in p["val_files"])
        if src["name"] in ("dubai", "agoro-fields") and files != held.get(src["name"]):
            sys.exit(f"ablate: {src['name']} held-out files differ from the bundled model's")
    scored = args.out / "scored"
    subprocess.run(
        [sys.executable, str(HERE / "package.py"), str(run / "last"), "--dest", str(scored)],
        check=True,
    )
    subprocess.run(
        [
            sys.executable,
            str(HERE / "evaluate_heldout.py"),
            str(scored),
            str(args.out / "eval"),
            *(["--sources", args.sources] if args.sources else []),
        ],
        check=True,
    )


if __name__ == "__main__":
    main()

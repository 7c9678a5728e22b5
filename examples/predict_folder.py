"""Score a folder of face captures (RGB with optional Depth / IR) and write a CSV of scores and decisions.

    python examples/predict_folder.py --model user/bigmoe-fas --inputs captures/ --output scores.csv
    python examples/predict_folder.py --model runs/mmdg/CPS-W/bigmoe/seed42/model --inputs captures/ \\
        --threshold 0.4 --batch_size 32 --device cuda:0

The folder holds either ``<name>_rgb.<ext>`` with optional ``<name>_depth.<ext>`` / ``<name>_ir.<ext>``
files, or ``rgb/``, ``depth/``, ``ir/`` subfolders with files of the same name (png, jpg, bmp, tif, webp).
Every capture needs an RGB image; a missing Depth or IR image is filled and flagged to the model, which
was trained with modality dropout for exactly this.

One CSV row per capture, sorted by name: ``name, rgb, depth, ir`` (the files used; empty when absent),
``live_score`` (softmax probability of *live*), ``decision`` (``live`` when ``live_score >= threshold``,
else ``spoof``), ``threshold`` (the model's ``config.decision_threshold``, fixed on the source domains'
validation split at training time, unless ``--threshold`` is given) and ``modalities`` (e.g. ``rgb+depth``).
The work is done by the package's ``face-anti-spoofing`` pipeline.
"""

from __future__ import annotations

import csv
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser, pipeline

import modeling_bigmoe  # noqa: F401  (registers the model classes and the "face-anti-spoofing" pipeline)
from modeling_bigmoe.cli import collect_captures

COLUMNS = ["name", "rgb", "depth", "ir", "live_score", "decision", "threshold", "modalities"]


@dataclass
class PredictFolderArguments:
    """What to score, with which model, and where the CSV goes."""

    model: str = field(default=None, metadata={"help": "saved model folder or Hub repo id (required)"})
    inputs: str = field(default=None, metadata={"help": "folder of captures (required)"})
    output: str = field(default="predictions.csv", metadata={"help": "CSV file to write"})
    threshold: float | None = field(default=None, metadata={"help": "override the model's decision threshold"})
    batch_size: int = field(default=16, metadata={"help": "captures per forward pass"})
    revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit) to load"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda:0, ... (default: the pipeline's choice)"})


def predict_folder(args: PredictFolderArguments) -> list[dict]:
    """Score every capture of ``args.inputs`` and write ``args.output`` (atomically); returns the rows."""
    if not args.model or not args.inputs:
        raise ValueError("--model and --inputs are required")
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {args.batch_size}")
    captures = collect_captures(args.inputs)
    fas = pipeline("face-anti-spoofing", model=args.model, revision=args.revision, device=args.device)
    samples = [{m: c.get(m) for m in ("rgb", "depth", "ir")} for c in captures]
    extra = {} if args.threshold is None else {"threshold": args.threshold}
    results = fas(samples, batch_size=args.batch_size, **extra)
    rows = [{"name": c["name"], "rgb": c["rgb"], "depth": c.get("depth", ""), "ir": c.get("ir", ""),
             "live_score": f"{r['live_score']:.6f}", "decision": "live" if r["is_live"] else "spoof",
             "threshold": f"{r['threshold']:.6f}", "modalities": "+".join(r["modalities"])}
            for c, r in zip(captures, results, strict=True)]
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    """Command-line entry point."""
    (args,) = HfArgumentParser(PredictFolderArguments).parse_args_into_dataclasses(argv)
    rows = predict_folder(args)
    live = sum(r["decision"] == "live" for r in rows)
    print(f"wrote {len(rows)} rows to {args.output}: {live} live, {len(rows) - live} spoof "
          f"(score >= threshold => live)")
    return rows


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"predict_folder.py: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

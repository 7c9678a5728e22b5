"""Synthetic Protocol 1 over several seeds: the demo's BIG-MoE against its baseline, honest mean ± std.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_protocol.py --threads 1      # 4 folds x 2 models x 3 seeds
    .venv/bin/python benchmarks/bench_protocol.py --quick                           # smoke run (1 fold, 1 epoch)

The benchmark is loaded exactly as ``bigmoe-fas demo`` loads it (``load_synthetic_benchmark`` with the default
sizes: 4 domains x 600 rows at 64 px, data seed 0), the models are the demo's (``DEMO_MODEL_OVERRIDES``) and so is
the training recipe (``DEMO_TRAINING``); only the training seeds vary (default 1, 2, 3). ``run_protocol`` trains
one model per (fold, model, seed) and fixes each run's decision threshold on the source domains' validation split.

Reported per model (frame level, target-domain test, all modalities):

* honest HTER (threshold from source validation) and AUC: mean ± std over all (fold, seed) runs;
* the std of the per-seed means (each seed's mean over the folds): the seed-to-seed noise of a P1 table;
* per fold: mean ± std over the seeds;
* HTER (oracle): the target test set's own EER threshold, as papers report it; for comparison only.

Every std is the sample standard deviation (ddof = 1). Outputs in ``--output-dir``: ``bench_protocol.md``,
``bench_protocol.json``, ``bench_protocol.png`` (per fold, the AUC of every seed as points and the mean as a bar;
copied to ``--docs-figure``), plus ``run_protocol``'s own per-run folders and ``summary.*``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modeling_bigmoe import cli as demo_cli
from modeling_bigmoe.cli import DEMO_MODEL_OVERRIDES, DEMO_TRAINING
from modeling_bigmoe.runner import MODEL_CHOICES, model_spec, run_protocol

METRICS = (("hter", "HTER %"), ("auc", "AUC %"), ("oracle_hter", "HTER % (oracle)"))
QUICK = {"samples_per_domain": 48, "targets": ["C"], "epochs": 1.0}


def demo_overrides(name: str, overrides=None) -> dict:
    """The demo's config overrides for model ``name``.

    ``DEMO_MODEL_OVERRIDES`` is either one dict of config fields shared by every model or a dict keyed by model
    name; in the keyed form the baseline falls back to the BIG-MoE entry (it is the same tower without adapters).
    """
    overrides = DEMO_MODEL_OVERRIDES if overrides is None else overrides
    if not isinstance(overrides, dict):
        raise ValueError(f"DEMO_MODEL_OVERRIDES must be a dict, got {type(overrides).__name__}")  # noqa: TRY004
    if overrides and set(overrides) <= set(MODEL_CHOICES):
        if name in overrides:
            return dict(overrides[name])
        if name == "baseline" and "bigmoe" in overrides:
            return dict(overrides["bigmoe"])
        raise ValueError(f"DEMO_MODEL_OVERRIDES has no entry for model {name!r} (keys: {sorted(overrides)})")
    return dict(overrides)


def demo_spec(name: str, *, epochs: float | None = None):
    """The demo's :class:`ModelSpec` for ``name``: its config overrides (:func:`demo_overrides`) and its per-model
    training changes (``DEMO_TRAINING_OVERRIDES`` where the CLI defines it); an explicit ``epochs`` wins."""
    spec = model_spec(name, overrides=demo_overrides(name))
    spec.training_overrides.update(getattr(demo_cli, "DEMO_TRAINING_OVERRIDES", {}).get(name, {}))
    if epochs is not None:
        spec.training_overrides.pop("num_train_epochs", None)
    return spec


def _std(values) -> float:
    """Sample standard deviation (ddof = 1); 0.0 for a single value."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def run_metrics(run: dict) -> dict:
    """The frame-level honest HTER, AUC and oracle HTER of one run (its ``results.json`` content)."""
    frame = run["tests"]["all"]["frame"]
    return {key: float(frame[key]) for key, _ in METRICS}


def aggregate(runs) -> dict:
    """Per model: overall mean/std over the (fold, seed) runs, per-seed fold means and their std, per fold."""
    table = {}
    for model in dict.fromkeys(r["model"] for r in runs):
        mine = [r for r in runs if r["model"] == model]
        folds = list(dict.fromkeys(r["fold"] for r in mine))
        seeds = sorted({int(r["seed"]) for r in mine})
        values = {(r["fold"], int(r["seed"])): run_metrics(r) for r in mine}
        entry = {"n_runs": len(mine), "folds": folds, "seeds": seeds, "overall": {}, "per_seed_mean": {},
                 "seed_std": {}, "per_fold": {}}
        for key, _ in METRICS:
            allv = [v[key] for v in values.values()]
            entry["overall"][key] = {"mean": float(np.mean(allv)), "std": _std(allv)}
            seed_means = {}
            for seed in seeds:
                fold_values = [values[(f, seed)][key] for f in folds if (f, seed) in values]
                seed_means[str(seed)] = float(np.mean(fold_values))
            entry["per_seed_mean"][key] = seed_means
            entry["seed_std"][key] = _std(list(seed_means.values()))
        for fold in folds:
            entry["per_fold"][fold] = {}
            for key, _ in METRICS:
                fv = {str(s): values[(fold, s)][key] for s in seeds if (fold, s) in values}
                entry["per_fold"][fold][key] = {"mean": float(np.mean(list(fv.values()))),
                                                "std": _std(list(fv.values())), "per_seed": fv}
        table[model] = entry
    return table


def _pm(stat: dict) -> str:
    return f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"


def markdown(table: dict) -> str:
    """The overall table and the per-fold table (percentages, mean ± sample std)."""
    lines = [("| model | runs (folds x seeds) | HTER % | AUC % | std of per-seed mean HTER | "
              "std of per-seed mean AUC | HTER % (oracle) |"),
             "|---|---:|---:|---:|---:|---:|---:|"]
    for model, e in table.items():
        lines.append(f"| {model} | {e['n_runs']} ({len(e['folds'])} x {len(e['seeds'])}) | "
                     f"{_pm(e['overall']['hter'])} | {_pm(e['overall']['auc'])} | "
                     f"{100 * e['seed_std']['hter']:.2f} | {100 * e['seed_std']['auc']:.2f} | "
                     f"{_pm(e['overall']['oracle_hter'])} |")
    lines += ["", "Per-seed means over the folds (HTER % / AUC %):", "",
              "| model | " + " | ".join(f"seed {s}" for s in next(iter(table.values()))["seeds"]) + " |",
              "|---|" + "---:|" * len(next(iter(table.values()))["seeds"])]
    for model, e in table.items():
        cells = [f"{100 * e['per_seed_mean']['hter'][str(s)]:.2f} / {100 * e['per_seed_mean']['auc'][str(s)]:.2f}"
                 for s in e["seeds"]]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines += ["", "Per fold, mean ± std over the seeds:", "",
              "| model | fold | HTER % | AUC % | HTER % (oracle) |", "|---|---|---:|---:|---:|"]
    for model, e in table.items():
        for fold, f in e["per_fold"].items():
            lines.append(f"| {model} | {fold} | {_pm(f['hter'])} | {_pm(f['auc'])} | {_pm(f['oracle_hter'])} |")
    lines += ["", ("HTER uses the threshold fixed on the source domains' validation split (honest). HTER (oracle) "
                   "uses the target test set's own EER threshold, as papers do: for comparison only. std = sample "
                   "standard deviation (ddof = 1).")]
    return "\n".join(lines) + "\n"


def figure(table: dict, path: Path, *, title: str = "") -> Path:
    """Per fold: the AUC of each model, one point per seed and the mean as a bar (PNG, written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    models = list(table)
    folds = list(dict.fromkeys(f for e in table.values() for f in e["folds"]))
    fig = Figure(figsize=(max(5.0, 1.5 * len(folds) + 1.5), 3.6))
    ax = fig.subplots()
    width = 0.8 / max(1, len(models))
    x = np.arange(len(folds))
    for i, model in enumerate(models):
        colour = f"C{i}"
        offset = (i - (len(models) - 1) / 2) * width
        means = [100 * table[model]["per_fold"][f]["auc"]["mean"] if f in table[model]["per_fold"] else np.nan
                 for f in folds]
        ax.bar(x + offset, means, width * 0.9, color=colour, alpha=0.35,
               label=f"{model} (mean {100 * table[model]['overall']['auc']['mean']:.1f})")
        for j, fold in enumerate(folds):
            if fold not in table[model]["per_fold"]:
                continue
            points = [100 * v for v in table[model]["per_fold"][fold]["auc"]["per_seed"].values()]
            ax.scatter(np.full(len(points), x[j] + offset), points, color=colour, s=18, zorder=3,
                       edgecolors="black", linewidths=0.4)
    ax.axhline(50, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x, folds, fontsize=8)
    ax.set_ylabel("target-test AUC % (points: seeds)", fontsize=8)
    ax.set_ylim(min(40.0, ax.get_ylim()[0]), 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    return path


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "n/a"


def parse_args(argv=None) -> argparse.Namespace:
    """The command-line options (``--quick`` fills in the tiny smoke-run values not given explicitly)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated training seeds (default 1,2,3)")
    parser.add_argument("--models", default="bigmoe,baseline", help="comma-separated model types")
    parser.add_argument("--output-dir", default="runs/bench_protocol")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--epochs", type=float, default=None, help="override the demo's epochs (quick: 1)")
    parser.add_argument("--samples-per-domain", type=int, default=None,
                        help="synthetic rows per domain (default the demo's 600; quick: 48)")
    parser.add_argument("--data-seed", type=int, default=0, help="synthetic data seed (the demo's 0)")
    parser.add_argument("--targets", default=None, help="restrict P1 to these target domains (quick: C)")
    parser.add_argument("--docs-figure", default=None,
                        help="copy the figure here (default docs/bench_protocol.png; not with --quick; '' = no copy)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 fold target, 1 epoch, 48 rows/domain")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if not args.seeds:
        parser.error("--seeds is empty")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODEL_CHOICES]
    if unknown or not args.models:
        parser.error(f"--models: unknown {unknown} (choose from {', '.join(MODEL_CHOICES)})")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.quick:
        args.samples_per_domain = args.samples_per_domain or QUICK["samples_per_domain"]
        args.epochs = args.epochs if args.epochs is not None else QUICK["epochs"]
        args.targets = args.targets or ",".join(QUICK["targets"])
        args.docs_figure = args.docs_figure if args.docs_figure is not None else ""
    args.samples_per_domain = args.samples_per_domain or 600
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()] if args.targets else None
    if args.docs_figure is None:
        args.docs_figure = str(ROOT / "docs" / "bench_protocol.png")
    return args


def main(argv=None) -> dict:
    """Run the benchmark; print and write the tables and the figure; return the JSON-able result."""
    import torch

    from modeling_bigmoe.synthetic import load_synthetic_benchmark

    args = parse_args(argv)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    load_before = _uptime()
    try:
        bench = load_synthetic_benchmark(samples_per_domain=args.samples_per_domain, seed=args.data_seed,
                                         progress=not args.no_progress)
        specs = [demo_spec(name, epochs=args.epochs) for name in args.models]
        training = dict(DEMO_TRAINING)
        if args.epochs is not None:
            training["num_train_epochs"] = args.epochs
        summary = run_protocol(bench, protocol="P1", models=specs, output_dir=args.output_dir, seeds=args.seeds,
                               targets=args.targets, training=training, progress=not args.no_progress)
    finally:
        torch.set_num_threads(threads_before)
    wall = time.perf_counter() - start
    table = aggregate(summary["runs"])
    out = Path(args.output_dir)
    command = "OMP_NUM_THREADS={} python benchmarks/bench_protocol.py {}".format(
        os.environ.get("OMP_NUM_THREADS", "unset"), " ".join(sys.argv[1:] if argv is None else argv))
    result = {
        "command": command, "wall_seconds": round(wall, 1), "uptime_before": load_before, "uptime_after": _uptime(),
        "threads": args.threads, "seeds": args.seeds, "models": args.models, "targets": args.targets,
        "samples_per_domain": args.samples_per_domain, "data_seed": args.data_seed, "training": training,
        "model_overrides": {name: demo_overrides(name) for name in args.models},
        "training_overrides": {spec.name: spec.training_overrides for spec in specs},
        "table": table,
        "runs": [{"fold": r["fold"], "model": r["model"], "seed": int(r["seed"]), "results": r["paths"]["results"],
                  **run_metrics(r)} for r in summary["runs"]],
    }
    text = markdown(table)
    text += (f"\nWall time {wall:.0f} s ({wall / 60:.1f} min), {args.threads} torch thread(s). "
             f"Load before: `{load_before}`; after: `{result['uptime_after']}`.\n")
    _atomic_text(out / "bench_protocol.md", text)
    _atomic_text(out / "bench_protocol.json", json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    png = figure(table, out / "bench_protocol.png",
                 title=f"Synthetic P1, seeds {','.join(map(str, args.seeds))}: target-test AUC")
    result["figure"] = str(png)
    if args.docs_figure:
        docs = Path(args.docs_figure)
        docs.parent.mkdir(parents=True, exist_ok=True)
        tmp = docs.with_name(f".{docs.stem}.tmp.png")
        shutil.copyfile(png, tmp)
        os.replace(tmp, docs)
        result["docs_figure"] = str(docs)
    print()
    print(text)
    print(f"Wrote {out / 'bench_protocol.md'}, {out / 'bench_protocol.json'}, {png}"
          + (f", {args.docs_figure}" if args.docs_figure else ""))
    return result


if __name__ == "__main__":
    main()

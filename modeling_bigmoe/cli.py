"""``bigmoe-fas``: the command line of the package.

Subcommands
    demo      the main job: generate the embedded synthetic benchmark, run Protocol 1 (four
              leave-one-domain-out folds) for the tiny BIG-MoE and the same-size baseline,
              print the comparison table and where the plots are.
    protocol  run P1, P2 or P3 end to end for chosen models on a synthetic or real benchmark.
    train     train one fold (sources -> targets) with any ``TrainingArguments``.
    evaluate  score a saved model on a benchmark split with its stored threshold.
    predict   score a folder of RGB (+ Depth / IR) captures into a CSV.
    push      push a saved model (or adapter-only checkpoint) to the Hub.
    smoke     forward + backward of the tiny model on generated inputs (a 1-second check).

``protocol``, ``train``, ``evaluate`` and ``predict`` parse their options with
``transformers.HfArgumentParser`` (``--help`` lists them) and also accept one YAML or JSON file
holding the same keys: ``bigmoe-fas protocol run.yaml``.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import torch

__all__ = ["build_parser", "main", "run_smoke", "demo_model_spec", "DEMO_MODELS", "DEMO_MODEL_OVERRIDES",
           "DEMO_TRAINING", "DEMO_TRAINING_OVERRIDES"]

# The demo's tiny models, keyed by model type. Their CLIP towers are random (no real weights can be fetched
# here), so the towers train. BIG-MoE and its baseline: 64 px captures (the synthetic benchmark's native size:
# no detail is lost to resizing) cut into 16 px patches: a 4 x 4 grid per modality, 49 tokens in all, hidden
# size 64, all 4 blocks trainable. MMDA and La-SoftMoE: their tiny hub configs (32 px, patch 8, width 32, two
# layers per tower); La-SoftMoE with the multimodal early-fusion stream (the paper's setting is RGB only) and
# its whole image tower trained. Measured on CPS->W (1 thread, 10 epochs): BIG-MoE AUC 79.1 %, baseline
# 64.4 %, MMDA 82.1 % (93 s), La-SoftMoE 78.0 % (41 s); 64 px variants of the last two did worse (72.7 %, 63.8 %).
_DEMO_BIGMOE = {
    "vision_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
                      "num_attention_heads": 4, "image_size": 64, "patch_size": 16, "projection_dim": 64},
    "trainable_backbone_layers": 4,
    "cpb_prompt_dim": 16,
}
DEMO_MODEL_OVERRIDES = {
    "bigmoe": _DEMO_BIGMOE,
    "baseline": _DEMO_BIGMOE,
    "mmda": {},
    "la_softmoe": {"input_mode": "multimodal", "train_vision_tower": True},
}
DEMO_TRAINING = {"num_train_epochs": 10, "per_device_train_batch_size": 32, "per_device_eval_batch_size": 128,
                 "learning_rate": 1e-3, "weight_decay": 5e-5}
# per-model changes to DEMO_TRAINING (an explicit --epochs wins over these)
DEMO_TRAINING_OVERRIDES: dict[str, dict] = {}
DEMO_MODELS = ("bigmoe", "baseline", "mmda", "la_softmoe")


def demo_model_spec(name: str, *, epochs: float | None = None):
    """The :class:`~modeling_bigmoe.runner.ModelSpec` of one of the demo's tiny models (``DEMO_MODELS``)."""
    from .runner import model_spec

    if name not in DEMO_MODEL_OVERRIDES:
        raise ValueError(f"demo model {name!r} is not one of {', '.join(DEMO_MODELS)}")
    spec = model_spec(name, overrides=DEMO_MODEL_OVERRIDES[name])
    spec.training_overrides.update(DEMO_TRAINING_OVERRIDES.get(name, {}))
    if epochs is not None:
        spec.training_overrides.pop("num_train_epochs", None)
    return spec


HF_COMMANDS = ("protocol", "train", "evaluate", "predict")


# ----------------------------------------------------------------------------------------------
# smoke and demo
# ----------------------------------------------------------------------------------------------


def run_smoke(args: argparse.Namespace) -> int:
    """The ``smoke`` subcommand: forward + backward of the tiny BIG-MoE on generated inputs."""
    from .hub_configs import tiny_config
    from .modeling_bigmoe import BigMoeForFaceAntiSpoofing

    torch.manual_seed(args.seed)
    config = tiny_config()
    model = BigMoeForFaceAntiSpoofing(config)
    model.train()
    print(f"BIG-MoE tiny: image {config.vision_config.image_size} px, patch {config.vision_config.patch_size}, "
          f"hidden {config.vision_config.hidden_size}, {config.vision_config.num_hidden_layers} layers, "
          f"{config.moe_num_experts} experts; adapted layers {model.bigmoe.adapted_layers}")
    model.print_trainable_parameters()
    size = config.vision_config.image_size
    generator = torch.Generator().manual_seed(args.seed)
    rgb, depth, ir = (torch.randn(args.batch_size, 3, size, size, generator=generator) for _ in range(3))
    labels = torch.arange(args.batch_size) % 2
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    start = time.perf_counter()
    for step in range(args.steps):
        out = model(pixel_values=rgb, depth_pixel_values=depth, ir_pixel_values=ir, labels=labels)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        print(f"step {step}: loss {out.loss.item():.4f}  modality codes {out.modality_code.tolist()}")
    model.eval()
    with torch.no_grad():
        out = model(pixel_values=rgb, depth_pixel_values=depth, ir_pixel_values=ir, labels=labels)
    torch.set_printoptions(precision=4, sci_mode=False)
    print(f"eval loss {out.loss.item():.4f}; logits (spoof, live):\n{out.logits}")
    print(f"live scores {out.logits.softmax(-1)[:, 1].tolist()}  ({time.perf_counter() - start:.2f} s)")
    return 0


def run_push(args: argparse.Namespace) -> int:
    """The ``push`` subcommand."""
    from .hub import push_run

    info = push_run(args.run_dir, args.repo_id, adapter_only=args.adapter_only, private=args.private,
                    revision=args.revision, base_model=args.base_model, datasets=args.dataset)
    print(info)
    return 0


# relative training cost of one fold of each demo model (measured: MMDA about twice the others)
_DEMO_COST = {"mmda": 2.0}


def _demo_task(task: dict) -> list[dict]:
    """One (fold, model) run of the demo in a worker process (spawned: arguments are plain data)."""
    from .runner import run_protocol
    from .synthetic import load_synthetic_benchmark

    torch.set_num_threads(task["threads"])
    bench = load_synthetic_benchmark(samples_per_domain=task["samples_per_domain"], seed=task["data_seed"],
                                     progress=False)
    summary = run_protocol(bench, protocol="P1", models=[demo_model_spec(task["model"], epochs=task["epochs"])],
                           targets=[task["target"]], output_dir=task["output_dir"], training=task["training"],
                           seeds=[task["seed"]], progress=False, write_summary=False)
    return summary["runs"]


def run_demo(args: argparse.Namespace) -> int:
    """The main job on the embedded default: synthetic benchmark, Protocol 1, BIG-MoE vs the baseline, MMDA and
    La-SoftMoE. With ``--jobs N`` > 1 the (fold, model) runs are shared among N worker processes of
    ``--threads`` torch threads each (longest first); the results are the same as in one process."""
    from .runner import run_protocol
    from .synthetic import load_synthetic_benchmark

    start = time.perf_counter()
    threads = max(1, min(args.threads, os.cpu_count() or 1))
    torch.set_num_threads(threads)
    print("[1/2] synthetic multimodal FAS benchmark (4 domains C/P/S/W, RGB + Depth + IR; cached after the "
          "first run)", flush=True)
    bench = load_synthetic_benchmark(samples_per_domain=args.samples_per_domain, seed=args.data_seed)
    print(f"      train {len(bench['train'])} / validation {len(bench['validation'])} / test {len(bench['test'])} "
          "rows", flush=True)
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    models = [demo_model_spec(name, epochs=args.epochs) for name in names]  # validates the names
    training = dict(DEMO_TRAINING)
    if args.epochs is not None:
        training["num_train_epochs"] = args.epochs
    jobs = max(1, args.jobs)
    print(f"[2/2] Protocol 1 (leave one domain out) for {', '.join(names)} -> {args.output_dir}"
          + (f" ({jobs} worker processes x {threads} thread{'s' if threads > 1 else ''})" if jobs > 1 else ""),
          flush=True)
    if jobs == 1:
        summary = run_protocol(bench, protocol="P1", models=models, output_dir=args.output_dir, training=training,
                               seeds=[args.seed], progress=not args.no_progress)
    else:
        summary = _run_demo_parallel(args, bench, names, training, jobs, threads)
    print()
    print(summary["markdown"])
    print(f"Per-run results, ROC/DET plots and model cards: {args.output_dir}/<fold>/<model>/seed{args.seed}/")
    print(f"Summary: {args.output_dir}/summary.md, {args.output_dir}/summary.json, {args.output_dir}/summary.png")
    print(f"Total time {time.perf_counter() - start:.0f} s. Synthetic data and random-init tiny towers: these "
          "numbers check that the pipeline learns and generalises a little; they say nothing about real FAS data.")
    return 0


def _run_demo_parallel(args, bench, names, training, jobs, threads) -> dict:
    """The demo's (fold, model) runs in ``jobs`` spawned workers; the summary as :func:`run_protocol` writes it."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from .runner import benchmark_domains, protocol_folds_for, summarise, write_protocol_summary
    from .training import check_output_dir

    check_output_dir(args.output_dir)
    folds = protocol_folds_for("P1", benchmark_domains(bench))
    tasks = [{"model": name, "target": fold.targets[0], "fold": fold.name, "output_dir": args.output_dir,
              "training": training, "epochs": args.epochs, "seed": args.seed, "threads": threads,
              "samples_per_domain": args.samples_per_domain, "data_seed": args.data_seed}
             for fold in folds for name in names]
    order = {(t["fold"], t["model"]): i for i, t in enumerate(tasks)}
    tasks.sort(key=lambda t: -_DEMO_COST.get(t["model"], 1.0))  # longest first: the workers finish together
    results = []
    progress = None
    if not args.no_progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=len(tasks), desc="demo runs", unit="run")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_demo_task, task): task for task in tasks}
        for future in as_completed(futures):
            task = futures[future]
            runs = future.result()
            results.extend(runs)
            message = f"done {task['fold']} {task['model']}: AUC {100 * runs[0]['tests']['all']['frame']['auc']:.1f} %"
            if progress is not None:
                progress.update(1)
                progress.write(message)
            else:
                print(message, flush=True)
    if progress is not None:
        progress.close()
    results.sort(key=lambda r: order[(r["fold"], r["model"])])
    summary = summarise(results, protocol="P1", test_settings=["all"])
    return write_protocol_summary(summary, args.output_dir)


# ----------------------------------------------------------------------------------------------
# HfArgumentParser subcommands
# ----------------------------------------------------------------------------------------------


def _load_benchmark(data):
    from .cli_args import split_list

    domains = split_list(data.domains)
    if data.dataset == "synthetic":
        from .synthetic import load_synthetic_benchmark

        return load_synthetic_benchmark(domains, samples_per_domain=data.samples_per_domain,
                                        size=data.synthetic_size, seed=data.synthetic_seed)
    if not data.data_root or not data.list_dir:
        raise ValueError("--dataset mmdg needs --data_root and --list_dir")
    from .data import load_mmdg_benchmark

    return load_mmdg_benchmark(data.data_root, data.list_dir, domains, validate=data.validate)


def _parse(dataclass_types, argv, prog, description):
    from transformers import HfArgumentParser

    parser = HfArgumentParser(dataclass_types, prog=prog, description=description)
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml", ".json")):
        path = argv[0]
        if not os.path.isfile(path):
            raise ValueError(f"{prog}: argument file {path!r} does not exist")
        try:
            if path.endswith(".json"):
                return parser.parse_json_file(path)
            return parser.parse_yaml_file(path)
        except (ValueError, FileNotFoundError) as exc:
            raise ValueError(f"{prog}: {path}: {exc}") from exc
    return parser.parse_args_into_dataclasses(argv)


def cmd_protocol(argv) -> int:
    from .cli_args import DataArguments, ModelArguments, ProtocolArguments, parse_overrides, split_list
    from .runner import model_spec, run_protocol

    proto, model_args, data = _parse((ProtocolArguments, ModelArguments, DataArguments), argv,
                                     "bigmoe-fas protocol", "Run MMDG protocol P1, P2 or P3 end to end.")
    overrides = parse_overrides(model_args.model_overrides)
    models = [model_spec(name, config_path=model_args.config, from_clip=model_args.from_clip, overrides=overrides)
              for name in split_list(proto.models)]
    pairs = [tuple(p.split("-", 1)) for p in split_list(proto.pairs)] or None
    if pairs and any(len(p) != 2 for p in pairs):
        raise ValueError(f"--pairs must look like 'CW-PS,PS-CW', got {proto.pairs!r}")
    seeds = [int(s) for s in split_list(proto.seeds)]
    bench = _load_benchmark(data)
    training = {"num_train_epochs": proto.epochs, "per_device_train_batch_size": proto.batch_size,
                "per_device_eval_batch_size": max(proto.batch_size, 64), "learning_rate": proto.learning_rate,
                "weight_decay": proto.weight_decay}
    summary = run_protocol(bench, protocol=proto.protocol, models=models, output_dir=proto.output_dir, seeds=seeds,
                           targets=split_list(proto.targets) or None, pairs=pairs, normalization=data.normalization,
                           augment=not proto.no_augment, training=training, progress=not proto.no_progress)
    print(summary["markdown"])
    print(f"Summary: {proto.output_dir}/summary.md")
    return 0


def cmd_train(argv) -> int:
    from transformers import TrainingArguments

    from .augmentation import FasAugmentation
    from .cli_args import DataArguments, FoldArguments, ModelArguments, parse_overrides, split_list
    from .data import FasCollator
    from .image_processing_bigmoe import BigMoeImageProcessor
    from .protocols import Fold, build_fold
    from .runner import model_spec
    from .training import LABEL_NAMES, run_fold

    model_args, data, fold_args, training_args = _parse(
        (ModelArguments, DataArguments, FoldArguments, TrainingArguments), argv, "bigmoe-fas train",
        "Train one fold (sources -> targets); best checkpoint and threshold from source validation.")
    spec = model_spec(model_args.model, config_path=model_args.config, from_clip=model_args.from_clip,
                      overrides=parse_overrides(model_args.model_overrides))
    bench = _load_benchmark(data)
    fold = Fold(tuple(split_list(fold_args.sources)), tuple(split_list(fold_args.targets)))
    splits = build_fold(bench, fold)
    # the settings honest FAS evaluation needs, whatever the user passed
    training_args.label_names = list(LABEL_NAMES)
    training_args.remove_unused_columns = False
    if training_args.eval_strategy == "no":
        training_args.eval_strategy = "epoch"
        training_args.save_strategy = "epoch"
    training_args.load_best_model_at_end = True
    training_args.metric_for_best_model = training_args.metric_for_best_model or "auc"
    processor = BigMoeImageProcessor(size=spec.image_size, normalization=data.normalization)
    base = FasCollator.from_dataset(processor, splits, with_video_vocabulary=False)
    augmentation = None if fold_args.no_augment else FasAugmentation(seed=training_args.seed)
    train_collator = FasCollator(processor, augmentation, attack_type_names=base.attack_type_names,
                                 domain_names=fold.sources if spec.uses_domain_labels else None)
    result = run_fold(splits, model_init=lambda: spec.build(training_args.seed), train_collator=train_collator,
                      eval_collator=base, attack_type_names=base.attack_type_names, training_args=training_args,
                      fold_name=fold.name, model_name=spec.name, processor=processor)
    from .metrics import format_results_table
    from .training import summary_row

    rank = int(os.environ.get("RANK", "0"))
    print(f"rank {rank}: final step {result['final_step']} weights checksum {result['weights_checksum']}", flush=True)
    if rank == 0:
        print(format_results_table([summary_row(result)]))
        print(f"model: {result['paths']['model']}")
    return 0


def load_fas_model(path: str):
    """A saved FAS model (any of the package's types) and its image processor."""
    from transformers import AutoConfig, AutoModelForImageClassification

    from .image_processing_bigmoe import BigMoeImageProcessor

    config = AutoConfig.from_pretrained(path)
    model = AutoModelForImageClassification.from_pretrained(path)
    model.eval()
    try:
        processor = BigMoeImageProcessor.from_pretrained(path)
    except OSError:
        size = getattr(getattr(config, "vision_config", None), "image_size", 224)
        processor = BigMoeImageProcessor(size=size)
    return model, processor


def cmd_evaluate(argv) -> int:
    from .cli_args import DataArguments, EvaluateArguments, split_list
    from .data import FasCollator
    from .metrics import compute_fas_metrics
    from .training import live_scores, write_json

    ev, data = _parse((EvaluateArguments, DataArguments), argv, "bigmoe-fas evaluate",
                      "Score a saved model on a benchmark split with its stored (source-validation) threshold.")
    if not ev.model_path:
        raise ValueError("bigmoe-fas evaluate: --model_path is required")
    model, processor = load_fas_model(ev.model_path)
    threshold = float(getattr(model.config, "decision_threshold", 0.5))
    bench = _load_benchmark(data)
    split = bench[ev.split]
    targets = split_list(ev.targets)
    if targets:
        split = split.filter(lambda d: [x in targets for x in d], input_columns="domain", batched=True)
    if len(split) == 0:
        raise ValueError(f"bigmoe-fas evaluate: no rows in split {ev.split!r} for domains {targets}")
    collator = FasCollator.from_dataset(processor, split, with_video_vocabulary=True,
                                        drop_modalities=tuple(split_list(ev.missing)))
    scores, labels, attacks, videos = [], [], [], []
    with torch.no_grad():
        for start in range(0, len(split), ev.batch_size):
            batch = collator([split[i] for i in range(start, min(start + ev.batch_size, len(split)))])
            out = model(pixel_values=batch["pixel_values"], depth_pixel_values=batch["depth_pixel_values"],
                        ir_pixel_values=batch["ir_pixel_values"], modality_mask=batch["modality_mask"])
            scores.append(live_scores(out.logits))
            labels.append(batch["labels"].numpy())
            attacks += [collator.attack_type_names[int(i)] for i in batch["attack_type"]]
            videos += batch["video_id"].tolist()
    import numpy as np

    scores, labels = np.concatenate(scores), np.concatenate(labels)
    metrics = compute_fas_metrics(labels, scores, threshold=threshold, attack_types=attacks, include_oracle=True)
    video = compute_fas_metrics(labels, scores, threshold=threshold, attack_types=attacks, video_ids=videos,
                                per_video=True, include_oracle=True)
    result = {"model": ev.model_path, "split": ev.split, "targets": targets, "missing": split_list(ev.missing),
              "threshold": threshold, "frame": metrics, "video": video}
    keys = ("hter", "oracle_hter", "auc", "acer", "apcer_max", "bpcer", "tpr_at_fpr_1e-2")
    for level in ("frame", "video"):
        print(level + ": " + "  ".join(f"{k}={result[level][k]:.4f}" for k in keys if k in result[level]))
    print("(oracle_* uses the evaluated set's own EER threshold: for comparison with papers only)")
    if ev.output:
        write_json(ev.output, result)
        print(f"wrote {ev.output}")
    return 0


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def collect_captures(folder: str) -> list[dict]:
    """Group a folder's images into captures: ``<name>_rgb|_depth|_ir.<ext>`` files, or
    ``rgb/``, ``depth/``, ``ir/`` subfolders holding files of the same name. RGB is required."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"predict: inputs folder {folder!r} does not exist")
    captures: dict[str, dict] = {}
    if (root / "rgb").is_dir():
        for modality in ("rgb", "depth", "ir"):
            sub = root / modality
            if sub.is_dir():
                for f in sorted(sub.iterdir()):
                    if f.suffix.lower() in _IMAGE_SUFFIXES:
                        captures.setdefault(f.stem, {})[modality] = str(f)
    else:
        for f in sorted(root.iterdir()):
            if f.suffix.lower() not in _IMAGE_SUFFIXES:
                continue
            stem = f.stem
            for modality in ("rgb", "depth", "ir"):
                if stem.lower().endswith("_" + modality):
                    captures.setdefault(stem[: -len(modality) - 1], {})[modality] = str(f)
                    break
    missing_rgb = sorted(name for name, c in captures.items() if "rgb" not in c)
    if missing_rgb:
        raise ValueError(f"predict: captures without an RGB image (Depth/IR need RGB): {missing_rgb[:5]}")
    if not captures:
        raise ValueError(f"predict: no images named <name>_rgb.<ext> (or rgb/ subfolder) in {folder!r}")
    return [{"name": name, **captures[name]} for name in sorted(captures)]


def cmd_predict(argv) -> int:
    from .cli_args import PredictArguments
    from .training import live_scores

    args, = _parse((PredictArguments,), argv, "bigmoe-fas predict",
                   "Score a folder of captures (RGB with optional Depth / IR) into a CSV.")
    if not args.model_path or not args.inputs:
        raise ValueError("bigmoe-fas predict: --model_path and --inputs are required")
    captures = collect_captures(args.inputs)
    model, processor = load_fas_model(args.model_path)
    threshold = args.threshold if args.threshold is not None else float(model.config.decision_threshold)
    rows = []
    with torch.no_grad():
        for start in range(0, len(captures), args.batch_size):
            chunk = captures[start:start + args.batch_size]
            # the processor takes one list per modality; a missing image is None
            enc = processor([c["rgb"] for c in chunk], depth_images=[c.get("depth") for c in chunk],
                            ir_images=[c.get("ir") for c in chunk], return_tensors="pt")
            out = model(pixel_values=enc["pixel_values"], depth_pixel_values=enc["depth_pixel_values"],
                        ir_pixel_values=enc["ir_pixel_values"], modality_mask=enc["modality_mask"])
            for c, score in zip(chunk, live_scores(out.logits)):
                used = "+".join(m for m in ("rgb", "depth", "ir") if c.get(m))
                rows.append({"name": c["name"], "live_score": f"{score:.6f}",
                             "decision": "live" if score >= threshold else "spoof",
                             "threshold": f"{threshold:.6f}", "modalities": used})
    out_path = Path(args.output)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out_path)
    print(f"wrote {len(rows)} predictions to {out_path} (threshold {threshold:.4f}; score >= threshold => live)")
    return 0


_HF_HANDLERS = {"protocol": cmd_protocol, "train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict}


# ----------------------------------------------------------------------------------------------
# parser and entry point
# ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser (the HfArgumentParser subcommands are listed here and parsed on their own)."""
    parser = argparse.ArgumentParser(prog="bigmoe-fas", description="BIG-MoE multimodal face anti-spoofing")
    subparsers = parser.add_subparsers(dest="command", required=True)

    demo = subparsers.add_parser("demo", help="the main job: synthetic benchmark, Protocol 1, BIG-MoE vs baseline")
    demo.add_argument("--output-dir", default="runs/demo", help="where the runs and the summary go")
    demo.add_argument("--models", default=",".join(DEMO_MODELS), help="comma-separated model types")
    demo.add_argument("--epochs", type=float, default=None, help="override the demo's epochs")
    demo.add_argument("--samples-per-domain", type=int, default=600)
    demo.add_argument("--data-seed", type=int, default=0)
    demo.add_argument("--seed", type=int, default=42)
    demo.add_argument("--threads", type=int, default=1,
                      help="torch threads (default 1: the tiny models gain little from more, and 2 threads on a "
                           "busy 2-core machine ran 13x slower in our measurements)")
    demo.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                      help="worker processes sharing the (fold, model) runs (default: 2, or 1 on a 1-core machine)")
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(func=run_demo)

    push = subparsers.add_parser("push", help="push a saved model (or adapters) folder to the Hub")
    push.add_argument("run_dir", help="saved model folder, a protocol run folder, or saved adapters")
    push.add_argument("repo_id", help="Hub repo id, e.g. user/bigmoe-fas")
    push.add_argument("--adapter-only", action="store_true", help="push only the adapters + base CLIP id/revision")
    push.add_argument("--private", action="store_true")
    push.add_argument("--revision", default=None, help="branch to push to")
    push.add_argument("--base-model", default=None, help="base CLIP repo id (adapter-only, model card)")
    push.add_argument("--dataset", action="append", default=None, help="dataset names for the model card")
    push.set_defaults(func=run_push)

    smoke = subparsers.add_parser("smoke", help="forward + backward of the tiny model on generated inputs")
    smoke.add_argument("--steps", type=int, default=3, help="optimiser steps (default 3)")
    smoke.add_argument("--batch-size", type=int, default=4)
    smoke.add_argument("--lr", type=float, default=1e-3)
    smoke.add_argument("--seed", type=int, default=0)
    smoke.set_defaults(func=run_smoke)

    from .demo_app import add_demo_app_parser
    from .visualization import add_explain_parser

    add_explain_parser(subparsers)
    add_demo_app_parser(subparsers)

    for name, text in (("protocol", "run P1 / P2 / P3 end to end (see: bigmoe-fas protocol --help)"),
                       ("train", "train one fold (see: bigmoe-fas train --help)"),
                       ("evaluate", "evaluate a saved model (see: bigmoe-fas evaluate --help)"),
                       ("predict", "score a folder of captures (see: bigmoe-fas predict --help)")):
        subparsers.add_parser(name, help=text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``bigmoe-fas``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in _HF_HANDLERS:
            return _HF_HANDLERS[argv[0]](argv[1:])
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"bigmoe-fas: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

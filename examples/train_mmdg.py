"""Train and evaluate BIG-MoE on the real MMDG benchmark (CeFA = C, PADISI = P, CASIA-SURF = S, WMCA = W).

The data are licence-restricted: download them yourself, then point the script at the image root and at
the folder of list files ``{C,P,S,W}-{train,val,test}.txt``::

    python examples/train_mmdg.py --data_root /data/mmdg --list_dir /data/mmdg/lists \\
        --protocol P1 --output_dir runs/mmdg-p1                      # all four leave-one-out folds
    python examples/train_mmdg.py --data_root /data/mmdg --list_dir /data/mmdg/lists \\
        --protocol P1 --targets W --bf16 --output_dir runs/cps-w       # one fold, CPS -> W

Several GPUs or nodes (same script, unchanged; see docs/scaling.md)::

    accelerate launch --config_file examples/accelerate/ddp_multi_gpu.yaml examples/train_mmdg.py \\
        --data_root /data/mmdg --list_dir /data/mmdg/lists --targets W --bf16 \\
        --ddp_find_unused_parameters false --dataloader_num_workers 8 --output_dir runs/cps-w

Defaults are the reference recipe (docs: method-bigmoe.md section 5): BIG-MoE on
``openai/clip-vit-base-patch16``, AdamW, learning rate 5e-6, weight decay 5e-5, constant learning rate
(no scheduler), 300 epochs, batch 24 per device, seed 42, evaluation every epoch. Two deliberate choices
differ from the reference harness: the checkpoint and the decision threshold are chosen on the
*source* domains' validation split (never on the target: the honest numbers; the papers' oracle numbers
are reported beside them as ``oracle_*``), and images use CLIP's mean/std (``--normalization fas127``
gives the harness's ``(x - 127.5) / 128``). For an adapter model a learning rate of 5e-5 ... 1e-4 is more
usual than 5e-6; the paper's own value is unknown.

Every ``transformers.TrainingArguments`` option is accepted (``--bf16``, ``--gradient_accumulation_steps``,
``--activation_checkpointing``, ``--max_steps``, ...) and overrides the recipe. ``--config`` builds a
random-initialised tower from a ``config.json`` instead of loading CLIP (``hub_configs/bigmoe-tiny``: a
smoke run in seconds). Outputs: ``<output_dir>/<fold>/<model>/seed<N>/`` (saved model with its threshold,
``results.json``, ``results.md``, ROC/DET plot, model card) and ``summary.md`` / ``summary.json``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Literal

from transformers import HfArgumentParser, TrainingArguments

from modeling_bigmoe.cli_args import parse_overrides, split_list
from modeling_bigmoe.data import load_mmdg_benchmark
from modeling_bigmoe.runner import model_spec, run_protocol

# The reference recipe (method-bigmoe.md section 5), as TrainingArguments defaults; the command line overrides them.
REFERENCE_RECIPE = {
    "output_dir": "runs/mmdg",
    "learning_rate": 5e-6,
    "weight_decay": 5e-5,
    "lr_scheduler_type": "constant",
    "num_train_epochs": 300,
    "per_device_train_batch_size": 24,
    "per_device_eval_batch_size": 64,
    "dataloader_num_workers": 4,
}


@dataclass
class MmdgArguments:
    """The benchmark, the protocol and the model."""

    data_root: str = field(default=None, metadata={"help": "root folder of the MMDG images (required)"})
    list_dir: str = field(default=None, metadata={"help": "folder of {C,P,S,W}-{train,val,test}.txt (required)"})
    domains: str = field(default="C,P,S,W", metadata={"help": "domains to read"})
    protocol: Literal["P1", "P2", "P3"] = field(default="P1", metadata={"help": "P1, P2 or P3"})
    targets: str | None = field(default=None, metadata={"help": "P1/P2: only the folds with these targets, e.g. W"})
    pairs: str | None = field(default=None, metadata={"help": "P3: e.g. 'CW-PS,PS-CW' (sources-targets)"})
    seeds: str = field(default="42", metadata={"help": "comma-separated training seeds"})
    models: str = field(default="bigmoe", metadata={"help": "comma-separated: bigmoe, baseline, mmda, la_softmoe"})
    from_clip: str = field(default="openai/clip-vit-base-patch16",
                           metadata={"help": "CLIP weights to start from (Hub id or folder)"})
    config: str | None = field(default=None, metadata={"help": "random-init tower from this config instead of CLIP"})
    model_overrides: str | None = field(default=None, metadata={"help": "JSON object of config fields to override"})
    normalization: Literal["clip", "fas127"] = field(default="clip", metadata={"help": "clip or fas127"})
    validate: Literal["error", "skip", "off"] = field(
        default="error", metadata={"help": "missing/unreadable files: error, skip their rows, or no check"})
    no_augment: bool = field(default=False, metadata={"help": "disable train-time augmentation"})


def training_overrides(parser: HfArgumentParser, argv: list[str]) -> dict:
    """The ``TrainingArguments`` fields to pass on: the recipe and whatever the command line changed.

    The raw (pre-``__post_init__``) values are returned, so that the package's
    :func:`~modeling_bigmoe.training.fas_training_arguments` can rebuild the arguments once per run
    with its own FAS defaults (evaluation every epoch, best checkpoint by source-validation AUC, ...).
    """
    namespace, _ = parser.parse_known_args(argv)
    plain, _ = HfArgumentParser(TrainingArguments).parse_known_args([])  # argparse's own defaults
    defaults = vars(plain)
    given = {name: value for name, value in vars(namespace).items()
             if name in defaults and (name in REFERENCE_RECIPE or value != defaults[name])}
    return given


def main(argv: list[str] | None = None) -> dict:
    """Parse the arguments, read the benchmark, run the protocol; returns the summary dict."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser((MmdgArguments, TrainingArguments), description=__doc__.split("\n\n")[0])
    parser.set_defaults(**REFERENCE_RECIPE)
    args, _ = parser.parse_args_into_dataclasses(argv)  # validates every option
    if not args.data_root or not args.list_dir:
        raise ValueError("--data_root and --list_dir are required")
    training = training_overrides(parser, argv)
    output_dir = training.pop("output_dir")
    if training.pop("seed", 42) != 42:
        raise ValueError("give training seeds with --seeds (e.g. --seeds 42,43,44), not --seed")

    overrides = parse_overrides(args.model_overrides)
    models = [model_spec(name, config_path=args.config, from_clip=None if args.config else args.from_clip,
                         overrides=overrides) for name in split_list(args.models)]
    pairs = [tuple(p.split("-", 1)) for p in split_list(args.pairs)] or None
    benchmark = load_mmdg_benchmark(args.data_root, args.list_dir, split_list(args.domains), validate=args.validate,
                                    progress=not training.get("disable_tqdm"))
    summary = run_protocol(
        benchmark, protocol=args.protocol, models=models, output_dir=output_dir,
        seeds=[int(s) for s in split_list(args.seeds)], targets=split_list(args.targets) or None, pairs=pairs,
        normalization=args.normalization, augment=not args.no_augment, training=training,
        progress=not training.get("disable_tqdm"),
    )
    print(summary["markdown"])
    print(f"Summary: {output_dir}/summary.md; per run: {output_dir}/<fold>/<model>/seed<N>/")
    return summary


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as exc:
        print(f"train_mmdg.py: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

"""Fine-tune a BIG-MoE checkpoint from the Hub (or a local folder) on a fold of a benchmark, and optionally push it.

    # a full checkpoint, adapted to CPS -> W of the real MMDG benchmark, pushed as a new repo
    python examples/finetune_from_hub.py --model_id user/bigmoe-fas --revision main \\
        --dataset mmdg --data_root /data/mmdg --list_dir /data/mmdg/lists --targets W \\
        --learning_rate 1e-4 --num_train_epochs 5 --output_dir runs/finetune --push_to user/bigmoe-fas-w

    # an adapter-only checkpoint (the base CLIP it names is fetched too), on the embedded synthetic benchmark
    python examples/finetune_from_hub.py --model_id user/bigmoe-adapters --adapter_only \\
        --dataset synthetic --targets W --num_train_epochs 3 --output_dir runs/finetune-syn

The checkpoint is loaded with :func:`modeling_bigmoe.hub.load_checkpoint` (full) or
:func:`~modeling_bigmoe.hub.load_adapter_checkpoint` (adapter-only), which check the model type, the
package version and every safetensors file first. Its own image processor (size, normalisation) is used.
Training, checkpoint choice and the decision threshold are those of every run of the package: the best
epoch and the threshold come from the *source* domains' validation split, the target is scored once
(honest numbers, with the papers' ``oracle_*`` numbers beside them). The frozen CLIP blocks stay frozen:
the trainable set is the one the checkpoint's config defines.

Every ``transformers.TrainingArguments`` option is accepted (``--bf16``, ``--max_steps``, ...).
Outputs: ``<output_dir>/<fold>/finetuned/seed<N>/model`` (model, threshold, processor, card) and the
results; ``--push_to`` uploads that model folder with :func:`modeling_bigmoe.hub.push_run`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from transformers import HfArgumentParser, TrainingArguments

from modeling_bigmoe.cli_args import split_list
from modeling_bigmoe.hub import load_adapter_checkpoint, load_checkpoint, push_run
from modeling_bigmoe.image_processing_bigmoe import BigMoeImageProcessor
from modeling_bigmoe.runner import ModelSpec, run_protocol

# Fine-tuning defaults (a short schedule from a trained model); the command line overrides them.
FINETUNE_DEFAULTS = {
    "output_dir": "runs/finetune",
    "learning_rate": 1e-4,
    "weight_decay": 5e-5,
    "lr_scheduler_type": "constant",
    "num_train_epochs": 5,
    "per_device_train_batch_size": 24,
    "per_device_eval_batch_size": 64,
}


@dataclass
class FinetuneArguments:
    """The checkpoint, the data and the fold."""

    model_id: str = field(default=None, metadata={"help": "Hub repo id or local folder of the checkpoint (required)"})
    revision: str | None = field(default=None, metadata={"help": "Hub revision to load (pin it for reproducibility)"})
    adapter_only: bool = field(default=False, metadata={"help": "the checkpoint is adapter-only (base CLIP fetched)"})
    dataset: Literal["synthetic", "mmdg"] = field(default="mmdg", metadata={"help": "synthetic or mmdg"})
    data_root: str | None = field(default=None, metadata={"help": "mmdg: root folder of the images"})
    list_dir: str | None = field(default=None, metadata={"help": "mmdg: folder of {C,P,S,W}-{train,val,test}.txt"})
    domains: str = field(default="C,P,S,W", metadata={"help": "domains to read"})
    samples_per_domain: int = field(default=600, metadata={"help": "synthetic: rows per domain"})
    protocol: Literal["P1", "P2", "P3"] = field(default="P1", metadata={"help": "P1, P2 or P3"})
    targets: str | None = field(default="W", metadata={"help": "P1/P2: the target domain(s) of the fold(s)"})
    pairs: str | None = field(default=None, metadata={"help": "P3: e.g. 'CW-PS'"})
    seeds: str = field(default="42", metadata={"help": "comma-separated seeds"})
    no_augment: bool = field(default=False, metadata={"help": "disable train-time augmentation"})
    push_to: str | None = field(default=None, metadata={"help": "push the fine-tuned model to this Hub repo"})
    private: bool = field(default=False, metadata={"help": "--push_to: create a private repo"})


def training_overrides(parser: HfArgumentParser, argv: list[str]) -> dict:
    """Raw ``TrainingArguments`` values of :data:`FINETUNE_DEFAULTS` and of every option the command line changed."""
    namespace, _ = parser.parse_known_args(argv)
    plain, _ = HfArgumentParser(TrainingArguments).parse_known_args([])  # argparse's own defaults
    defaults = vars(plain)
    given = {name: value for name, value in vars(namespace).items()
             if name in defaults and (name in FINETUNE_DEFAULTS or value != defaults[name])}
    return given


def load_benchmark(args: FinetuneArguments):
    """The benchmark ``DatasetDict`` named by ``--dataset``."""
    domains = split_list(args.domains)
    if args.dataset == "synthetic":
        from modeling_bigmoe.synthetic import load_synthetic_benchmark

        return load_synthetic_benchmark(domains, samples_per_domain=args.samples_per_domain)
    if not args.data_root or not args.list_dir:
        raise ValueError("--dataset mmdg needs --data_root and --list_dir")
    from modeling_bigmoe.data import load_mmdg_benchmark

    return load_mmdg_benchmark(args.data_root, args.list_dir, domains)


def main(argv: list[str] | None = None) -> dict:
    """Parse the arguments, fine-tune on the fold(s), optionally push; returns the protocol summary."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser((FinetuneArguments, TrainingArguments), description=__doc__.split("\n\n")[0])
    parser.set_defaults(**FINETUNE_DEFAULTS)
    args, _ = parser.parse_args_into_dataclasses(argv)
    if not args.model_id:
        raise ValueError("--model_id is required")
    training = training_overrides(parser, argv)
    output_dir = training.pop("output_dir")
    if training.pop("seed", 42) != 42:
        raise ValueError("give seeds with --seeds, not --seed")

    def build(seed: int):  # the seed only matters for the training order and dropout: the weights are loaded
        if args.adapter_only:
            return load_adapter_checkpoint(args.model_id, revision=args.revision)
        return load_checkpoint(args.model_id, revision=args.revision)

    probe = build(0)  # load once up front: a missing repo or a bad file fails before any data is read
    try:  # the checkpoint's normalisation; the runner builds the processor at the model's image size with it
        processor = BigMoeImageProcessor.from_pretrained(args.model_id, revision=args.revision)
    except OSError:
        processor = BigMoeImageProcessor(size=probe.config.vision_config.image_size)
    spec = ModelSpec(name="finetuned", build=build, image_size=probe.config.vision_config.image_size)
    del probe

    summary = run_protocol(
        load_benchmark(args), protocol=args.protocol, models=[spec], output_dir=output_dir,
        seeds=[int(s) for s in split_list(args.seeds)], targets=split_list(args.targets) or None,
        pairs=[tuple(p.split("-", 1)) for p in split_list(args.pairs)] or None,
        normalization=processor.normalization, augment=not args.no_augment, training=training,
        progress=not training.get("disable_tqdm"),
    )
    print(summary["markdown"])
    if args.push_to and int(os.environ.get("RANK", "0")) == 0:  # one push, from the main process
        runs = summary["runs"]
        if len(runs) != 1:
            raise ValueError(f"--push_to needs exactly one run (one fold, one seed), "
                             f"got {len(runs)}; restrict --targets / --pairs / --seeds")
        model_dir = Path(runs[0]["paths"]["model"])
        push_run(model_dir, args.push_to, private=args.private)
        print(f"pushed {model_dir} to {args.push_to}")
    return summary


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as exc:
        print(f"finetune_from_hub.py: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

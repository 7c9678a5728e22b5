"""Training and honest evaluation through ``transformers.Trainer`` (and so ``accelerate``).

One fold of a protocol is trained and evaluated by :func:`run_fold`:

1. the fold's splits are built from a benchmark ``DatasetDict`` (sources' train and
   validation splits, the target's test split);
2. the model is trained with :class:`FasTrainer`; after every epoch it is evaluated on the
   **source** validation split and the best checkpoint is chosen there by AUC (a
   threshold-free criterion), never on the target;
3. the decision threshold is fixed at the EER point of the source validation scores and
   stored in ``model.config.decision_threshold``;
4. the target test split is scored once: *honest* numbers use that threshold; the papers'
   *oracle* numbers (threshold at the test set's own EER point) are reported beside them,
   always prefixed ``oracle_``;
5. ``results.json``, a Markdown table, ROC/DET plots and a model card are written next to
   the saved model.

Attack types and video ids travel through ``label_names`` so that APCER per attack type
and per-video scores can be computed; :class:`FasTrainer` strips them before the forward.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from transformers import EvalPrediction, PreTrainedModel, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.utils import logging as hf_logging

from .metrics import compute_fas_metrics, format_results_table, roc_det_plot, select_threshold

logger = logging.getLogger(__name__)

METADATA_KEYS = ("attack_type", "video_id")
LABEL_NAMES = ["labels", "attack_type", "video_id"]
TRAINER_STATE_NAME = "trainer_state.json"

__all__ = [
    "METADATA_KEYS",
    "LABEL_NAMES",
    "FasTrainer",
    "FasMetrics",
    "live_scores",
    "last_complete_checkpoint",
    "atomic_write_text",
    "write_json",
]


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace`` (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (numpy scalars converted)."""

    def _default(o):
        if isinstance(o, (np.floating, np.integer)):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")

    atomic_write_text(path, json.dumps(obj, indent=2, default=_default, ensure_ascii=False) + "\n")


def live_scores(logits: np.ndarray | torch.Tensor) -> np.ndarray:
    """Softmax probability of the live class (index 1) from (n, 2) logits, as float64 numpy."""
    logits = np.asarray(logits.detach().cpu() if isinstance(logits, torch.Tensor) else logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] != 2:
        raise ValueError(f"live_scores: expected (n, 2) logits, got shape {logits.shape}")
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e[:, 1] / e.sum(axis=1)


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest ``checkpoint-N`` folder whose trainer state parses and whose weights exist.

    ``Trainer`` writes the trainer state last, so a run killed while saving leaves a folder
    without it (or with a truncated one): that folder is skipped and the previous complete
    checkpoint is returned. ``None`` when there is none.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    candidates = []
    for child in output_dir.iterdir():
        if child.is_dir() and child.name.startswith("checkpoint-") and child.name[11:].isdigit():
            candidates.append((int(child.name[11:]), child))
    for _, child in sorted(candidates, reverse=True):
        state = child / TRAINER_STATE_NAME
        weights = list(child.glob("*.safetensors"))
        if not state.is_file() or not weights:
            continue
        try:
            json.loads(state.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        return str(child)
    return None


# ----------------------------------------------------------------------------------------------
# Trainer integration
# ----------------------------------------------------------------------------------------------


class FasTrainer(Trainer):
    """``Trainer`` for face anti-spoofing models.

    - ``attack_type`` and ``video_id`` (integer codes from the collator) are listed in
      ``label_names`` so that they reach ``compute_metrics``; they are removed from the
      inputs before the model's forward.
    - ``eval_data_collator`` (optional) is used for evaluation and prediction, so training
      can augment while evaluation does not.
    """

    def __init__(self, *args, eval_data_collator: Callable | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_data_collator = eval_data_collator

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        model_inputs = {k: v for k, v in inputs.items() if k not in METADATA_KEYS}
        return super().compute_loss(
            model, model_inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )

    def _get_dataloader(self, dataset, description, batch_size, sampler_fn=None, is_training=False,
                        dataloader_key=None):
        if is_training or self.eval_data_collator is None:
            return super()._get_dataloader(dataset, description, batch_size, sampler_fn=sampler_fn,
                                           is_training=is_training, dataloader_key=dataloader_key)
        train_collator, self.data_collator = self.data_collator, self.eval_data_collator
        try:
            return super()._get_dataloader(dataset, description, batch_size, sampler_fn=sampler_fn,
                                           is_training=is_training, dataloader_key=dataloader_key)
        finally:
            self.data_collator = train_collator


def _unpack_predictions(eval_pred: EvalPrediction):
    logits = eval_pred.predictions
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    label_ids = eval_pred.label_ids
    if isinstance(label_ids, (tuple, list)):
        labels = np.asarray(label_ids[0])
        attack = np.asarray(label_ids[1]) if len(label_ids) > 1 else None
        video = np.asarray(label_ids[2]) if len(label_ids) > 2 else None
    else:
        labels, attack, video = np.asarray(label_ids), None, None
    return np.asarray(logits), labels.astype(np.int64), attack, video


class FasMetrics:
    """``compute_metrics`` for :class:`FasTrainer`.

    Args:
        attack_type_names: the collator's attack-type vocabulary (code -> name).
        threshold: a fixed decision threshold (e.g. from source validation). ``None`` picks
            the EER point of the evaluated set itself: only meaningful on the *source
            validation* split, where it is what model selection and threshold fixing use.
        per_video: average frame scores per video before computing the metrics.
    """

    def __init__(self, attack_type_names: Sequence[str] | None = None, *, threshold: float | None = None,
                 per_video: bool = False):
        self.attack_type_names = list(attack_type_names) if attack_type_names is not None else None
        self.threshold = threshold
        self.per_video = per_video

    def __call__(self, eval_pred: EvalPrediction) -> dict[str, float]:
        logits, labels, attack, video = _unpack_predictions(eval_pred)
        scores = live_scores(logits)
        threshold = self.threshold
        if threshold is None:
            threshold = select_threshold(labels, scores, method="eer")
        attack_types = None
        if attack is not None and self.attack_type_names is not None:
            attack_types = [self.attack_type_names[int(i)] for i in attack]
        metrics = compute_fas_metrics(
            labels, scores, threshold=threshold, attack_types=attack_types,
            video_ids=video if self.per_video else None, per_video=self.per_video, include_oracle=True,
        )
        return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, np.floating, np.integer))}


class _BarsOnlyProgressCallback(ProgressCallback):
    """tqdm bars without the raw log dicts (the compact evaluation line replaces them)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        return None


class ProgressPrinterCallback(TrainerCallback):
    """Prints one compact line per evaluation (the demo's progress next to tqdm's bars)."""

    def __init__(self, prefix: str = ""):
        self.prefix = prefix

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics and state.is_world_process_zero:
            keys = [k for k in ("eval_loss", "eval_auc", "eval_hter") if k in metrics]
            text = " ".join(f"{k[5:]}={metrics[k]:.4f}" for k in keys)
            print(f"{self.prefix}epoch {state.epoch:.1f} source-val {text}", flush=True)


# ----------------------------------------------------------------------------------------------
# one fold, end to end
# ----------------------------------------------------------------------------------------------


def fas_training_arguments(output_dir: str | os.PathLike, **overrides) -> TrainingArguments:
    """``TrainingArguments`` with the settings every FAS run needs (override any of them).

    Evaluation and saving every epoch on the source validation split, the best checkpoint
    chosen by source-validation AUC, metadata carried through ``label_names``, columns kept
    for the collator, CPU-friendly defaults, no external loggers.
    """
    defaults = dict(
        output_dir=str(output_dir),
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model="auc",
        greater_is_better=True,
        label_names=list(LABEL_NAMES),
        remove_unused_columns=False,
        report_to="none",
        logging_strategy="epoch",
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        seed=42,
    )
    defaults.update(overrides)
    return TrainingArguments(**defaults)


def check_output_dir(output_dir: str | os.PathLike) -> Path:
    """Create ``output_dir`` and prove it is writable, before any training starts."""
    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".write-probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"output_dir {str(output_dir)!r} is not writable: {exc}") from exc
    return output_dir


def predict_scores(trainer: FasTrainer, dataset) -> dict[str, np.ndarray]:
    """Scores, labels and metadata codes of ``dataset`` from ``trainer.predict``."""
    out = trainer.predict(dataset, metric_key_prefix="predict")
    logits, labels, attack, video = _unpack_predictions(EvalPrediction(out.predictions, out.label_ids))
    return {"scores": live_scores(logits), "labels": labels, "attack": attack, "video": video}


def run_fold(
    splits,
    *,
    model_init: Callable[[], PreTrainedModel],
    train_collator: Callable,
    eval_collator: Callable,
    test_collators: dict[str, Callable] | None = None,
    attack_type_names: Sequence[str],
    training_args: TrainingArguments,
    fold_name: str,
    model_name: str,
    per_video: bool = True,
    resume: bool = True,
    processor=None,
    callbacks: Sequence[TrainerCallback] = (),
    compact_logs: bool = True,
) -> dict[str, Any]:
    """Train on ``splits["train"]``, select the checkpoint and fix the threshold on
    ``splits["validation"]`` (source domains only), then score ``splits["test"]`` (the target)
    once per test setting, and write the results.

    Args:
        splits: ``DatasetDict`` with train / validation / test.
        model_init: builds a fresh model (called once).
        train_collator / eval_collator: collators for training and for validation.
        test_collators: test setting name -> collator (Protocol 2: one per missing-modality
            setting); default ``{"all": eval_collator}``.
        attack_type_names: the collators' attack-type vocabulary.
        training_args: from :func:`fas_training_arguments`.
        resume: continue from the last *complete* checkpoint in the output dir, if any.
        processor: saved beside the model (``preprocessor_config.json``) when given.
        compact_logs: one line per evaluation (source-val loss, AUC, HTER) instead of the Trainer's
            full metric dicts; progress bars stay.

    Returns a dict with, per test setting, ``frame`` (and ``video`` when ``per_video``) metrics
    (honest, plus ``oracle_*``), the source-validation threshold and the written paths.
    """
    out_dir = check_output_dir(training_args.output_dir)
    for split in ("train", "validation", "test"):
        if split not in splits or len(splits[split]) == 0:
            raise ValueError(f"run_fold({fold_name}): split {split!r} is missing or empty")
    val_labels = np.asarray(splits["validation"].with_format(None)["label"])
    if len(np.unique(val_labels)) < 2:
        raise ValueError(
            f"run_fold({fold_name}): the source validation split has only class {int(val_labels[0])}; "
            "a decision threshold cannot be fixed on it")
    test_collators = dict(test_collators or {"all": eval_collator})

    model = model_init()
    trainer = FasTrainer(
        model=model,
        args=training_args,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        data_collator=train_collator,
        eval_data_collator=eval_collator,
        compute_metrics=FasMetrics(attack_type_names),
        callbacks=list(callbacks),
    )
    if compact_logs:
        trainer.remove_callback(PrinterCallback)
        if trainer.pop_callback(ProgressCallback) is not None:
            trainer.add_callback(_BarsOnlyProgressCallback())
        trainer.add_callback(ProgressPrinterCallback(prefix=f"  {model_name} {fold_name}: "))
    checkpoint = last_complete_checkpoint(out_dir) if resume else None
    if checkpoint:
        logger.warning("resuming %s %s from %s", model_name, fold_name, checkpoint)
    start = time.perf_counter()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar at every checkpoint
    try:
        train_output = trainer.train(resume_from_checkpoint=checkpoint)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    train_seconds = time.perf_counter() - start

    # threshold on the SOURCE validation split (EER point), stored in the config
    val = predict_scores(trainer, splits["validation"])
    threshold = float(select_threshold(val["labels"], val["scores"], method="eer"))
    trainer.model.config.decision_threshold = threshold

    result: dict[str, Any] = {
        "fold": fold_name,
        "model": model_name,
        "threshold_source_val": threshold,
        "checkpoint": trainer.state.best_model_checkpoint,
        "train_seconds": round(train_seconds, 1),
        "train_loss": float(train_output.training_loss),
        "final_step": int(trainer.state.global_step),
        "n_train": len(splits["train"]),
        "n_validation": len(splits["validation"]),
        "n_test": len(splits["test"]),
        "tests": {},
    }
    names = list(attack_type_names)
    first = None
    for setting, collator in test_collators.items():
        trainer.eval_data_collator = collator
        test = predict_scores(trainer, splits["test"])
        first = first or test
        attack_types = [names[int(i)] for i in test["attack"]] if test["attack"] is not None else None
        entry = {"frame": _floats(compute_fas_metrics(
            test["labels"], test["scores"], threshold=threshold, attack_types=attack_types, include_oracle=True))}
        if per_video and test["video"] is not None:
            entry["video"] = _floats(compute_fas_metrics(
                test["labels"], test["scores"], threshold=threshold, attack_types=attack_types,
                video_ids=test["video"], per_video=True, include_oracle=True))
        result["tests"][setting] = entry
    trainer.eval_data_collator = eval_collator

    # a cheap fingerprint of the final weights: every process of a distributed run must print the same
    result["weights_checksum"] = weights_checksum(trainer.model)
    final_dir = out_dir / "model"
    result["paths"] = {"model": str(final_dir), "results": str(out_dir / "results.json"),
                       "plot": str(out_dir / "roc_det.png")}
    trainer.save_model(str(final_dir))  # the Trainer saves on the main process only
    if not trainer.is_world_process_zero():
        return result
    # the model (with its threshold), the results and the plots: written once, by the main process
    if processor is not None:
        processor.save_pretrained(str(final_dir))
    first_setting = next(iter(test_collators))
    roc_det_plot(first["labels"], first["scores"], out_dir / "roc_det.png",
                 title=f"{model_name} {fold_name} (target test, {first_setting})")
    rows = [summary_row(result, setting=s) for s in result["tests"]]
    atomic_write_text(out_dir / "results.md", format_results_table(rows) + "\n")
    atomic_write_text(final_dir / "README.md", model_card(result, trainer.model.config))
    write_json(out_dir / "results.json", result)
    write_json(final_dir / "results.json", result)
    return result


def weights_checksum(model: torch.nn.Module) -> str:
    """A short fingerprint of all parameters (sum and sum of squares in float64), for comparing ranks."""
    with torch.no_grad():
        total = sum(float(p.double().sum()) for p in model.parameters())
        squares = sum(float(p.double().pow(2).sum()) for p in model.parameters())
    return f"{total:.10e}/{squares:.10e}"


def _floats(metrics: dict) -> dict:
    return {k: (float(v) if isinstance(v, (int, float, np.floating, np.integer)) else v) for k, v in metrics.items()}


def summary_row(result: dict, setting: str = "all") -> dict[str, Any]:
    """One table row: honest HTER, oracle HTER (labelled), AUC, ACER, APCER max, BPCER, TPR@FPR 1 %."""
    m = result["tests"][setting]["frame"]
    fold = result["fold"] if setting == "all" else f"{result['fold']} {setting}"
    return {
        "model": result["model"],
        "fold": fold,
        "hter": m.get("hter"),
        "oracle_hter": m.get("oracle_hter"),
        "auc": m.get("auc"),
        "acer": m.get("acer"),
        "apcer_max": m.get("apcer_max"),
        "bpcer": m.get("bpcer"),
        "tpr_at_fpr_1e-2": m.get("tpr_at_fpr_1e-2"),
    }


def model_card(result: dict, config) -> str:
    """A model card (README.md with YAML metadata) for a model trained by the protocol runner."""
    base = getattr(config, "base_model_name_or_path", None)
    meta = [
        "---",
        "license: apache-2.0",
        "library_name: transformers",
        "pipeline_tag: image-classification",
        "tags:",
        "- face-anti-spoofing",
        "- presentation-attack-detection",
        "- multimodal",
        f"- {getattr(config, 'model_type', 'model')}",
    ]
    if base:
        meta.append(f"base_model: {base}")
    meta += [
        "metrics:",
        "- hter",
        "- auc",
        "---",
        "",
        f"# {result['model']} — {result['fold']}",
        "",
        "Trained with `modeling_bigmoe`'s protocol runner. The decision threshold "
        f"({result['threshold_source_val']:.4f}) was fixed on the source domains' validation split and is "
        "stored in `config.decision_threshold`; the checkpoint was chosen on source validation AUC. "
        "Columns marked (oracle) use the target test set's own EER threshold, as published papers do: "
        "they are for comparison only.",
        "",
        format_results_table([summary_row(result, s) for s in result["tests"]]),
        "",
        f"Training: {result['n_train']} train / {result['n_validation']} validation samples, "
        f"{result['train_seconds']} s. Test: {result['n_test']} samples of the target domain(s).",
        "",
    ]
    return "\n".join(meta)

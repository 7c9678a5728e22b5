"""Face anti-spoofing metrics: AUC, EER, HTER, ISO/IEC 30107-3 rates, thresholds, per-video scores.

Built on numpy and scikit-learn only (no Hub metric loading, which fails offline).

Conventions (used everywhere in the package)
-------------------------------------------
* ``labels``: 1 = live (bona fide, the *positive* class of the ROC), 0 = attack (spoof).
* ``scores``: the probability of live, P(live); higher means "more live".
* **Decision rule and ties:** a sample is accepted as live iff ``score >= threshold``. A score
  exactly equal to the threshold is therefore *live* (the same convention as
  :func:`sklearn.metrics.roc_curve`).
* APCER(t) = fraction of attacks with ``score >= t`` (attacks accepted as live) = FAR = FPR.
* BPCER(t) = fraction of live samples with ``score < t`` (bona fide rejected) = FRR = FNR.
* HTER(t) = (FAR + FRR) / 2. ACER(t) = (max over attack types of APCER + BPCER) / 2 (ISO/IEC
  30107-3 takes the worst attack type); with no attack types given, ACER = HTER.

Operating points on a finite set
--------------------------------
Only finitely many (APCER, BPCER) pairs exist on ``n`` scores. The *candidate thresholds* are the
distinct observed scores in ascending order plus one value just above the maximum
(``numpy.nextafter(max, inf)``, where everything is rejected). Every real threshold gives the same
operating point as one candidate, so searching the candidates is exhaustive.

* **EER** (:func:`eer`): the candidate that minimises ``|APCER - BPCER|``; ties go to the smaller
  ``APCER + BPCER``, then to the smaller threshold. The EER is ``(APCER + BPCER) / 2`` at that
  candidate (no interpolation), so the HTER at the EER threshold equals the EER exactly.
* **Threshold at APCER = x** (:func:`select_threshold` ``method="apcer"``): the *smallest*
  candidate with ``APCER <= x``. As BPCER never decreases when the threshold grows, this is the
  lowest BPCER that meets the APCER budget. BPCER20 / BPCER100 are the BPCER at that threshold
  for x = 5 % / 1 %, and TPR@FPR=x is ``1 - BPCER`` there (no interpolation between points).

Honest versus oracle
--------------------
A deployable ("honest") threshold is fixed on development data (the *source* domains' validation
split) with :func:`select_threshold` and then applied to the test set with :func:`hter` or
:func:`compute_fas_metrics`. The MMDG line of papers instead reports the HTER at the *test* set's
own EER threshold: that number is computed too, but always under keys named ``oracle_*`` and shown
as "(oracle)" in :func:`format_results_table`. BPCER20, BPCER100 and TPR@FPR are curve points of the
evaluated set by their ISO/common definitions (threshold-free summaries like AUC and EER), not
decisions at a deployable threshold.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

__all__ = [
    "ATTACK",
    "LIVE",
    "aggregate_by_video",
    "apcer_bpcer",
    "apcer_per_attack",
    "auc",
    "bpcer_at_apcer",
    "check_labels_scores",
    "compute_fas_metrics",
    "eer",
    "format_results_table",
    "hter",
    "operating_points",
    "roc_det_plot",
    "select_threshold",
    "summarize_rows",
    "tpr_at_fpr",
]

LIVE = 1
ATTACK = 0

# keys of compute_fas_metrics that are rates in [0, 1] (format_results_table shows them in %)
_RATE_KEYS = ("hter", "auc", "eer", "acer", "apcer", "bpcer", "tpr_at_fpr")
_RESERVED_ATTACK_NAMES = {"max", "live"}


# ----------------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------------
def _as_1d(name: str, values: Any, dtype=None) -> np.ndarray:
    if values is None:
        raise ValueError(f"{name} is None")
    if hasattr(values, "detach"):  # torch tensors
        values = values.detach().cpu().numpy()
    arr = np.asarray(values) if dtype is None else np.asarray(values, dtype=dtype)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per sample), got shape {arr.shape}")
    return arr


def check_labels_scores(
    labels: Any, scores: Any, *, need_both_classes: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert ``labels`` (0 = attack, 1 = live) and ``scores`` (P(live)) to numpy.

    Returns ``(labels as int64, scores as float64)``. Raises ``ValueError`` for different lengths,
    an empty input, labels outside {0, 1}, non-finite scores, or (with ``need_both_classes``) a
    single class, for which rates such as APCER/BPCER and the ROC are undefined.
    """
    lab = _as_1d("labels", labels)
    raw = _as_1d("scores", scores)
    try:
        sco = raw.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"scores must be real numbers (P(live)), got dtype {raw.dtype}: {exc}") from exc
    if lab.shape != sco.shape:
        raise ValueError(f"labels and scores differ in length: labels {lab.shape}, scores {sco.shape}")
    if lab.size == 0:
        raise ValueError("labels and scores are empty")
    if lab.dtype == bool:
        lab = lab.astype(np.int64)
    if not np.issubdtype(lab.dtype, np.number):
        raise ValueError(f"labels must be 0 (attack) / 1 (live), got dtype {lab.dtype}")
    bad = ~np.isin(lab, (0, 1))
    if bad.any():
        raise ValueError(
            f"labels must be 0 (attack) or 1 (live); found {sorted(set(np.unique(lab[bad]).tolist()))[:5]} "
            f"at {int(bad.sum())} position(s), first index {int(np.argmax(bad))}")
    lab = lab.astype(np.int64)
    nonfinite = ~np.isfinite(sco)
    if nonfinite.any():
        raise ValueError(f"scores contain {int(nonfinite.sum())} non-finite value(s) (NaN/inf), "
                         f"first at index {int(np.argmax(nonfinite))}")
    if need_both_classes:
        n_live = int(lab.sum())
        if n_live == 0 or n_live == lab.size:
            only = "live (1)" if n_live else "attack (0)"
            raise ValueError(
                f"labels hold a single class ({lab.size} samples, all {only}); this metric needs both "
                "live and attack samples")
    return lab, sco


def _check_threshold(threshold: Any, name: str = "threshold") -> float:
    if threshold is None or isinstance(threshold, bool):
        raise ValueError(f"{name} must be a finite number, got {threshold!r}")
    try:
        value = float(threshold)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a finite number, got {threshold!r}") from exc
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {threshold!r}")
    return value


def _check_rate(value: Any, name: str) -> float:
    rate = _check_threshold(value, name)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"{name} must be a rate in [0, 1], got {value!r}")
    return rate


# ----------------------------------------------------------------------------------------------
# operating points
# ----------------------------------------------------------------------------------------------
def apcer_bpcer(labels: Any, scores: Any, threshold: float) -> tuple[float, float]:
    """``(APCER, BPCER)`` at ``threshold`` (live iff ``score >= threshold``); needs both classes."""
    lab, sco = check_labels_scores(labels, scores)
    thr = _check_threshold(threshold)
    accepted = sco >= thr
    apcer = float(accepted[lab == ATTACK].mean())
    bpcer = float((~accepted[lab == LIVE]).mean())
    return apcer, bpcer


def operating_points(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All operating points of a finite set: ``(thresholds, apcer, bpcer)``, thresholds ascending.

    The thresholds are the distinct scores plus ``nextafter(max score, inf)`` (everything rejected),
    so the first point has BPCER = 0 and the last APCER = 0. ``apcer[i]`` / ``bpcer[i]`` are the rates
    at ``thresholds[i]`` with the rule "live iff score >= threshold".
    """
    lab, sco = check_labels_scores(labels, scores)
    thresholds = np.unique(sco)
    thresholds = np.append(thresholds, np.nextafter(thresholds[-1], np.inf))
    attack = np.sort(sco[lab == ATTACK])
    live = np.sort(sco[lab == LIVE])
    # number of scores strictly below each threshold
    apcer = 1.0 - np.searchsorted(attack, thresholds, side="left") / attack.size
    bpcer = np.searchsorted(live, thresholds, side="left") / live.size
    return thresholds, apcer, bpcer


# ----------------------------------------------------------------------------------------------
# scalar metrics
# ----------------------------------------------------------------------------------------------
def auc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve with live as the positive class (tied scores count one half)."""
    lab, sco = check_labels_scores(labels, scores)
    return float(roc_auc_score(lab, sco))


def eer(labels: Any, scores: Any) -> tuple[float, float]:
    """Equal error rate on the finite ROC: ``(eer, threshold)``.

    The threshold is the candidate (module docstring) minimising ``|APCER - BPCER|``; ties go to the
    smaller ``APCER + BPCER`` and then to the smaller threshold. ``eer = (APCER + BPCER) / 2`` there.
    """
    thresholds, apcer, bpcer = operating_points(labels, scores)
    gap = np.abs(apcer - bpcer)
    total = apcer + bpcer
    # lexicographic: gap, then total, then threshold (np.lexsort sorts by the last key first)
    best = int(np.lexsort((thresholds, np.round(total, 12), np.round(gap, 12)))[0])
    return float(total[best] / 2.0), float(thresholds[best])


def hter(labels: Any, scores: Any, threshold: float) -> float:
    """Half total error rate ``(APCER + BPCER) / 2`` (= (FAR + FRR) / 2) at ``threshold``."""
    apcer, bpcer = apcer_bpcer(labels, scores, threshold)
    return (apcer + bpcer) / 2.0


def _threshold_at_apcer(lab: np.ndarray, sco: np.ndarray, target: float) -> tuple[float, float, float]:
    thresholds, apcer, bpcer = operating_points(lab, sco)
    ok = np.flatnonzero(apcer <= target + 1e-12)  # the last point (APCER 0) always qualifies
    i = int(ok[0])
    return float(thresholds[i]), float(apcer[i]), float(bpcer[i])


def select_threshold(
    labels: Any = None,
    scores: Any = None,
    method: str = "eer",
    target: float | None = None,
    value: float | None = None,
) -> float:
    """Choose a decision threshold on development data (e.g. the source domains' validation split).

    Args:
        labels, scores: the development set (ignored for ``method="fixed"``).
        method: ``"eer"``: the EER threshold of :func:`eer`; ``"apcer"``: the smallest candidate
            threshold with APCER <= ``target`` (the BPCER-optimal point under that APCER budget);
            ``"fixed"``: return ``value`` unchanged (e.g. 0.5).
        target: the APCER budget in [0, 1] for ``method="apcer"`` (0.05 gives the BPCER20 point).
        value: the threshold for ``method="fixed"``.

    Returns:
        The threshold as a float; apply it to the test set with :func:`hter` or
        :func:`compute_fas_metrics`.
    """
    if method == "fixed":
        if value is None:
            raise ValueError("select_threshold(method='fixed') needs value=<threshold>")
        return _check_threshold(value, "value")
    if method == "eer":
        return eer(labels, scores)[1]
    if method == "apcer":
        if target is None:
            raise ValueError("select_threshold(method='apcer') needs target=<APCER budget in [0, 1]>")
        rate = _check_rate(target, "target")
        lab, sco = check_labels_scores(labels, scores)
        return _threshold_at_apcer(lab, sco, rate)[0]
    raise ValueError(f"select_threshold: method must be 'eer', 'apcer' or 'fixed', got {method!r}")


def bpcer_at_apcer(labels: Any, scores: Any, apcer: float) -> float:
    """BPCER at the smallest threshold whose APCER is <= ``apcer`` (BPCER20: 0.05, BPCER100: 0.01)."""
    lab, sco = check_labels_scores(labels, scores)
    return _threshold_at_apcer(lab, sco, _check_rate(apcer, "apcer"))[2]


def tpr_at_fpr(labels: Any, scores: Any, fpr: float) -> float:
    """True positive rate (live accepted) at the smallest threshold whose FPR (APCER) is <= ``fpr``.

    Equals ``1 - bpcer_at_apcer(labels, scores, fpr)``; no interpolation between ROC points.
    """
    return 1.0 - bpcer_at_apcer(labels, scores, fpr)


def _check_attack_types(lab: np.ndarray, attack_types: Any) -> np.ndarray:
    types = _as_1d("attack_types", attack_types, dtype=object)
    if types.shape != lab.shape:
        raise ValueError(
            f"attack_types and labels differ in length: attack_types {types.shape}, labels {lab.shape}")
    for i, (y, t) in enumerate(zip(lab, types, strict=True)):
        if not isinstance(t, str) or not t:
            raise ValueError(f"attack_types[{i}] must be a non-empty string, got {t!r}")
        if y == LIVE and t != "live":
            raise ValueError(
                f"attack_types[{i}] is {t!r} but labels[{i}] is 1 (live); live rows must be 'live'")
        if y == ATTACK and t in _RESERVED_ATTACK_NAMES:
            raise ValueError(f"attack_types[{i}] is {t!r} but labels[{i}] is 0 (attack); "
                             f"attack types may not be named {sorted(_RESERVED_ATTACK_NAMES)}")
    return types


def apcer_per_attack(labels: Any, scores: Any, attack_types: Any, threshold: float) -> dict[str, float]:
    """APCER of each attack type at ``threshold``: ``{type: fraction of its attacks with score >= thr}``.

    ``attack_types`` has one string per sample: ``"live"`` for live rows (which are ignored here),
    the attack type (e.g. ``"print"``, ``"replay"``) for attack rows. Keys are sorted by name.
    """
    lab, sco = check_labels_scores(labels, scores, need_both_classes=False)
    thr = _check_threshold(threshold)
    types = _check_attack_types(lab, attack_types)
    attack = lab == ATTACK
    if not attack.any():
        raise ValueError(f"apcer_per_attack: no attack samples among {lab.size} (labels all 1)")
    accepted = sco >= thr
    names = sorted(set(types[attack].tolist()))
    return {str(t): float(accepted[attack & (types == t)].mean()) for t in names}


# ----------------------------------------------------------------------------------------------
# per-video aggregation
# ----------------------------------------------------------------------------------------------
def aggregate_by_video(scores: Any, labels: Any, video_ids: Any, attack_types: Any = None):
    """Mean frame score per video.

    Returns ``(scores, labels, ids)`` (numpy arrays, one entry per video, in the order of each
    video's first frame), plus the per-video attack types when ``attack_types`` is given. A video
    whose frames disagree on the label or the attack type raises ``ValueError``.
    """
    lab, sco = check_labels_scores(labels, scores, need_both_classes=False)
    ids = _as_1d("video_ids", video_ids, dtype=object)
    if ids.shape != lab.shape:
        raise ValueError(f"video_ids and labels differ in length: video_ids {ids.shape}, labels {lab.shape}")
    keys = np.asarray([str(v) for v in ids], dtype=object)
    uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # first-appearance order
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    group = rank[inverse]
    n = uniq.size
    counts = np.bincount(group, minlength=n)
    out_scores = np.bincount(group, weights=sco, minlength=n) / counts
    out_labels = lab[first[order]]
    mismatch = lab != out_labels[group]
    if mismatch.any():
        i = int(np.argmax(mismatch))
        raise ValueError(f"video {keys[i]!r} mixes labels (frame {i} has {lab[i]}, its first frame "
                         f"{out_labels[group[i]]}); video_ids must identify one capture")
    out_ids = ids[first[order]]
    if attack_types is None:
        return out_scores, out_labels, out_ids
    types = _check_attack_types(lab, attack_types)
    out_types = types[first[order]]
    mismatch = types != out_types[group]
    if mismatch.any():
        i = int(np.argmax(mismatch))
        raise ValueError(f"video {keys[i]!r} mixes attack types ({types[i]!r} and {out_types[group[i]]!r})")
    return out_scores, out_labels, out_ids, out_types


# ----------------------------------------------------------------------------------------------
# everything at once
# ----------------------------------------------------------------------------------------------
def compute_fas_metrics(
    labels: Any,
    scores: Any,
    *,
    threshold: float,
    attack_types: Any = None,
    video_ids: Any = None,
    per_video: bool = False,
    include_oracle: bool = True,
) -> dict[str, float]:
    """All face anti-spoofing metrics of one evaluation, as a flat dict of floats.

    Args:
        labels, scores: the evaluated (test) set, 1 = live, scores = P(live).
        threshold: the decision threshold fixed beforehand on development data
            (:func:`select_threshold` on the source validation split). Never the test set's own.
        attack_types: optional per-sample type strings ("live" for live rows); adds
            ``apcer_<type>`` keys and makes ``apcer_max`` / ``acer`` the ISO worst-type values.
        video_ids: per-sample video ids, used when ``per_video`` is true.
        per_video: average each video's frame scores first (:func:`aggregate_by_video`).
        include_oracle: add ``oracle_threshold``, ``oracle_hter``, ``oracle_apcer``, ``oracle_bpcer``,
            ``oracle_acer``: the same rates at the test set's own EER threshold, as the MMDG papers
            report (not achievable in deployment; always named ``oracle_*``).

    Returns keys ``n_live, n_attack, threshold, hter, apcer, bpcer, apcer_max, acer,
    apcer_<type>..., auc, eer, bpcer20, bpcer100, tpr_at_fpr_1e-2, tpr_at_fpr_1e-3`` and the oracle keys.
    """
    thr = _check_threshold(threshold)
    if per_video:
        if video_ids is None:
            raise ValueError("compute_fas_metrics(per_video=True) needs video_ids")
        agg = aggregate_by_video(scores, labels, video_ids, attack_types)
        scores, labels = agg[0], agg[1]
        attack_types = agg[3] if attack_types is not None else None
    lab, sco = check_labels_scores(labels, scores)

    apcer, bpcer = apcer_bpcer(lab, sco, thr)
    out: dict[str, float] = {
        "n_live": int((lab == LIVE).sum()),
        "n_attack": int((lab == ATTACK).sum()),
        "threshold": thr,
        "hter": (apcer + bpcer) / 2.0,
        "apcer": apcer,
        "bpcer": bpcer,
    }
    per_type: dict[str, float] = {}
    if attack_types is not None:
        per_type = apcer_per_attack(lab, sco, attack_types, thr)
    out["apcer_max"] = max(per_type.values()) if per_type else apcer
    out["acer"] = (out["apcer_max"] + bpcer) / 2.0
    for name, rate in per_type.items():
        out[f"apcer_{name}"] = rate
    out["auc"] = auc(lab, sco)
    eer_value, eer_threshold = eer(lab, sco)
    out["eer"] = eer_value
    out["bpcer20"] = bpcer_at_apcer(lab, sco, 0.05)
    out["bpcer100"] = bpcer_at_apcer(lab, sco, 0.01)
    out["tpr_at_fpr_1e-2"] = tpr_at_fpr(lab, sco, 1e-2)
    out["tpr_at_fpr_1e-3"] = tpr_at_fpr(lab, sco, 1e-3)
    if include_oracle:
        o_apcer, o_bpcer = apcer_bpcer(lab, sco, eer_threshold)
        o_max = max(apcer_per_attack(lab, sco, attack_types, eer_threshold).values()) if per_type else o_apcer
        out["oracle_threshold"] = eer_threshold
        out["oracle_hter"] = (o_apcer + o_bpcer) / 2.0
        out["oracle_apcer"] = o_apcer
        out["oracle_bpcer"] = o_bpcer
        out["oracle_acer"] = (o_max + o_bpcer) / 2.0
    return out


# ----------------------------------------------------------------------------------------------
# reporting
# ----------------------------------------------------------------------------------------------
_PRETTY = {
    "hter": "HTER",
    "auc": "AUC",
    "eer": "EER",
    "acer": "ACER",
    "apcer": "APCER",
    "apcer_max": "APCER max",
    "bpcer": "BPCER",
    "bpcer20": "BPCER20",
    "bpcer100": "BPCER100",
    "tpr_at_fpr_1e-2": "TPR@FPR=1%",
    "tpr_at_fpr_1e-3": "TPR@FPR=0.1%",
    "threshold": "threshold",
    "n_live": "#live",
    "n_attack": "#attack",
}


def _is_rate_key(key: str) -> bool:
    base = key.removeprefix("oracle_")
    if base.endswith("threshold"):
        return False
    return base in _RATE_KEYS or base.startswith(("apcer_", "bpcer", "tpr_at_fpr"))


def _header(key: str, percent: bool) -> str:
    oracle = key.startswith("oracle_")
    base = key[len("oracle_"):] if oracle else key
    if base in _PRETTY:
        text = _PRETTY[base]
    elif base.startswith("apcer_"):
        text = f"APCER {base[len('apcer_'):]}"
    else:
        text = base
    if percent and _is_rate_key(key):
        text += " %"
    return f"{text} (oracle)" if oracle else text


def _cell(key: str, value: Any, percent: bool, digits: int) -> str:
    if value is None:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not math.isfinite(v):
            return "–" if math.isnan(v) else str(v)
        if percent and _is_rate_key(key):
            return f"{100.0 * v:.{digits}f}"
        return f"{v:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def format_results_table(
    rows: Sequence[Mapping[str, Any]],
    *,
    columns: Sequence[str] | None = None,
    percent: bool = True,
    digits: int = 2,
) -> str:
    """A Markdown table, one row per result dict (e.g. one per fold or per model).

    Columns are ``columns`` or the union of the rows' keys in first-seen order. Keys named
    ``oracle_*`` get the header suffix "(oracle)" (e.g. "HTER % (oracle)"); rates (HTER, AUC, EER,
    ACER, APCER*, BPCER*, TPR@FPR) are shown in percent with ``digits`` decimals when ``percent``;
    missing values show as "–".
    """
    if isinstance(rows, Mapping):
        rows = [rows]
    rows = list(rows)
    if not rows:
        raise ValueError("format_results_table: rows is empty")
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"format_results_table: rows[{i}] must be a dict, got {type(row).__name__}")  # noqa: TRY004
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    columns = list(columns)
    header = "| " + " | ".join(_header(str(c), percent) for c in columns) + " |"
    align = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"
    lines = [header, align]
    for row in rows:
        lines.append("| " + " | ".join(_cell(str(c), row.get(c), percent, digits) for c in columns) + " |")
    return "\n".join(lines)


def summarize_rows(
    rows: Sequence[Mapping[str, Any]], *, label_key: str = "fold", label: str = "mean"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Mean and (population, ddof=0) standard deviation of every numeric key present in all rows.

    For "each fold and the mean" (Protocol 1) or "mean ± std over seeds". Returns ``(mean_row,
    std_row)`` whose ``label_key`` is ``label`` and ``f"{label} std"``; append them to the rows given
    to :func:`format_results_table`. Non-numeric keys (model, fold) and missing / NaN values are skipped
    (a key with a NaN or a missing value in any row is left out).
    """
    rows = list(rows)
    if not rows:
        raise ValueError("summarize_rows: rows is empty")
    keys = [k for k in dict.fromkeys(k for row in rows for k in row) if k != label_key]
    mean_row: dict[str, Any] = {label_key: label}
    std_row: dict[str, Any] = {label_key: f"{label} std"}
    for k in keys:
        values = [row.get(k) for row in rows]
        if not all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                   for v in values):
            continue
        arr = np.asarray(values, dtype=np.float64)
        if not np.isfinite(arr).all():
            continue
        mean_row[k] = float(arr.mean())
        std_row[k] = float(arr.std())
    return mean_row, std_row


def roc_det_plot(
    labels: Any,
    scores: Any,
    path: str | os.PathLike,
    title: str = "ROC and DET",
    *,
    thresholds: Mapping[str, float] | None = None,
) -> Path:
    """Write ROC (TPR vs FPR) and DET (BPCER vs APCER, normal-deviate axes) curves as one PNG.

    ``thresholds`` optionally marks named operating points on both curves (e.g.
    ``{"source val": thr, "oracle": eer_thr}``). The file is written atomically; returns its path.
    matplotlib (Agg, no pyplot state) is imported only here.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from scipy.stats import norm

    lab, sco = check_labels_scores(labels, scores)
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"roc_det_plot: path must end in .png, got {str(path)!r}")
    _, apcer, bpcer = operating_points(lab, sco)
    # ROC from (1, 1) down to (0, 0): thresholds ascending means FPR descending
    fpr, tpr = apcer, 1.0 - bpcer
    area = auc(lab, sco)
    eer_value, eer_thr = eer(lab, sco)

    fig = Figure(figsize=(10, 4.6), dpi=100)
    FigureCanvasAgg(fig)
    ax_roc, ax_det = fig.subplots(1, 2)
    ax_roc.plot(fpr, tpr, lw=1.6, label=f"ROC (AUC {100 * area:.2f} %)")
    ax_roc.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
    ax_roc.set_xlim(0, 1)
    ax_roc.set_ylim(0, 1.01)
    ax_roc.set_xlabel("FPR = APCER (attacks accepted)")
    ax_roc.set_ylabel("TPR = 1 - BPCER (live accepted)")
    ax_roc.set_title("ROC (live positive)")

    eps = 1e-4  # clip 0 and 1 for the probit axes

    def to_dev(rate):
        return norm.ppf(np.clip(rate, eps, 1 - eps))

    ax_det.plot(to_dev(apcer), to_dev(bpcer), lw=1.6, label=f"DET (EER {100 * eer_value:.2f} %)")
    ticks = np.array([0.001, 0.01, 0.05, 0.2, 0.5, 0.8, 0.95, 0.99])
    ax_det.set_xticks(to_dev(ticks))
    ax_det.set_xticklabels([f"{100 * t:g}" for t in ticks])
    ax_det.set_yticks(to_dev(ticks))
    ax_det.set_yticklabels([f"{100 * t:g}" for t in ticks])
    lim = to_dev(np.array([5e-4, 0.995]))
    ax_det.set_xlim(*lim)
    ax_det.set_ylim(*lim)
    ax_det.plot(lim, lim, ls=":", c="grey", lw=1)
    ax_det.set_xlabel("APCER (%)")
    ax_det.set_ylabel("BPCER (%)")
    ax_det.set_title("DET")

    marks = {"EER (test, oracle)": eer_thr}
    marks.update(dict(thresholds or {}))
    for i, (name, t) in enumerate(marks.items()):
        a, b = apcer_bpcer(lab, sco, _check_threshold(t, f"thresholds[{name!r}]"))
        marker = "osD^v<>"[i % 7]
        ax_roc.plot([a], [1 - b], marker, ms=7, label=f"{name}: thr {t:.3g}")
        ax_det.plot(to_dev(np.array([a])), to_dev(np.array([b])), marker, ms=7, label=f"{name}: thr {t:.3g}")
    ax_roc.legend(loc="lower right", fontsize=8)
    ax_det.legend(loc="upper right", fontsize=8)
    for ax in (ax_roc, ax_det):
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}  (n live {int(lab.sum())}, n attack {int((lab == 0).sum())})")
    fig.tight_layout()

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".png", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path

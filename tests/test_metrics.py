"""Metrics: hand-computed cases (with ties), brute-force comparisons, errors, per-video, table, plot."""

import math

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from modeling_bigmoe.metrics import (
    aggregate_by_video,
    apcer_bpcer,
    apcer_per_attack,
    auc,
    bpcer_at_apcer,
    compute_fas_metrics,
    eer,
    format_results_table,
    hter,
    operating_points,
    roc_det_plot,
    select_threshold,
    summarize_rows,
    tpr_at_fpr,
)

# Hand case: 3 attacks (0.1, 0.4, 0.6) and 3 live (0.4, 0.7, 0.9); 0.4 is a tie across classes.
# thr   : 0.1   0.4   0.6   0.7   0.9   >0.9
# APCER : 3/3   2/3   1/3   0     0     0
# BPCER : 0     0     1/3   1/3   2/3   1
LABELS = [0, 0, 0, 1, 1, 1]
SCORES = [0.1, 0.4, 0.6, 0.4, 0.7, 0.9]
TYPES = ["print", "replay", "print", "live", "live", "live"]


def test_operating_points_hand_case():
    thr, apcer, bpcer = operating_points(LABELS, SCORES)
    np.testing.assert_allclose(thr[:-1], [0.1, 0.4, 0.6, 0.7, 0.9])
    assert thr[-1] > 0.9 and thr[-1] == np.nextafter(0.9, 1.0)
    np.testing.assert_allclose(apcer, [1, 2 / 3, 1 / 3, 0, 0, 0])
    np.testing.assert_allclose(bpcer, [0, 0, 1 / 3, 1 / 3, 2 / 3, 1])


def test_tie_convention_score_equal_threshold_is_live():
    # at thr = 0.4 both 0.4 scores are accepted as live: the attack counts in APCER, the live one is not rejected
    assert apcer_bpcer(LABELS, SCORES, 0.4) == pytest.approx((2 / 3, 0.0))
    assert apcer_bpcer(LABELS, SCORES, np.nextafter(0.4, 1.0)) == pytest.approx((1 / 3, 1 / 3))
    assert apcer_bpcer([0, 1], [0.5, 0.5], 0.5) == (1.0, 0.0)


def test_auc_eer_hter_hand_case():
    # 9 live/attack pairs: live 0.4 beats 0.1, ties 0.4 (1/2), loses to 0.6; 0.7 and 0.9 win all -> 7.5/9
    assert auc(LABELS, SCORES) == pytest.approx(7.5 / 9)
    value, thr = eer(LABELS, SCORES)
    assert thr == pytest.approx(0.6) and value == pytest.approx(1 / 3)
    assert hter(LABELS, SCORES, 0.4) == pytest.approx(1 / 3)  # (2/3 + 0) / 2
    assert hter(LABELS, SCORES, 0.65) == pytest.approx((0 + 1 / 3) / 2)
    assert hter(LABELS, SCORES, 0.0) == pytest.approx(0.5)  # everything accepted
    assert hter(LABELS, SCORES, 1.0) == pytest.approx(0.5)  # everything rejected
    assert hter(LABELS, SCORES, thr) == pytest.approx(value)  # HTER at the EER threshold == EER


def test_eer_tie_break_and_perfect_separation():
    # attacks 0.2, 0.5; live 0.5, 0.8 (tie at 0.5): points 0.2 (1,0) | 0.5 (1/2,0) | 0.8 (0,1/2) | >0.8 (0,1)
    # |APCER - BPCER| = 1/2 at 0.5 and at 0.8 with the same total -> the smaller threshold, EER 1/4
    assert eer([0, 0, 1, 1], [0.2, 0.5, 0.5, 0.8]) == (pytest.approx(0.25), pytest.approx(0.5))
    # attacks 0.2, 0.6; live 0.3, 0.7: 0.6 gives (1/2, 1/2), gap 0
    assert eer([0, 1, 0, 1], [0.2, 0.3, 0.6, 0.7]) == (pytest.approx(0.5), pytest.approx(0.6))
    value, thr = eer([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4])  # separable: APCER = BPCER = 0 at 0.3
    assert value == 0.0 and thr == pytest.approx(0.3)
    # attack 0.5; live 0.2, 0.9: 0.2 (1,0) | 0.5 (1,1/2) | 0.9 (0,1/2) | >0.9 (0,1) -> gap 1/2 at 0.5 and 0.9,
    # totals 3/2 and 1/2 -> 0.9, EER 1/4
    assert eer([0, 1, 1], [0.5, 0.2, 0.9]) == (pytest.approx(0.25), pytest.approx(0.9))


def test_select_threshold_methods_and_bpcer20():
    assert select_threshold(LABELS, SCORES, method="eer") == pytest.approx(0.6)
    assert select_threshold(LABELS, SCORES, method="apcer", target=0.05) == pytest.approx(0.7)
    assert select_threshold(LABELS, SCORES, method="apcer", target=0.34) == pytest.approx(0.6)
    assert select_threshold(LABELS, SCORES, method="apcer", target=0.7) == pytest.approx(0.4)
    assert select_threshold(LABELS, SCORES, method="apcer", target=1.0) == pytest.approx(0.1)
    assert select_threshold(method="fixed", value=0.5) == 0.5
    assert bpcer_at_apcer(LABELS, SCORES, 0.05) == pytest.approx(1 / 3)
    assert bpcer_at_apcer(LABELS, SCORES, 0.0) == pytest.approx(1 / 3)
    assert tpr_at_fpr(LABELS, SCORES, 0.01) == pytest.approx(2 / 3)
    assert tpr_at_fpr(LABELS, SCORES, 0.5) == pytest.approx(2 / 3)  # APCER 1/3 at 0.6, BPCER 1/3
    assert tpr_at_fpr(LABELS, SCORES, 2 / 3) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="method"):
        select_threshold(LABELS, SCORES, method="youden")
    with pytest.raises(ValueError, match="target"):
        select_threshold(LABELS, SCORES, method="apcer")
    with pytest.raises(ValueError, match="target"):
        select_threshold(LABELS, SCORES, method="apcer", target=5)
    with pytest.raises(ValueError, match="value"):
        select_threshold(method="fixed")
    with pytest.raises(ValueError, match="value"):
        select_threshold(method="fixed", value=float("nan"))


def test_threshold_from_dev_applied_to_test():
    dev_labels = [0, 0, 0, 0, 1, 1, 1, 1]
    dev_scores = [0.05, 0.2, 0.3, 0.55, 0.5, 0.6, 0.8, 0.95]
    # dev: thr 0.5 -> APCER 1/4 (0.55), BPCER 0; thr 0.55 -> APCER 1/4, BPCER 1/4 (gap 0) -> EER thr 0.55
    thr = select_threshold(dev_labels, dev_scores, method="eer")
    assert thr == pytest.approx(0.55)
    test_labels = [0, 0, 0, 1, 1, 1, 1, 1]
    test_scores = [0.1, 0.6, 0.7, 0.3, 0.56, 0.58, 0.9, 0.99]
    # at 0.55: attacks >= : 0.6, 0.7 -> APCER 2/3; live < : 0.3 -> BPCER 1/5
    assert hter(test_labels, test_scores, thr) == pytest.approx((2 / 3 + 1 / 5) / 2)
    m = compute_fas_metrics(test_labels, test_scores, threshold=thr)
    assert m["hter"] == pytest.approx((2 / 3 + 1 / 5) / 2)
    assert m["threshold"] == thr
    # the oracle uses the test set's own EER threshold, and says so in its key
    o_eer, o_thr = eer(test_labels, test_scores)
    assert m["oracle_threshold"] == pytest.approx(o_thr) and m["oracle_hter"] == pytest.approx(o_eer)
    assert m["oracle_threshold"] != pytest.approx(thr)


def test_compute_fas_metrics_keys_and_values():
    m = compute_fas_metrics(LABELS, SCORES, threshold=0.5, attack_types=TYPES)
    # thr 0.5: print attacks 0.1, 0.6 -> 1/2 accepted; replay 0.4 -> 0; live 0.4 rejected -> BPCER 1/3
    assert m["apcer_print"] == pytest.approx(0.5) and m["apcer_replay"] == 0.0
    assert m["apcer"] == pytest.approx(1 / 3) and m["apcer_max"] == pytest.approx(0.5)
    assert m["bpcer"] == pytest.approx(1 / 3)
    assert m["hter"] == pytest.approx(1 / 3)
    assert m["acer"] == pytest.approx((0.5 + 1 / 3) / 2)
    assert m["auc"] == pytest.approx(7.5 / 9) and m["eer"] == pytest.approx(1 / 3)
    assert m["bpcer20"] == pytest.approx(1 / 3) and m["bpcer100"] == pytest.approx(1 / 3)
    assert m["tpr_at_fpr_1e-2"] == pytest.approx(2 / 3) and m["tpr_at_fpr_1e-3"] == pytest.approx(2 / 3)
    assert m["n_live"] == 3 and m["n_attack"] == 3
    # oracle at 0.6: APCER 1/3 (print 0.6), BPCER 1/3; print 1/2 -> oracle ACER (1/2 + 1/3) / 2
    assert m["oracle_threshold"] == pytest.approx(0.6)
    assert m["oracle_hter"] == pytest.approx(1 / 3)
    assert m["oracle_acer"] == pytest.approx((0.5 + 1 / 3) / 2)
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in m.values())
    m2 = compute_fas_metrics(LABELS, SCORES, threshold=0.5, include_oracle=False)
    assert not any(k.startswith("oracle") for k in m2)
    assert m2["apcer_max"] == m2["apcer"] and m2["acer"] == m2["hter"]  # no types: ACER = HTER


def test_single_class_and_bad_inputs_raise():
    for fn in (auc, eer, lambda y, s: hter(y, s, 0.5), lambda y, s: tpr_at_fpr(y, s, 0.01),
               lambda y, s: compute_fas_metrics(y, s, threshold=0.5)):
        with pytest.raises(ValueError, match="single class"):
            fn([1, 1, 1], [0.2, 0.5, 0.9])
        with pytest.raises(ValueError, match="single class"):
            fn([0, 0], [0.2, 0.5])
    with pytest.raises(ValueError, match="differ in length"):
        auc([0, 1, 1], [0.2, 0.5])
    with pytest.raises(ValueError, match="empty"):
        eer([], [])
    with pytest.raises(ValueError, match=r"0 \(attack\) or 1 \(live\)"):
        auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="non-finite"):
        auc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="1-D"):
        auc([0, 1], [[0.1, 0.9], [0.3, 0.7]])
    with pytest.raises(ValueError, match="threshold"):
        hter([0, 1], [0.1, 0.9], None)
    with pytest.raises(ValueError, match="threshold"):
        compute_fas_metrics([0, 1], [0.1, 0.9], threshold=float("inf"))
    with pytest.raises(ValueError, match="per_video"):
        compute_fas_metrics([0, 1], [0.1, 0.9], threshold=0.5, per_video=True)


def test_apcer_per_attack_checks():
    assert apcer_per_attack(LABELS, SCORES, TYPES, 0.4) == {"print": 0.5, "replay": 1.0}
    with pytest.raises(ValueError, match="live rows must be 'live'"):
        apcer_per_attack([0, 1], [0.1, 0.9], ["print", "print"], 0.5)
    with pytest.raises(ValueError, match="may not be named"):
        apcer_per_attack([0, 1], [0.1, 0.9], ["live", "live"], 0.5)
    with pytest.raises(ValueError, match="may not be named"):
        apcer_per_attack([0, 1], [0.1, 0.9], ["max", "live"], 0.5)
    with pytest.raises(ValueError, match="differ in length"):
        apcer_per_attack([0, 1], [0.1, 0.9], ["print"], 0.5)
    with pytest.raises(ValueError, match="no attack samples"):
        apcer_per_attack([1, 1], [0.1, 0.9], ["live", "live"], 0.5)


def test_aggregate_by_video_means_and_order():
    scores = [0.2, 0.9, 0.4, 0.8, 0.0, 0.6]
    labels = [0, 1, 0, 1, 0, 1]
    vids = ["W/b", "W/a", "W/b", "W/a", "C/c", "C/d"]
    types = ["mask", "live", "mask", "live", "print", "live"]
    s, y, ids, t = aggregate_by_video(scores, labels, vids, types)
    assert list(ids) == ["W/b", "W/a", "C/c", "C/d"]  # first-appearance order
    np.testing.assert_allclose(s, [0.3, 0.85, 0.0, 0.6])
    assert list(y) == [0, 1, 0, 1] and list(t) == ["mask", "live", "print", "live"]
    assert len(aggregate_by_video(scores, labels, vids)) == 3
    with pytest.raises(ValueError, match="mixes labels"):
        aggregate_by_video([0.1, 0.2], [0, 1], ["v", "v"])
    with pytest.raises(ValueError, match="mixes attack types"):
        aggregate_by_video([0.1, 0.2], [0, 0], ["v", "v"], ["print", "replay"])
    # per-video metrics: videos (0.3, attack) (0.85, live) (0.0, attack) (0.6, live)
    m = compute_fas_metrics(labels, scores, threshold=0.5, attack_types=types, video_ids=vids, per_video=True)
    assert m["n_live"] == 2 and m["n_attack"] == 2
    assert m["hter"] == 0.0 and m["auc"] == 1.0
    # at frame level, thr 0.5: no attack accepted; live 0.6, 0.8, 0.9 all accepted
    assert compute_fas_metrics(labels, scores, threshold=0.7)["bpcer"] == pytest.approx(1 / 3)
    assert compute_fas_metrics(labels, scores, threshold=0.7, video_ids=vids, per_video=True)["bpcer"] == 0.5


def _brute(labels, scores):
    labels, scores = np.asarray(labels), np.asarray(scores)
    cands = sorted(set(scores.tolist())) + [np.nextafter(scores.max(), np.inf)]
    pts = []
    for t in cands:
        a = sum(1 for y, s in zip(labels, scores, strict=True) if y == 0 and s >= t) / (labels == 0).sum()
        b = sum(1 for y, s in zip(labels, scores, strict=True) if y == 1 and s < t) / (labels == 1).sum()
        pts.append((t, a, b))
    return pts


@pytest.mark.parametrize("seed", range(6))
def test_against_brute_force_and_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 40))
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    scores = np.round(np.clip(rng.normal(0.35 + 0.3 * labels, 0.25), 0, 1), 1)  # coarse -> many ties
    pts = _brute(labels, scores)
    thr, apcer, bpcer = operating_points(labels, scores)
    np.testing.assert_allclose(thr, [p[0] for p in pts])
    np.testing.assert_allclose(apcer, [p[1] for p in pts])
    np.testing.assert_allclose(bpcer, [p[2] for p in pts])
    # EER: minimal |APCER - BPCER| over all thresholds, EER = mean there
    value, t = eer(labels, scores)
    gap = min(abs(a - b) for _, a, b in pts)
    a, b = apcer_bpcer(labels, scores, t)
    assert abs(a - b) == pytest.approx(gap) and value == pytest.approx((a + b) / 2)
    # AUC: Mann-Whitney with ties 1/2
    live, att = scores[labels == 1], scores[labels == 0]
    mw = np.mean([(v > s) + 0.5 * (v == s) for v in live for s in att])
    assert auc(labels, scores) == pytest.approx(mw)
    # TPR@FPR <= x equals the best TPR over sklearn's ROC points (same >= convention)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    for x in (0.0, 0.01, 0.1, 0.3, 0.5):
        assert tpr_at_fpr(labels, scores, x) == pytest.approx(tpr[fpr <= x + 1e-12].max())
        best_b = min(b for _, a, b in pts if a <= x)
        assert bpcer_at_apcer(labels, scores, x) == pytest.approx(best_b)
        t = select_threshold(labels, scores, method="apcer", target=x)
        assert t == min(p[0] for p in pts if p[1] <= x)


def test_format_results_table_labels_oracle():
    rows = [
        {"model": "bigmoe", "fold": "CPS→W", "hter": 0.1234, "oracle_hter": 0.05, "auc": 0.9, "threshold": 0.42,
         "n_live": 3},
        {"model": "vit|b", "fold": "CPW→S", "hter": None, "oracle_hter": float("nan"), "auc": 1.0},
    ]
    table = format_results_table(rows)
    lines = table.splitlines()
    assert lines[0] == "| model | fold | HTER % | HTER % (oracle) | AUC % | threshold | #live |"
    assert lines[1] == "|---|---:|---:|---:|---:|---:|---:|"
    assert lines[2] == "| bigmoe | CPS→W | 12.34 | 5.00 | 90.00 | 0.42 | 3 |"
    assert lines[3] == "| vit\\|b | CPW→S | – | – | 100.00 | – | – |"
    raw = format_results_table(rows[:1], percent=False, columns=["fold", "oracle_hter", "apcer_print"])
    assert raw.splitlines()[0] == "| fold | HTER (oracle) | APCER print |"
    assert raw.splitlines()[2] == "| CPS→W | 0.05 | – |"
    m = compute_fas_metrics(LABELS, SCORES, threshold=0.5, attack_types=TYPES)
    header = format_results_table([m]).splitlines()[0]
    assert "threshold (oracle)" in header and "ACER % (oracle)" in header and "TPR@FPR=1% %" in header
    with pytest.raises(ValueError, match="empty"):
        format_results_table([])


def test_roc_det_plot_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(30, int), np.ones(20, int)]
    scores = np.clip(rng.normal(0.3 + 0.4 * labels, 0.2), 0, 1)
    out = roc_det_plot(labels, scores, tmp_path / "sub" / "roc.png", title="toy", thresholds={"source val": 0.5})
    data = out.read_bytes()
    assert out == tmp_path / "sub" / "roc.png"
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    from PIL import Image

    with Image.open(out) as im:
        im.verify()
    with Image.open(out) as im:
        assert im.size == (1000, 460)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["roc.png"]  # no temp file left
    with pytest.raises(ValueError, match=".png"):
        roc_det_plot(labels, scores, tmp_path / "roc.jpg")
    with pytest.raises(ValueError, match="single class"):
        roc_det_plot(np.ones(4, int), np.linspace(0, 1, 4), tmp_path / "x.png")


def test_summarize_rows_mean_and_std():
    rows = [{"model": "m", "fold": "CPS→W", "hter": 0.10, "auc": 0.9, "oracle_hter": 0.05},
            {"model": "m", "fold": "CPW→S", "hter": 0.30, "auc": 0.7, "oracle_hter": None}]
    mean, std = summarize_rows(rows)
    assert mean == {"fold": "mean", "hter": pytest.approx(0.2), "auc": pytest.approx(0.8)}
    assert std == {"fold": "mean std", "hter": pytest.approx(0.1), "auc": pytest.approx(0.1)}
    table = format_results_table(rows + [mean])
    assert table.splitlines()[-1] == "| – | mean | 20.00 | 80.00 | – |"
    with pytest.raises(ValueError, match="empty"):
        summarize_rows([])

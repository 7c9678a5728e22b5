"""Tests of the embedded synthetic multimodal FAS benchmark (modeling_bigmoe.synthetic). Tiny sizes: seconds."""

import dataclasses
import hashlib
import io
import os

import numpy as np
import pytest
from PIL import Image

from modeling_bigmoe import synthetic as sy

ALL = ("live",) + sy.ATTACK_TYPES


def _digest(out):
    h = hashlib.sha256()
    for k in ("rgb", "depth", "ir", "label", "gt_depth"):
        h.update(np.ascontiguousarray(out[k]).tobytes())
    for k in ("attack_type", "subject_id", "video_id", "domain"):
        h.update("|".join(out[k]).encode())
    return h.hexdigest()


def _only(dn, kind):
    base = sy.DOMAIN_PROFILES[dn]
    if kind == "live":
        return dataclasses.replace(base, live_frac=1.0)
    return dataclasses.replace(base, live_frac=0.0, attacks={kind: 1.0})


# ------------------------------------------------------------------------------------------------ generator


def test_determinism_same_seed_identical_bytes_different_seed_differs():
    a = sy.generate_domain("C", 10, size=32, seed=3, frames_per_video=2)
    b = sy.generate_domain("C", 10, size=32, seed=3, frames_per_video=2)
    c = sy.generate_domain("C", 10, size=32, seed=4, frames_per_video=2)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)
    assert not np.array_equal(a["rgb"], c["rgb"])
    # the number of rendering threads does not change a byte (2 chunks of 64 frames)
    e = sy.generate_domain("W", 130, size=16, seed=0, num_workers=1)
    f = sy.generate_domain("W", 130, size=16, seed=0, num_workers=3)
    assert _digest(e) == _digest(f)
    # different domain name with the same seed is a different stream as well
    d = sy.generate_domain(
        dataclasses.replace(sy.DOMAIN_PROFILES["C"], name="C2"), 10, size=32, seed=3, frames_per_video=2
    )
    assert not np.array_equal(a["rgb"], d["rgb"])


@pytest.mark.parametrize("size", [16, 37, 64, 112])
def test_shapes_and_dtypes_any_size(size):
    out = sy.generate_domain("W", 3, size=size, seed=0)
    assert out["rgb"].shape == (3, size, size, 3) and out["rgb"].dtype == np.uint8
    assert out["depth"].shape == (3, size, size) and out["depth"].dtype == np.uint8
    assert out["ir"].shape == (3, size, size) and out["ir"].dtype == np.uint8
    assert out["gt_depth"].shape == (3, size, size) and out["gt_depth"].dtype == np.float32
    assert out["label"].dtype == np.int64 and len(out["attack_type"]) == 3
    assert all(im.std() > 1 for im in out["rgb"])  # not blank


def test_every_attack_type_appears_with_expected_label():
    k = len(ALL)
    prof = sy.DomainProfile(name="ALL", live_frac=1.0 / k, attacks={a: 1.0 for a in sy.ATTACK_TYPES})
    out = sy.generate_domain(prof, k, size=24, seed=0, attack_session_confound=0.0)
    # largest-remainder allocation gives exactly one video of each kind
    assert sorted(out["attack_type"]) == sorted(ALL)
    for t, lab in zip(out["attack_type"], out["label"]):
        assert lab == (1 if t == "live" else 0)
    assert out["gt_depth"][out["label"] == 0].max() == 0.0  # spoof pseudo-depth target is zero
    assert out["gt_depth"][out["label"] == 1].max() > 0.5


@pytest.mark.parametrize("dn", ["C", "P", "S", "W"])
def test_builtin_mix_and_live_fraction(dn):
    prof = sy.DOMAIN_PROFILES[dn]
    out = sy.generate_domain(dn, 40, size=16, seed=0)
    assert set(out["attack_type"]) - {"live"} <= set(prof.attacks)
    assert out["label"].sum() == round(0.35 * 40)  # exact quota over 40 one-frame videos
    assert set(out["domain"]) == {dn}
    assert all(v.startswith(dn + "/") for v in out["video_id"] + out["subject_id"])


def test_videos_share_subject_kind_and_scene_frames_differ():
    out = sy.generate_domain("P", 24, size=32, seed=2, frames_per_video=3)
    vids = np.array(out["video_id"])
    assert len(set(out["video_id"])) == 8
    for v in set(out["video_id"]):
        rows = np.nonzero(vids == v)[0]
        assert np.array_equal(rows, np.arange(rows[0], rows[0] + 3))  # contiguous
        assert len({out["subject_id"][r] for r in rows}) == 1
        assert len({out["attack_type"][r] for r in rows}) == 1
        assert not np.array_equal(out["rgb"][rows[0]], out["rgb"][rows[1]])  # shake + noise
    rgb = out["rgb"].astype(np.float32)
    within = np.mean([np.abs(rgb[i] - rgb[i + 1]).mean() for i in range(0, 24, 3)])
    between = np.mean([np.abs(rgb[i] - rgb[i + 3]).mean() for i in range(0, 21, 3)])
    assert within < 0.6 * between, (within, between)
    # the last video may be shorter
    out = sy.generate_domain("P", 7, size=16, seed=2, frames_per_video=3)
    assert [out["video_id"].count(v) for v in dict.fromkeys(out["video_id"])] == [3, 3, 1]


def test_subjects_have_mixed_labels():
    out = sy.generate_domain("C", 120, size=16, seed=0, frames_per_video=1, videos_per_subject=4)
    subj = np.array(out["subject_id"])
    assert len(set(subj)) == 30
    n_live = [out["label"][subj == s].sum() for s in set(subj)]
    assert min(n_live) >= 1  # 42 live videos dealt round-robin over 30 subjects


# ------------------------------------------------------------------------------------------------ physics


def _plane_residual(depth, c):
    """Per-image std of the residual of a least-squares plane fit over valid (non-zero) centre pixels."""
    d = depth[:, c, c].astype(np.float64)
    h = d.shape[1]
    yy, xx = np.mgrid[0:h, 0:h]
    A = np.stack([xx.ravel(), yy.ravel(), np.ones(h * h)], 1)
    res = []
    for im in d:
        m = im.ravel() > 0
        coef, *_ = np.linalg.lstsq(A[m], im.ravel()[m], rcond=None)
        res.append((im.ravel()[m] - A[m] @ coef).std())
    return np.array(res)


@pytest.mark.parametrize("dn", ["C", "W"])
def test_replay_ir_darker_and_print_depth_flatter_than_live(dn):
    kw = dict(size=32, seed=1, attack_session_confound=0.0)
    live = sy.generate_domain(_only(dn, "live"), 16, **kw)
    rep = sy.generate_domain(_only(dn, "replay"), 16, **kw)
    prt = sy.generate_domain(_only(dn, "print"), 16, **kw)
    c = slice(8, 24)

    # screens emit (almost) no NIR: apart from the illuminator hot-spot the displayed face is dark
    def med(a):
        return np.median(a[:, c, c].reshape(len(a), -1), axis=1).mean()

    assert med(rep["ir"]) < 0.6 * med(live["ir"]), (med(rep["ir"]), med(live["ir"]))
    # a print is a (tilted / slightly bent) plane: little depth relief left after removing the best plane
    rl, rp = _plane_residual(live["depth"], c).mean(), _plane_residual(prt["depth"], c).mean()
    assert rp < 0.5 * rl, (rp, rl)


def test_face_region_only_domain_zeroes_outside_face():
    out = sy.generate_domain("S", 12, size=32, seed=0)
    for k in ("rgb", "depth", "ir"):
        assert out[k][:, :2, :2].max() == 0 and out[k][:, -2:, :2].max() == 0, k  # corners are background
    assert out["rgb"][:, 12:20, 12:20].mean() > 20


def test_session_confound_knob_changes_only_attacks():
    live0 = sy.generate_domain(_only("W", "live"), 4, size=16, seed=0, attack_session_confound=0.0)
    live1 = sy.generate_domain(_only("W", "live"), 4, size=16, seed=0, attack_session_confound=1.0)
    assert _digest(live0) == _digest(live1)
    att0 = sy.generate_domain(_only("W", "mask_rigid"), 8, size=16, seed=0, attack_session_confound=0.0)
    att1 = sy.generate_domain(_only("W", "mask_rigid"), 8, size=16, seed=0, attack_session_confound=1.0)
    # W's attack sessions: further away (+6 cm), darker RGB (x0.85) and NIR (x0.8)
    assert att1["rgb"].mean() < att0["rgb"].mean()
    assert att1["ir"].mean() < att0["ir"].mean()


def test_linear_baseline_all_modalities_beat_rgb_only():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    out = sy.generate_domain("C", 240, size=32, seed=5, frames_per_video=2)
    split = sy.split_by_subject(out["subject_id"], (0.5, 0.0, 0.5), seed=0)

    def pool(a):
        return a.reshape(len(a), 8, 4, 8, 4, -1).mean((2, 4)).reshape(len(a), -1) / 255.0

    feats = {
        "rgb": pool(out["rgb"]),
        "all": np.concatenate(
            [pool(out["rgb"]), pool(out["depth"][..., None]), pool(out["ir"][..., None])], 1
        ),
    }
    y, tr, te = out["label"], split == 0, split == 2
    auc = {}
    for k, X in feats.items():
        mu, sd = X[tr].mean(0), X[tr].std(0) + 1e-6
        clf = LogisticRegression(C=0.05, max_iter=2000).fit((X[tr] - mu) / sd, y[tr])
        auc[k] = roc_auc_score(y[te], clf.predict_proba((X[te] - mu) / sd)[:, 1])
    assert auc["all"] > auc["rgb"] + 0.03, auc
    assert auc["all"] > 0.75, auc


# ------------------------------------------------------------------------------------------------ DatasetDict


def test_benchmark_schema_subject_disjoint_and_pixels_roundtrip(tmp_path):
    import datasets

    dd = sy.load_synthetic_benchmark(
        ("C", "S"),
        samples_per_domain=24,
        size=16,
        seed=0,
        frames_per_video=2,
        cache_dir=tmp_path,
        progress=False,
    )
    assert list(dd) == ["train", "validation", "test"]
    expected = datasets.Features(
        {
            "rgb": datasets.Image(),
            "depth": datasets.Image(),
            "ir": datasets.Image(),
            "label": datasets.ClassLabel(names=["spoof", "live"]),
            "domain": datasets.Value("string"),
            "attack_type": datasets.Value("string"),
            "subject_id": datasets.Value("string"),
            "video_id": datasets.Value("string"),
        }
    )
    for split in dd.values():
        assert split.features == expected
        assert set(split["domain"]) == {"C", "S"}  # every split holds every domain
    assert sum(len(s) for s in dd.values()) == 48
    # 24 rows / 2 frames = 12 videos -> 3 subjects per domain -> one per split with 0.6/0.2/0.2
    subj = {k: set(s["subject_id"]) for k, s in dd.items()}
    vids = {k: set(s["video_id"]) for k, s in dd.items()}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not subj[a] & subj[b] and not vids[a] & vids[b]
    row = dd["train"][0]
    assert row["rgb"].mode == "RGB" and row["depth"].mode == "L" and row["ir"].mode == "L"
    assert row["rgb"].size == (16, 16)
    # images are stored losslessly: identical to the generator's arrays
    ref = sy.generate_domain(row["domain"], 24, size=16, seed=0, frames_per_video=2)
    i = ref["video_id"].index(row["video_id"])
    assert np.array_equal(np.asarray(row["rgb"]), ref["rgb"][i])
    assert np.array_equal(np.asarray(row["depth"]), ref["depth"][i])
    assert np.array_equal(np.asarray(row["ir"]), ref["ir"][i])
    assert row["label"] == ref["label"][i] and row["attack_type"] == ref["attack_type"][i]


def _tree(root):
    return sorted(
        (os.path.relpath(os.path.join(d, f), root), os.stat(os.path.join(d, f)).st_mtime_ns)
        for d, _, fs in os.walk(root)
        for f in fs
    )


def test_cache_hit_same_data_writes_nothing_and_is_fast(tmp_path):
    import time

    kw = dict(samples_per_domain=12, size=16, seed=1, frames_per_video=2, cache_dir=tmp_path, progress=False)
    a = sy.load_synthetic_benchmark(("W",), **kw)
    before = _tree(tmp_path)
    assert len(os.listdir(tmp_path)) == 1  # one keyed folder, no leftovers
    t = time.perf_counter()
    b = sy.load_synthetic_benchmark(("W",), **kw)
    assert time.perf_counter() - t < 2.0
    assert _tree(tmp_path) == before
    for k in a:
        assert a[k].data.table.equals(b[k].data.table)
    # any parameter change is a new key
    sy.load_synthetic_benchmark(("W",), **dict(kw, attack_session_confound=0.0))
    assert len(os.listdir(tmp_path)) == 2
    # force regenerates in place (same content, same single folder)
    c = sy.load_synthetic_benchmark(("W",), **dict(kw, force=True))
    assert len(os.listdir(tmp_path)) == 2
    assert a["test"].data.table.equals(c["test"].data.table)


def test_failure_mid_generation_leaves_nothing(tmp_path, monkeypatch):
    real = sy.generate_domain
    calls = []

    def flaky(prof, *args, **kw):
        calls.append(prof.name)
        if len(calls) == 2:
            raise RuntimeError("simulated crash while rendering the second domain")
        return real(prof, *args, **kw)

    monkeypatch.setattr(sy, "generate_domain", flaky)
    kw = dict(samples_per_domain=6, size=16, seed=0, cache_dir=tmp_path, progress=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        sy.load_synthetic_benchmark(("C", "P"), **kw)
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(sy, "generate_domain", real)
    dd = sy.load_synthetic_benchmark(("C", "P"), **kw)
    assert sum(len(s) for s in dd.values()) == 12


def test_user_defined_profile_in_benchmark(tmp_path):
    prof = sy.DomainProfile(
        name="X",
        attacks={"replay": 1.0, "mask_paper": 1.0},
        live_frac=0.5,
        d_norm="fixed",
        jpeg_rgb=None,
        ir_dots=0.3,
        bg_removed=True,
    )
    out = sy.generate_domain(prof, 8, size=16, seed=0)
    assert set(out["attack_type"]) == {"live", "replay", "mask_paper"}
    assert out["label"].sum() == 4
    dd = sy.load_synthetic_benchmark(
        [prof, "S"], samples_per_domain=8, size=16, frames_per_video=1, cache_dir=tmp_path, progress=False
    )
    doms = set().union(*(set(s["domain"]) for s in dd.values()))
    assert doms == {"X", "S"}
    assert all(
        v.startswith("X/") for s in dd.values() for v, d in zip(s["video_id"], s["domain"]) if d == "X"
    )


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(rgb_read=-0.1), "rgb_read"),
        (dict(ir_noise=-1.0), "ir_noise"),
        (dict(d_noise=-0.5), "d_noise"),
        (dict(live_frac=1.5), "live_frac"),
        (dict(p_glasses=-0.1), "p_glasses"),
        (dict(d_drop=2.0), "d_drop"),
        (dict(attacks={"deepfake": 1.0}), "attacks"),
        (dict(attacks={}, live_frac=0.5), "attacks"),
        (dict(d_norm="log"), "d_norm"),
        (dict(dist_cm=(70.0, 40.0)), "dist_cm"),
        (dict(jpeg_rgb=(90, 90)), "jpeg_rgb"),
        (dict(rgb_res=0.0), "rgb_res"),
        (dict(pose_deg=(60.0, 0.0, 0.0)), "pose_deg"),
        (dict(attack_session=sy.AttackSession(rgb_gain=0.0)), "attack_session.rgb_gain"),
        (dict(hair_p=(1.0, 0.0)), "hair_p"),
        (dict(name=""), "name"),
    ],
)
def test_bad_profile_fields_raise_naming_the_field(changes, field):
    prof = dataclasses.replace(sy.DOMAIN_PROFILES["C"], **changes)
    with pytest.raises(ValueError, match=f"'{field}'"):
        prof.validate()
    with pytest.raises(ValueError, match=f"'{field}'"):
        sy.generate_domain(prof, 2, size=16)


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="unknown domain name 'Q'"):
        sy.generate_domain("Q", 4)
    with pytest.raises(ValueError, match="unknown domain name 'Q'"):
        sy.load_synthetic_benchmark(("C", "Q"), cache_dir=tmp_path)
    with pytest.raises(ValueError, match="size must be >= 16, got 8"):
        sy.generate_domain("C", 4, size=8)
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        sy.generate_domain("C", 0)
    with pytest.raises(ValueError, match="samples_per_domain must be >= 1, got 0"):
        sy.load_synthetic_benchmark(samples_per_domain=0, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="size must be >= 16"):
        sy.load_synthetic_benchmark(size=15, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="frames_per_video"):
        sy.generate_domain("C", 4, frames_per_video=0)
    with pytest.raises(ValueError, match="split_fractions"):
        sy.load_synthetic_benchmark(split_fractions=(0.5, 0.5, 0.5), cache_dir=tmp_path)
    with pytest.raises(ValueError, match="attack_session_confound"):
        sy.generate_domain("C", 4, attack_session_confound=-1)
    with pytest.raises(ValueError, match="unique names"):
        sy.load_synthetic_benchmark(("C", "C"), cache_dir=tmp_path)
    assert os.listdir(tmp_path) == []  # nothing written on bad input


# ------------------------------------------------------------------------------------------------ contact sheet


def test_contact_sheet_cli(tmp_path):
    out = tmp_path / "sheet.png"
    assert sy.main(["--contact-sheet", str(out), "--domains", "S,W", "--size", "16", "--scale", "1"]) == 0
    im = Image.open(io.BytesIO(out.read_bytes()))
    assert im.format == "PNG" and im.mode == "RGB"
    assert im.size == (150 + 2 * (3 * 16 + 6), 22 + len(ALL) * 16)
    assert os.listdir(tmp_path) == ["sheet.png"]
    arr = np.asarray(im)
    assert arr[22:, 150 : 150 + 48].std() > 10  # tiles were drawn

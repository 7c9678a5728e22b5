"""Readers for the real MMDG benchmark, on fixture trees written here (every layout of benchmark.md)."""

import os
import warnings

import datasets
import numpy as np
import pytest
from PIL import Image

from modeling_bigmoe.data import (
    DataValidationError,
    ListEntry,
    decode_row_images,
    default_path_rule_cefa,
    load_mmdg_benchmark,
    make_prefix_rule,
    read_list_file,
    validate_files,
    video_id_from_path,
)

SIZE = 8


def _img(path, mode, value, size=SIZE):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    arr = np.full((size, size, channels), value, dtype=np.uint8)
    arr[0, 0] = (value + 7) % 256  # a marker pixel, so a flipped or mixed-up image is noticed
    Image.fromarray(arr.squeeze(-1) if channels == 1 else arr, mode=mode).save(path)


def _write_list(path, lines, sep="\r\n"):
    with open(path, "w", newline="") as handle:
        handle.write(sep.join(lines) + sep)


def _npz_frame(seed):
    rng = np.random.default_rng(seed)
    return rng.random((SIZE, SIZE, 5)).astype(np.float32)


def _triplet(root, domain_dir, video, frame, rgb_dir, label, value, ext="png"):
    """Write rgb/depth/ir images of one frame; return the list line (paths relative to root)."""
    paths = []
    for modality, mode in (("rgb", "RGB"), ("depth", "L"), ("ir", "L")):
        folder = rgb_dir if modality == "rgb" else modality
        rel = f"{domain_dir}/{video}/{folder}/{frame}.{ext}"
        _img(os.path.join(root, rel), mode, value + {"rgb": 0, "depth": 1, "ir": 2}[modality])
        paths.append(rel)
    return " ".join(paths + [str(label)])


def build_tree(root, lists):
    """Every layout of benchmark.md, two frames per split and domain (one live, one spoof)."""
    os.makedirs(lists, exist_ok=True)
    for split_i, split in enumerate(("train", "val", "test")):
        # W (WMCA): <root>/<video>/{color,depth,ir}/<frame>; the live line uses absolute paths inside root.
        w_live = _triplet(root, "WMCA", f"grandtest/{split}_live", 1, "color", 1, 10 + split_i, ext="jpg")
        w_live = " ".join([os.path.join(root, p) for p in w_live.split()[:3]] + ["1"])
        w_spoof = _triplet(root, "WMCA", f"grandtest/{split}_spoof", 2, "color", 0, 20 + split_i, ext="jpg")
        _write_list(os.path.join(lists, f"W-{split}.txt"), [w_live, w_spoof])
        # C (CeFA): .../profile/<frame>, depth and ir folders beside it; one line derives them ("-").
        c_live = _triplet(root, "CeFA", f"3_{split}_1_1_1", 1, "profile", 1, 30 + split_i)
        c_spoof = _triplet(root, "CeFA", f"3_{split}_1_1_3", 1, "profile", 0, 40 + split_i)
        rgb_only = c_spoof.split()[0]
        _write_list(os.path.join(lists, f"C-{split}.txt"), [c_live, f"{rgb_only} - - 0"])
        # S (SURF CROP): .../<subject>/<video>.rssdk/color/<frame>
        s_live = _triplet(
            root, "SURF", f"Training/real_part/CLKJ_{split}/real.rssdk", 31, "color", 1, 50 + split_i, "jpg"
        )
        s_spoof = _triplet(
            root,
            "SURF",
            f"Training/fake_part/CLKJ_{split}/04_enm_b.rssdk",
            5,
            "color",
            0,
            60 + split_i,
            "jpg",
        )
        _write_list(os.path.join(lists, f"S-{split}.txt"), [s_live, s_spoof])
        # P (PADISI): a raw .npz (live) and an exported <stem>/{color,depth,ir}.jpg (spoof); tab-separated.
        os.makedirs(os.path.join(root, "PADISI"), exist_ok=True)
        np.savez(os.path.join(root, "PADISI", f"{split}_live.npz"), data=_npz_frame(split_i)[None])
        for modality, mode in (("color", "RGB"), ("depth", "L"), ("ir", "L")):
            _img(os.path.join(root, "PADISI", f"{split}_spoof", f"{modality}.jpg"), mode, 70 + split_i)
        _write_list(
            os.path.join(lists, f"P-{split}.txt"),
            [f"PADISI/{split}_live.npz\t1", f"PADISI/{split}_spoof.npz\t0"],
        )


@pytest.fixture()
def tree(tmp_path):
    root, lists = str(tmp_path / "data"), str(tmp_path / "lists")
    build_tree(root, lists)
    return root, lists


# ------------------------------------------------------------------------------------------ list files
def test_read_list_file_crlf_bom_tabs_and_line_numbers(tmp_path):
    path = tmp_path / "W-train.txt"
    path.write_bytes(
        b"\xef\xbb\xbfa/color/1.jpg a/depth/1.jpg a/ir/1.jpg 1\r\n\r\n"
        b"b/color/2.jpg\tb/depth/2.jpg\tb/ir/2.jpg\t0\r\n"
    )
    rows = read_list_file(path, "W")
    assert [(r.paths, r.label, r.line_number) for r in rows] == [
        (("a/color/1.jpg", "a/depth/1.jpg", "a/ir/1.jpg"), 1, 1),
        (("b/color/2.jpg", "b/depth/2.jpg", "b/ir/2.jpg"), 0, 3),
    ]
    assert rows[1].where == f"{path}:3"
    p = tmp_path / "P-val.txt"
    p.write_bytes(b"x/1.npz\t1\r\ny/2.npz\t0\r\n")
    assert [(r.paths, r.label) for r in read_list_file(p, "P")] == [(("x/1.npz",), 1), (("y/2.npz",), 0)]


@pytest.mark.parametrize(
    "content, domain, message",
    [
        ("a.jpg b.jpg 1\r\n", "W", r"W-x.txt:1: expected 4 fields .* got 3"),
        ("a.jpg b.jpg c.jpg 1\r\na.jpg b.jpg c.jpg 2\r\n", "W", r"W-x.txt:2: unknown label '2'"),
        ("a.npz\t1\textra\r\n", "W", r"W-x.txt:1: expected 4 fields"),
        ("a.npz\tb.npz\t1\r\n", "P", r"W-x.txt:1: expected 2 fields .*npz_path<TAB>label.* got 3"),
        ("a.npz\tlive\r\n", "P", r"W-x.txt:1: unknown label 'live'"),
    ],
)
def test_read_list_file_bad_lines(tmp_path, content, domain, message):
    path = tmp_path / "W-x.txt"
    path.write_bytes(content.encode())
    with pytest.raises(ValueError, match=message):
        read_list_file(path, domain)


def test_read_list_file_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_list_file(tmp_path / "nope.txt", "C")


@pytest.mark.parametrize(
    "domain, path, expected",
    [
        ("W", "grandtest/100_03_015/color/3.jpg", "W/grandtest/100_03_015"),
        ("W", "/abs/WMCA/100_03_015/depth/3.jpg", "W/abs/WMCA/100_03_015"),
        ("C", "./3_499_1_1_1/profile/0007.jpg", "C/3_499_1_1_1"),
        ("C", "3_499_1_1_1\\profile\\0007.jpg", "C/3_499_1_1_1"),
        (
            "S",
            "Training/real_part/CLKJ_AS0005/real.rssdk/color/31.jpg",
            "S/Training/real_part/CLKJ_AS0005/real.rssdk",
        ),
        ("P", "PADISI/sub/abc_12.npz", "P/PADISI/sub/abc_12"),
        ("P", "PADISI/abc_12/color.jpg", "P/PADISI/abc_12"),
        ("X", "some/folder/frame.png", "X/some/folder"),
    ],
)
def test_video_id_from_path(domain, path, expected):
    assert video_id_from_path(domain, path) == expected


# ------------------------------------------------------------------------------------------ the benchmark
def test_load_every_layout(tree):
    root, lists = tree
    dsd = load_mmdg_benchmark(root, lists, progress=False)
    assert list(dsd) == ["train", "validation", "test"]
    for split in dsd.values():
        assert split.num_rows == 8
        assert sorted(split.column_names) == sorted(
            ["rgb", "depth", "ir", "label", "domain", "attack_type", "subject_id", "video_id"]
        )
        assert split.features["label"].names == ["spoof", "live"]
    raw = dsd["train"].with_format(None)
    assert raw["domain"] == ["C", "C", "P", "P", "S", "S", "W", "W"]
    assert raw["label"] == [1, 0, 1, 0, 1, 0, 1, 0]
    assert raw["attack_type"] == ["live", "spoof"] * 4
    assert raw["video_id"] == [
        "C/CeFA/3_train_1_1_1",
        "C/CeFA/3_train_1_1_3",
        "P/PADISI/train_live",
        "P/PADISI/train_spoof",
        "S/SURF/Training/real_part/CLKJ_train/real.rssdk",
        "S/SURF/Training/fake_part/CLKJ_train/04_enm_b.rssdk",
        f"W/{root.lstrip('/')}/WMCA/grandtest/train_live",
        "W/WMCA/grandtest/train_spoof",
    ]
    assert raw["subject_id"] == raw["video_id"]
    # CeFA line with "-": depth / ir derived from profile -> depth / ir
    assert raw[1]["depth"] == os.path.join(root, "CeFA/3_train_1_1_3/depth/1.png")
    assert raw[1]["ir"] == os.path.join(root, "CeFA/3_train_1_1_3/ir/1.png")
    # PADISI: raw npz for all three modalities, exported jpgs otherwise
    assert raw[2]["rgb"] == raw[2]["depth"] == raw[2]["ir"] == os.path.join(root, "PADISI/train_live.npz")
    assert raw[3]["ir"] == os.path.join(root, "PADISI/train_spoof/ir.jpg")
    assert all(r.ok and r.n_rows == 8 for r in dsd.validation_reports.values())
    assert dsd.validation_reports["train"].n_files == 22  # 6 triplets x 3 + 1 npz + 3 exported jpgs


def test_rows_decode_to_pil_with_right_pixels(tree):
    root, lists = tree
    dsd = load_mmdg_benchmark(root, lists, domains=("C", "P"), progress=False)
    row = dsd["validation"][0]  # C live, value 30 + 1 (split index of val)
    assert row["rgb"].mode == "RGB" and row["depth"].mode == "L" and row["ir"].mode == "L"
    assert np.asarray(row["rgb"])[1, 1].tolist() == [31, 31, 31]
    assert np.asarray(row["depth"])[1, 1] == 32 and np.asarray(row["ir"])[1, 1] == 33
    assert np.asarray(row["rgb"])[0, 0].tolist() == [38, 38, 38]
    npz_row = dsd["validation"][2]
    frame = _npz_frame(1)
    expected = np.clip(np.rint(frame * 255), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(npz_row["rgb"]), expected[..., :3])
    np.testing.assert_array_equal(np.asarray(npz_row["ir"]), expected[..., 3])
    np.testing.assert_array_equal(np.asarray(npz_row["depth"]), expected[..., 4])
    # the lazy transform survives filtering by domain
    only_p = dsd["validation"].filter(lambda d: d == "P", input_columns="domain")
    assert only_p.num_rows == 2 and isinstance(only_p[1]["rgb"], Image.Image)


def test_missing_and_corrupt_files_error_skip_off(tree):
    root, lists = tree
    os.remove(os.path.join(root, "WMCA/grandtest/train_spoof/ir/2.jpg"))
    corrupt = os.path.join(root, "SURF/Training/real_part/CLKJ_train/real.rssdk/color/31.jpg")
    with open(corrupt, "rb") as handle:
        data = handle.read()
    with open(corrupt, "wb") as handle:
        handle.write(data[: len(data) // 2])  # truncated: the header parses, the pixels do not
    with pytest.raises(DataValidationError) as info:
        load_mmdg_benchmark(root, lists, progress=False)
    text = str(info.value)
    assert "1 missing, 1 unreadable, 2 bad rows" in text
    assert f"{lists}/W-train.txt:2: {root}/WMCA/grandtest/train_spoof/ir/2.jpg" in text
    assert f"{lists}/S-train.txt:1: {corrupt}" in text
    assert info.value.report.bad_rows == [4, 7]

    with pytest.warns(UserWarning, match="dropped 2 rows"):
        dsd = load_mmdg_benchmark(root, lists, validate="skip", progress=False)
    assert dsd["train"].num_rows == 6 and dsd["validation"].num_rows == 8
    assert dsd["train"].with_format(None)["domain"] == ["C", "C", "P", "P", "S", "W"]

    dsd = load_mmdg_benchmark(root, lists, validate="off", progress=False)
    assert dsd["train"].num_rows == 8
    with pytest.raises(ValueError, match=f"{corrupt}: cannot decode rgb image"):
        dsd["train"][4]
    with pytest.raises(FileNotFoundError, match="train_spoof/ir/2.jpg"):
        dsd["train"][7]


def test_check_levels(tree):
    root, _ = tree
    truncated = os.path.join(root, "WMCA/grandtest/test_spoof/color/2.jpg")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(truncated)  # big enough that half the file is past the headers
    with open(truncated, "rb") as handle:
        data = handle.read()
    with open(truncated, "wb") as handle:
        handle.write(data[: len(data) // 2])
    garbage = os.path.join(root, "WMCA/grandtest/test_spoof/depth/2.jpg")
    with open(garbage, "wb") as handle:
        handle.write(b"\xff\xd8 not really a jpeg")
    rows = [{"rgb": truncated, "depth": garbage, "ir": None}]
    assert [p for _, p, _ in validate_files(rows, "skip", check="decode").unreadable] == [truncated, garbage]
    assert [p for _, p, _ in validate_files(rows, "skip", check="header").unreadable] == [garbage]
    assert validate_files(rows, "skip", check="exists").ok
    rows = [{"rgb": os.path.join(root, "nope.png"), "depth": None, "ir": None, "where": "mine:9"}]
    report = validate_files(rows, "skip", check="exists")
    assert report.missing == [("mine:9", os.path.join(root, "nope.png"))] and report.bad_rows == [0]
    assert str(report).splitlines()[0] == "Validated 1 rows (1 files): 1 missing, 0 unreadable, 1 bad rows."


def test_four_channel_depth_and_bad_npz_are_unreadable(tree):
    root, lists = tree
    depth = os.path.join(root, "CeFA/3_test_1_1_1/depth/1.png")
    _img(depth, "RGBA", 5)
    bad_npz = os.path.join(root, "PADISI/test_live.npz")
    np.savez(bad_npz, data=np.full((1, SIZE, SIZE, 4), 0.5, dtype=np.float32))
    with pytest.warns(UserWarning, match="dropped 2 rows"):
        dsd = load_mmdg_benchmark(root, lists, validate="skip", progress=False)
    report = dsd.validation_reports["test"]
    reasons = {path: reason for _, path, reason in report.unreadable}
    assert "mode 'RGBA' (4 channels)" in reasons[depth]
    assert "5 channels" in reasons[bad_npz]
    with pytest.raises(ValueError, match=r"depth map has mode 'RGBA' \(4 channels\)"):
        decode_row_images({"rgb": None, "depth": depth, "ir": None})


def test_npz_with_objects_is_refused_without_pickle(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, data=np.array([{"a": 1}], dtype=object))
    report = validate_files([{"rgb": str(path), "depth": str(path), "ir": None}], "skip")
    assert len(report.unreadable) == 2 and "pickle" in report.unreadable[0][2].lower()


def test_path_outside_root_is_an_error(tree):
    root, lists = tree
    _img(os.path.join(os.path.dirname(root), "outside.png"), "RGB", 1)
    with open(os.path.join(lists, "W-val.txt"), "ab") as handle:
        handle.write(b"../outside.png ../outside.png ../outside.png 1\r\n")
    with pytest.raises(ValueError, match=r"W-val.txt:3: rgb path .*outside.png' lies outside the data root"):
        load_mmdg_benchmark(root, lists, progress=False)


def test_empty_split_and_missing_list(tree):
    root, lists = tree
    _write_list(os.path.join(lists, "S-test.txt"), [""])
    with pytest.raises(ValueError, match=r"S-test.txt: empty list \(split 'test', domain 'S'\)"):
        load_mmdg_benchmark(root, lists, progress=False)
    with pytest.raises(FileNotFoundError, match="Q-train.txt"):
        load_mmdg_benchmark(
            root, lists, domains=("Q",), path_rules={"Q": default_path_rule_cefa}, progress=False
        )
    with pytest.raises(ValueError, match=r"no path rule for domains \['Q'\]"):
        load_mmdg_benchmark(root, lists, domains=("Q",), progress=False)


def test_user_path_rule_replaces_default(tree):
    root, lists = tree
    # The authors' lists name a foreign drive; a prefix rule maps it into data_root.
    for split in ("train", "val", "test"):
        path = os.path.join(lists, f"W-{split}.txt")
        with open(path, newline="") as handle:
            lines = handle.read().split("\r\n")
        fixed = []
        for line in filter(None, lines):
            *paths, label = line.split()
            paths = [
                "/mnt/lab_drive/" + os.path.relpath(p, root) if os.path.isabs(p) else "/mnt/lab_drive/" + p
                for p in paths
            ]
            fixed.append(" ".join(paths + [label]))
        _write_list(path, fixed)
    with pytest.raises(
        ValueError, match="W-train.txt:1: rgb path '/mnt/lab_drive/WMCA.*outside the data root"
    ):
        load_mmdg_benchmark(root, lists, domains=("W",), progress=False)
    dsd = load_mmdg_benchmark(
        root, lists, domains=("W",), path_rules={"W": make_prefix_rule("/mnt/lab_drive/")}, progress=False
    )
    assert dsd["test"].with_format(None)["rgb"][1] == os.path.join(
        root, "WMCA/grandtest/test_spoof/color/2.jpg"
    )
    assert np.asarray(dsd["test"][1]["ir"])[1, 1] == 24

    calls = []

    def my_rule(data_root, entry: ListEntry):
        calls.append(entry.line_number)
        rel = entry.paths[0].replace("/mnt/lab_drive/", "")
        return {
            "rgb": rel,
            "depth": None,
            "ir": None,
            "video_id": f"W/custom{entry.line_number}",
            "attack_type": "mask",
        }

    dsd = load_mmdg_benchmark(root, lists, domains=("W",), path_rules={"W": my_rule}, progress=False)
    raw = dsd["train"].with_format(None)
    assert raw["video_id"] == ["W/custom1", "W/custom2"] and raw["attack_type"] == ["mask", "mask"]
    assert raw["depth"] == [None, None] and calls == [1, 2] * 3
    row = dsd["train"][0]
    assert row["depth"] is None and row["rgb"].mode == "RGB"

    def broken(data_root, entry):
        return ("a", "b", "c")

    with pytest.raises(ValueError, match="W-train.txt:1: a path rule must return a mapping"):
        load_mmdg_benchmark(root, lists, domains=("W",), path_rules={"W": broken}, progress=False)


def test_validate_files_on_a_dataset(tree):
    root, lists = tree
    dsd = load_mmdg_benchmark(root, lists, domains=("W",), validate="off", progress=False)
    os.remove(os.path.join(root, "WMCA/grandtest/val_live/color/1.jpg"))
    report = validate_files(dsd, "skip")
    assert report.n_rows == 6 and report.n_files == 18
    assert report.missing == [("validation row 0", os.path.join(root, "WMCA/grandtest/val_live/color/1.jpg"))]
    with pytest.raises(DataValidationError, match=r"(?m)^    row 0: .*val_live/color/1.jpg$"):
        validate_files(dsd["validation"].select([0]), "error")
    assert validate_files(dsd, "off").n_rows == 0
    with pytest.raises(ValueError, match="mode must be 'error', 'skip' or 'off'"):
        validate_files(dsd, "warn")


def test_size_mismatch_is_reported_not_fatal(tmp_path):
    _img(str(tmp_path / "a.png"), "RGB", 1, size=8)
    _img(str(tmp_path / "b.png"), "L", 1, size=6)
    report = validate_files(
        [{"rgb": str(tmp_path / "a.png"), "depth": str(tmp_path / "b.png"), "ir": None}], "error"
    )
    assert report.ok and report.size_mismatch == [("row 0", "{'rgb': (8, 8), 'depth': (6, 6)}")]


def test_no_warning_when_clean(tree):
    root, lists = tree
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        dsd = load_mmdg_benchmark(root, lists, domains=("S",), validate="skip", progress=False)
    assert isinstance(dsd, datasets.DatasetDict)

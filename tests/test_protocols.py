"""Protocols: fold lists and names, parsing, and build_fold on tiny DatasetDicts."""

import datasets
import numpy as np
import pytest
from PIL import Image

from modeling_bigmoe.protocols import (
    Fold,
    build_fold,
    parse_fold,
    protocol1_folds,
    protocol2_folds,
    protocol2_settings,
    protocol3_folds,
    protocol_folds,
)

FEATURES_STR = datasets.Features({
    "rgb": datasets.Value("string"), "depth": datasets.Value("string"), "ir": datasets.Value("string"),
    "label": datasets.ClassLabel(names=["spoof", "live"]), "domain": datasets.Value("string"),
    "attack_type": datasets.Value("string"), "video_id": datasets.Value("string"),
})


def _rows(split, spec):
    """spec: {domain: (n_live, n_spoof)} -> column dict; images are strings naming the row."""
    cols = {k: [] for k in FEATURES_STR}
    for dom, (n_live, n_spoof) in spec.items():
        for i in range(n_live + n_spoof):
            live = i < n_live
            vid = f"{dom}/{split}/{i}"
            cols["rgb"].append(f"rgb:{vid}")
            cols["depth"].append(f"depth:{vid}")
            cols["ir"].append(f"ir:{vid}")
            cols["label"].append(int(live))
            cols["domain"].append(dom)
            cols["attack_type"].append("live" if live else "print")
            cols["video_id"].append(vid)
    return cols


def tiny_benchmark(train=None, validation=None, test=None):
    default = {"C": (2, 3), "P": (1, 2), "S": (3, 1), "W": (2, 2)}
    specs = {"train": train or default, "validation": validation or default, "test": test or default}
    return datasets.DatasetDict({
        split: datasets.Dataset.from_dict(_rows(split, spec), features=FEATURES_STR) for split, spec in specs.items()
    })


def test_protocol1_names_and_splits():
    folds = protocol1_folds()
    assert [f.name for f in folds] == ["PSW→C", "CSW→P", "CPW→S", "CPS→W"]
    assert [f.alias for f in folds] == ["PSW-C", "CSW-P", "CPW-S", "CPS-W"]
    f = folds[3]
    assert f.sources == ("C", "P", "S") and f.targets == ("W",) and f.missing_modalities == ()
    assert f.test_modality_mask == (1, 1, 1) and str(f) == "CPS→W"
    assert [f.name for f in protocol1_folds(["A", "B", "C"])] == ["BC→A", "AC→B", "AB→C"]
    multi = protocol1_folds(("CeFA", "WMCA", "SURF"))
    assert multi[2].name == "CeFA+WMCA→SURF" and multi[2].alias == "CeFA+WMCA-SURF"
    with pytest.raises(ValueError, match="at least 2"):
        protocol1_folds(["C"])
    with pytest.raises(ValueError, match="repeats"):
        protocol1_folds(["C", "C", "W"])


def test_protocol2_and_3():
    assert protocol2_settings() == [("depth",), ("ir",), ("depth", "ir")]
    folds = protocol2_folds()
    assert len(folds) == 12
    assert [f.name for f in folds[:4]] == ["PSW→C w/o D", "CSW→P w/o D", "CPW→S w/o D", "CPS→W w/o D"]
    assert folds[4].name == "PSW→C w/o IR" and folds[11].name == "CPS→W w/o D+IR"
    assert folds[11].alias == "CPS-W_no_depth_ir" and folds[11].test_modality_mask == (1, 0, 0)
    assert folds[5].test_modality_mask == (1, 1, 0)
    p3 = protocol3_folds()
    assert [f.name for f in p3] == ["CW→PS", "PS→CW"] and [f.alias for f in p3] == ["CW-PS", "PS-CW"]
    assert p3[0].sources == ("C", "W") and p3[0].targets == ("P", "S")
    assert protocol3_folds([("AB", "C"), (("Lab1",), ("Lab2", "Lab3"))])[1].name == "Lab1→Lab2+Lab3"
    assert [f.name for f in protocol_folds("P3")] == ["CW→PS", "PS→CW"]
    assert protocol_folds(1, ["A", "B"])[0].name == "B→A" and len(protocol_folds("p2")) == 12
    with pytest.raises(ValueError, match="outside domains"):
        protocol_folds(3, ["A", "B", "C"])
    with pytest.raises(ValueError, match="protocol must be"):
        protocol_folds(4)
    with pytest.raises(ValueError, match="pairs"):
        protocol3_folds([("CW",)])


def test_fold_validation_and_equality():
    assert Fold("CPS", "W") == Fold(("C", "P", "S"), ("W",))
    assert Fold("CPS", "W", ["ir", "depth"]).missing_modalities == ("depth", "ir")  # canonical order
    assert Fold("CPS", "W", "ir").name == "CPS→W w/o IR"
    assert Fold("CPS", "W", name="custom").name == "custom" and Fold("CPS", "W", name="custom").alias == "CPS-W"
    with pytest.raises(ValueError, match="both source and target"):
        Fold("CPW", "W")
    with pytest.raises(ValueError, match="unknown"):
        Fold("CPS", "W", ("thermal",))
    with pytest.raises(ValueError, match="every modality"):
        Fold("CPS", "W", ("rgb", "depth", "ir"))
    with pytest.raises(ValueError, match="empty"):
        Fold("", "W")
    with pytest.raises(ValueError, match="domain names"):
        Fold(("C P",), "W")


def test_parse_fold_round_trips():
    for fold in protocol1_folds() + protocol2_folds() + protocol3_folds():
        assert parse_fold(fold.name) == fold and parse_fold(fold.alias) == fold
        assert parse_fold(fold.name).name == fold.name
    assert parse_fold("CPS->W") == Fold("CPS", "W")
    assert parse_fold("C+P+S-W") == Fold("CPS", "W")
    assert parse_fold("CPS→W w/o d+ir").missing_modalities == ("depth", "ir")
    f = parse_fold("CeFA+WMCA-SURF", domains=["CeFA", "WMCA", "SURF"])
    assert f.sources == ("CeFA", "WMCA") and f.targets == ("SURF",)
    for bad in ("CPSW", "", "C-P-S", "CPS→W w/o thermal"):
        with pytest.raises(ValueError):
            parse_fold(bad)


def test_build_fold_selects_domains():
    bench = tiny_benchmark()
    splits = build_fold(bench, Fold("CPS", "W"))
    assert list(splits) == ["train", "validation", "test"]
    assert sorted(set(splits["train"]["domain"])) == ["C", "P", "S"]
    assert len(splits["train"]) == 5 + 3 + 4 and len(splits["validation"]) == 12 and len(splits["test"]) == 4
    assert splits["test"]["video_id"] == [f"W/test/{i}" for i in range(4)]
    assert splits["validation"]["video_id"][:2] == ["C/validation/0", "C/validation/1"]
    assert all(v.startswith(("C/train", "P/train", "S/train")) for v in splits["train"]["video_id"])
    assert splits["test"][0]["depth"] == "depth:W/test/0"  # nothing blanked without missing modalities
    # Protocol 3 uses two targets
    p3 = build_fold(bench, protocol3_folds()[0])
    assert sorted(set(p3["test"]["domain"])) == ["P", "S"] and len(p3["test"]) == 3 + 4
    assert sorted(set(p3["validation"]["domain"])) == ["C", "W"]


def test_build_fold_errors():
    bench = tiny_benchmark()
    with pytest.raises(ValueError, match=r"unknown domain\(s\) \['X'\]; the benchmark has \['C', 'P', 'S', 'W'\]"):
        build_fold(bench, Fold("CPX", "W"))
    no_w_test = tiny_benchmark(test={"C": (1, 1), "P": (1, 1)})
    with pytest.raises(ValueError, match=r"split 'test' is empty for domains \['W'\]"):
        build_fold(no_w_test, Fold("CPS", "W"))
    one_class = tiny_benchmark(validation={"C": (0, 3), "P": (0, 2), "S": (0, 1), "W": (2, 2)})
    with pytest.raises(ValueError, match="single class .*0 live / 6 spoof.*threshold"):
        build_fold(one_class, Fold("CPS", "W"))
    build_fold(one_class, Fold("CW", "P"))  # W brings live rows into validation: fine
    with pytest.raises(ValueError, match="lacks split"):
        build_fold(datasets.DatasetDict({"train": bench["train"]}), Fold("CPS", "W"))
    with pytest.raises(ValueError, match="'domain' column"):
        build_fold(datasets.DatasetDict({s: bench[s].remove_columns("domain") for s in bench}), Fold("CPS", "W"))
    with pytest.raises(ValueError, match="DatasetDict"):
        build_fold(bench["train"], Fold("CPS", "W"))


def test_build_fold_missing_modalities_and_transform_kept():
    bench = tiny_benchmark()
    calls = []

    def decoder(batch):  # like data.py's lazy decoder: would be slow (and here: recorded) if filter used it
        calls.append(len(batch["rgb"]))
        return {**batch, **{k: [None if p is None else p.upper() for p in batch[k]] for k in ("rgb", "depth", "ir")}}

    for split in bench:
        bench[split].set_transform(decoder, output_all_columns=True)
    fold = protocol2_folds()[11]  # CPS→W w/o D+IR
    splits = build_fold(bench, fold)
    assert calls == []  # filtering never ran the decoder
    row = splits["test"][0]
    assert row["rgb"] == "RGB:W/TEST/0" and row["depth"] is None and row["ir"] is None
    assert row["domain"] == "W" and row["label"] == 1
    assert splits["test"].column_names == bench["test"].column_names
    assert splits["validation"][0]["depth"] == "DEPTH:C/VALIDATION/0"  # sources keep all modalities
    assert bench["test"][len(bench["test"]) - 1]["depth"] == "DEPTH:W/TEST/3"  # the input is untouched
    assert splits["test"].format["type"] == "custom"
    val_blank = build_fold(bench, Fold("CPS", "W", ("ir",)), missing_in_validation=True)
    assert val_blank["validation"][0]["ir"] is None and val_blank["validation"][0]["depth"] is not None
    assert val_blank["train"][0]["ir"] is not None


def test_build_fold_image_features():
    img = Image.new("L", (4, 4), 7)
    rgb = Image.new("RGB", (4, 4), (1, 2, 3))
    feats = datasets.Features({"rgb": datasets.Image(), "depth": datasets.Image(), "ir": datasets.Image(),
                               "label": datasets.ClassLabel(names=["spoof", "live"]),
                               "domain": datasets.Value("string")})
    data = {"rgb": [rgb] * 4, "depth": [img] * 4, "ir": [img, None, img, img], "label": [0, 1, 0, 1],
            "domain": ["A", "A", "B", "B"]}
    split = datasets.Dataset.from_dict(data, features=feats)
    bench = datasets.DatasetDict({"train": split, "validation": split, "test": split})
    out = build_fold(bench, Fold("A", "B", ("depth",)))
    assert out["test"].features == feats
    row = out["test"][1]
    assert row["depth"] is None and row["ir"].mode == "L" and np.asarray(row["rgb"])[0, 0].tolist() == [1, 2, 3]
    assert out["train"][1]["ir"] is None and out["train"][0]["depth"].size == (4, 4)


def test_build_fold_is_fast_on_many_rows():
    import time

    spec = {"C": (3000, 6000), "P": (600, 500), "S": (2000, 8000), "W": (400, 1300)}
    bench = tiny_benchmark(train=spec, validation=spec, test=spec)
    start = time.perf_counter()
    splits = build_fold(bench, Fold("CPS", "W", ("depth", "ir")))
    elapsed = time.perf_counter() - start
    assert len(splits["train"]) == 9000 + 1100 + 10000 and len(splits["test"]) == 1700
    assert splits["test"][5]["depth"] is None
    assert elapsed < 10.0, elapsed

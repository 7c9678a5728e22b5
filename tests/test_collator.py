"""FasCollator: rows -> model keyword inputs, codes for attack type / video, dropped modalities."""

import numpy as np
import pytest
import torch
from PIL import Image
from test_data_readers import build_tree  # the fixture tree of every MMDG layout

from modeling_bigmoe.augmentation import FasAugmentation
from modeling_bigmoe.data import DEFAULT_ATTACK_TYPES, FasCollator, load_mmdg_benchmark, video_id_code
from modeling_bigmoe.image_processing_bigmoe import BigMoeImageProcessor

RNG = np.random.default_rng(0)


def _row(label, attack, video, depth=True):
    return {
        "rgb": Image.fromarray(RNG.integers(0, 256, (7, 6, 3), dtype=np.uint8)),
        "depth": Image.fromarray(RNG.integers(0, 256, (7, 6), dtype=np.uint8)) if depth else None,
        "ir": Image.fromarray(RNG.integers(0, 256, (7, 6), dtype=np.uint8)),
        "label": label,
        "domain": "W",
        "attack_type": attack,
        "subject_id": "s",
        "video_id": video,
    }


def test_matches_processor_and_codes():
    rows = [_row(1, "live", "W/a"), _row(0, "replay", "W/b", depth=False), _row(0, "print", "W/a")]
    processor = BigMoeImageProcessor(size=4, fill_value=-3.0)
    out = FasCollator(processor)(rows)
    ref = processor(
        images=[r["rgb"] for r in rows],
        depth_images=[r["depth"] for r in rows],
        ir_images=[r["ir"] for r in rows],
    )
    for key in ("pixel_values", "depth_pixel_values", "ir_pixel_values", "modality_mask"):
        assert torch.equal(out[key], ref[key])
    assert out["modality_mask"].tolist() == [[True, True, True], [True, False, True], [True, True, True]]
    assert torch.all(out["depth_pixel_values"][1] == -3.0)
    assert out["labels"].dtype == torch.long and out["labels"].tolist() == [1, 0, 0]
    assert out["attack_type"].tolist() == [0, 3, 2]  # positions in DEFAULT_ATTACK_TYPES
    assert DEFAULT_ATTACK_TYPES[:4] == ("live", "spoof", "print", "replay")
    assert out["video_id"].tolist() == [video_id_code("W/a"), video_id_code("W/b"), video_id_code("W/a")]
    assert out["video_id"][0] == out["video_id"][2] != out["video_id"][1] and out["video_id"].min() >= 0
    assert sorted(out) == sorted(
        [
            "pixel_values",
            "depth_pixel_values",
            "ir_pixel_values",
            "modality_mask",
            "labels",
            "attack_type",
            "video_id",
        ]
    )
    plain = FasCollator(processor, return_metadata=False)(rows)
    assert "attack_type" not in plain and "video_id" not in plain


def test_drop_and_select_modalities():
    rows = [_row(1, "live", "W/a"), _row(0, "mask", "W/b")]
    processor = BigMoeImageProcessor(size=4, normalization="fas127")
    out = FasCollator(processor, drop_modalities=("depth", "ir"))(rows)
    assert out["modality_mask"].tolist() == [[True, False, False]] * 2
    assert torch.all(out["depth_pixel_values"] == 0) and torch.all(out["ir_pixel_values"] == 0)
    full = FasCollator(processor)(rows)
    assert torch.equal(out["pixel_values"], full["pixel_values"])
    only_depth = FasCollator(processor, modalities=("depth",))(rows)
    assert only_depth["modality_mask"].tolist() == [[False, True, False]] * 2
    assert torch.equal(only_depth["depth_pixel_values"], full["depth_pixel_values"])


def test_augmentation_between_rescale_and_normalisation():
    rows = [_row(1, "live", "W/a", depth=False), _row(0, "print", "W/b")]
    processor = BigMoeImageProcessor(size=5, fill_value=0.0)
    out = FasCollator(processor, augmentation=FasAugmentation(seed=4))(rows)
    raw = processor(
        images=[r["rgb"] for r in rows],
        depth_images=[r["depth"] for r in rows],
        ir_images=[r["ir"] for r in rows],
        do_normalize=False,
    )
    expected = processor.normalize_modalities(FasAugmentation(seed=4)(dict(raw)))
    for key in ("pixel_values", "depth_pixel_values", "ir_pixel_values"):
        torch.testing.assert_close(out[key], expected[key])
    assert torch.all(out["depth_pixel_values"][0] == 0.0)  # missing stays filled after augmentation
    unaugmented = FasCollator(processor)(rows)
    assert not torch.allclose(out["pixel_values"], unaugmented["pixel_values"])


def test_end_to_end_with_loader_and_dataloader(tmp_path):
    root, lists = str(tmp_path / "data"), str(tmp_path / "lists")
    build_tree(root, lists)
    dsd = load_mmdg_benchmark(root, lists, progress=False)
    collator = FasCollator.from_dataset(BigMoeImageProcessor(size=8), dsd)
    assert collator.attack_type_names == ["live", "spoof"]
    assert len(collator.video_id_names) == 24 and collator.video_id_names == sorted(collator.video_id_names)
    loader = torch.utils.data.DataLoader(dsd["test"], batch_size=3, collate_fn=collator, shuffle=False)
    batches = list(loader)
    assert [b["labels"].tolist() for b in batches] == [[1, 0, 1], [0, 1, 0], [1, 0]]
    raw = dsd["test"].with_format(None)
    codes = torch.cat([b["video_id"] for b in batches]).tolist()
    assert [collator.video_id_names[c] for c in codes] == raw["video_id"]
    assert torch.cat([b["attack_type"] for b in batches]).tolist() == [
        0 if lab == 1 else 1 for lab in raw["label"]
    ]
    assert all(b["modality_mask"].all() and b["pixel_values"].shape[1:] == (3, 8, 8) for b in batches)


def test_synthetic_attack_types_are_in_the_default_vocabulary():
    synthetic = pytest.importorskip("modeling_bigmoe.synthetic")
    assert set(synthetic.ATTACK_TYPES) <= set(DEFAULT_ATTACK_TYPES)
    assert len(set(DEFAULT_ATTACK_TYPES)) == len(DEFAULT_ATTACK_TYPES)


@pytest.mark.parametrize(
    "rows, kwargs, message",
    [
        ([], {}, "empty batch"),
        (
            [{**_row(1, "live", "W/a"), "label": 2}],
            {},
            r"row 0: label must be 0 \(spoof\) or 1 \(live\), got 2",
        ),
        ([{k: v for k, v in _row(1, "live", "W/a").items() if k != "label"}], {}, "row 0: no 'label' field"),
        (
            [_row(1, "live", "W/a"), _row(0, "deepfake", "W/b")],
            {},
            r"row 1: attack_type 'deepfake' is not in the collator's vocabulary",
        ),
        ([_row(1, "live", "W/zzz")], {"video_id_names": ["W/a"]}, r"row 0: video_id 'W/zzz' is not in"),
    ],
)
def test_bad_rows(rows, kwargs, message):
    with pytest.raises(ValueError, match=message):
        FasCollator(BigMoeImageProcessor(size=4), **kwargs)(rows)


def test_bad_settings():
    processor = BigMoeImageProcessor(size=4)
    with pytest.raises(ValueError, match="drop_modalities must be a tuple drawn from"):
        FasCollator(processor, drop_modalities="depth")
    with pytest.raises(ValueError, match="modalities must be a tuple drawn from"):
        FasCollator(processor, modalities=("rgb", "thermal"))
    with pytest.raises(ValueError, match="no modality left"):
        FasCollator(processor, modalities=("depth",), drop_modalities=("depth",))
    with pytest.raises(ValueError, match="attack_type_names has duplicates"):
        FasCollator(processor, attack_type_names=["live", "print", "live"])


def test_domain_labels_for_training_batches():
    rows = [_row(1, "live", "W/a"), _row(0, "print", "W/b"), _row(0, "mask", "W/c")]
    rows[1]["domain"] = "C"
    processor = BigMoeImageProcessor(size=4)
    out = FasCollator(processor, domain_names=["C", "W"])(rows)
    assert out["domain_labels"].dtype == torch.long and out["domain_labels"].tolist() == [1, 0, 1]
    assert "domain_labels" not in FasCollator(processor)(rows)  # only when asked: evaluation never gets them
    with pytest.raises(ValueError, match=r"row 0: domain 'W' is not in the collator's vocabulary"):
        FasCollator(processor, domain_names=["C", "P"])(rows)
    del rows[2]["domain"]
    with pytest.raises(ValueError, match=r"row 2: no 'domain' field"):
        FasCollator(processor, domain_names=["C", "W"])(rows)
    with pytest.raises(ValueError, match="domain_names has duplicates"):
        FasCollator(processor, domain_names=["C", "C"])
    with pytest.raises(ValueError, match="domain_names must be a list"):
        FasCollator(processor, domain_names="CW")

"""BigMoeImageProcessor: value checks by hand, PIL parity, input kinds, missing modalities, bad input."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, PreTrainedConfig

from modeling_bigmoe.image_processing_bigmoe import CLIP_MEAN, CLIP_STD, BigMoeImageProcessor, detect_face_box

RNG = np.random.default_rng(0)


def _rgb(h=6, w=5):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_defaults_and_names():
    p = BigMoeImageProcessor()
    assert p.size == {"height": 224, "width": 224} and p.resample == 2 and p.normalization == "clip"
    assert p.model_input_names == ["pixel_values", "depth_pixel_values", "ir_pixel_values", "modality_mask"]
    assert p.image_mean == list(CLIP_MEAN) and p.image_std == list(CLIP_STD)


def test_clip_and_fas127_values_by_hand():
    arr = np.array([[[0, 128, 255], [10, 20, 30]]], dtype=np.uint8)  # (1, 2, 3)
    clip = BigMoeImageProcessor(do_resize=False)(images=arr)["pixel_values"][0]
    for c in range(3):
        for x in range(2):
            expected = (arr[0, x, c] / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c]
            assert clip[c, 0, x].item() == pytest.approx(expected, abs=1e-6)
    fas = BigMoeImageProcessor(do_resize=False, normalization="fas127")(images=arr)["pixel_values"][0]
    assert fas[:, 0, 0].tolist() == pytest.approx([-127.5 / 128, 0.5 / 128, 127.5 / 128], abs=1e-6)
    assert fas[:, 0, 1].tolist() == pytest.approx(
        [(10 - 127.5) / 128, (20 - 127.5) / 128, (30 - 127.5) / 128], abs=1e-6
    )
    raw = BigMoeImageProcessor(do_resize=False, normalization="none")(images=arr)["pixel_values"][0]
    assert raw[:, 0, 0].tolist() == pytest.approx([0.0, 128 / 255, 1.0], abs=1e-7)
    custom = BigMoeImageProcessor(
        do_resize=False, normalization="custom", image_mean=[0.5] * 3, image_std=[0.25] * 3
    )
    assert custom(images=arr)["pixel_values"][0, 2, 0, 0].item() == pytest.approx((1.0 - 0.5) / 0.25)


def test_single_channel_repeated_and_input_kinds_agree(tmp_path):
    rgb = _rgb()
    gray = RNG.integers(0, 256, (6, 5), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    p = BigMoeImageProcessor(size=4)
    ref = p(images=Image.fromarray(rgb), depth_images=Image.fromarray(gray))
    variants = [
        dict(images=rgb, depth_images=gray),
        dict(images=np.moveaxis(rgb, -1, 0), depth_images=gray[..., None]),
        dict(images=torch.from_numpy(rgb).permute(2, 0, 1), depth_images=torch.from_numpy(gray)[None]),
        dict(
            images=torch.from_numpy(rgb).permute(2, 0, 1).float() / 255,
            depth_images=gray.astype(np.float64) / 255,
        ),
        dict(images=str(tmp_path / "rgb.png"), depth_images=(gray.astype(np.uint16) * 257)),
        dict(images=[rgb], depth_images=Image.fromarray(gray.astype(np.uint16) * 257)),
        dict(images=rgb[None], depth_images=[gray]),
    ]
    for kwargs in variants:
        out = p(**kwargs)
        for key in ("pixel_values", "depth_pixel_values"):
            torch.testing.assert_close(out[key], ref[key], atol=1e-5, rtol=0)
    d = ref["depth_pixel_values"][0]
    # one channel repeated, then normalised with each channel's CLIP statistics
    torch.testing.assert_close(
        (d[0] * CLIP_STD[0] + CLIP_MEAN[0]), (d[2] * CLIP_STD[2] + CLIP_MEAN[2]), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("src, dst", [((40, 30), (16, 16)), ((8, 8), (20, 12)), ((33, 17), (33, 17))])
def test_bilinear_resize_matches_pil(src, dst):
    arr = RNG.integers(0, 256, (src[0], src[1], 3), dtype=np.uint8)
    p = BigMoeImageProcessor(size={"height": dst[0], "width": dst[1]}, normalization="none")
    ours = p(images=arr)["pixel_values"][0].permute(1, 2, 0).numpy() * 255
    # PIL's float mode "F" resizes without rounding, so the comparison can be tight
    pil = np.stack(
        [
            np.asarray(
                Image.fromarray(arr[..., c].astype(np.float32)).resize((dst[1], dst[0]), Image.BILINEAR)
            )
            for c in range(3)
        ],
        axis=-1,
    )
    assert ours.shape == pil.shape
    np.testing.assert_allclose(ours, pil, atol=2e-3)


def test_missing_modalities_and_mask():
    p = BigMoeImageProcessor(size=3, fill_value=-2.0)
    rgb = [_rgb(), _rgb()]
    out = p(images=rgb, ir_images=[None, _rgb()[..., 0]])
    assert out["modality_mask"].dtype == torch.bool
    assert out["modality_mask"].tolist() == [[True, False, False], [True, False, True]]
    assert torch.all(out["depth_pixel_values"] == -2.0) and torch.all(out["ir_pixel_values"][0] == -2.0)
    assert out["ir_pixel_values"][1].abs().max() < 3  # a real image, normalised
    masked = p(images=rgb, ir_images=[None, _rgb()[..., 0]], modality_mask=[[0, 1, 1], [1, 1, 0]])
    assert masked["modality_mask"].tolist() == [[False, False, False], [True, False, False]]
    assert torch.all(masked["pixel_values"][0] == -2.0) and torch.all(masked["ir_pixel_values"] == -2.0)
    torch.testing.assert_close(masked["pixel_values"][1], out["pixel_values"][1])
    only_depth = p(depth_images=_rgb()[..., 1])
    assert only_depth["modality_mask"].tolist() == [[False, True, False]]
    assert only_depth["pixel_values"].shape == (1, 3, 3, 3)
    np_out = p(images=rgb, return_tensors="np")
    assert isinstance(np_out["pixel_values"], np.ndarray) and np_out["modality_mask"].dtype == np.bool_


def test_normalize_modalities_is_out_of_place():
    p = BigMoeImageProcessor(size=2, do_normalize=False)
    out = p(images=_rgb(), depth_images=[None])
    before = out["pixel_values"].clone()
    assert torch.all(out["depth_pixel_values"] == 0)
    normed = p.normalize_modalities(dict(out))
    torch.testing.assert_close(out["pixel_values"], before)
    expected = (before - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(normed["pixel_values"], expected)
    assert torch.all(normed["depth_pixel_values"] == 0.0)


@pytest.mark.parametrize(
    "kwargs, exc, message",
    [
        (
            dict(images=_rgb(), depth_images=np.zeros((6, 5, 4), np.uint8)),
            ValueError,
            r"depth_images\[0\]: depth image has 4 channels",
        ),
        (
            dict(images=_rgb(), depth_images=Image.new("RGBA", (5, 6))),
            ValueError,
            r"depth_images\[0\]: .*4 channels \(mode 'RGBA'\)",
        ),
        (
            dict(images=_rgb(), ir_images=torch.zeros(4, 6, 5)),
            ValueError,
            r"ir_images\[0\]: ir image has 4 channels",
        ),
        (dict(images=Image.new("P", (5, 6))), ValueError, r"images\[0\]: unsupported PIL mode 'P'"),
        (dict(images=Image.new("CMYK", (5, 6))), ValueError, r"images\[0\]: .*4 channels \(mode 'CMYK'\)"),
        (
            dict(images=[_rgb(), _rgb()], depth_images=[_rgb()[..., 0]]),
            ValueError,
            r"batch sizes differ between modalities: \{'images': 2, 'depth_images': 1\}",
        ),
        (
            dict(images=_rgb(), ir_images=np.full((6, 5), np.nan)),
            ValueError,
            r"ir_images\[0\]: ir image contains NaN",
        ),
        (
            dict(images=np.full((6, 5, 3), 2.0)),
            ValueError,
            r"images\[0\]: float rgb image must lie in \[0, 1\], got range \[2, 2\]",
        ),
        (dict(images=np.zeros((6, 5, 3), np.int64)), ValueError, r"images\[0\]: unsupported dtype int64"),
        (dict(images="/nonexistent/face.png"), FileNotFoundError, r"images\[0\]: image file not found"),
        (dict(images=None), ValueError, "at least one of images, depth_images, ir_images"),
        (dict(images=[]), ValueError, "empty batch"),
        (
            dict(images=_rgb(), modality_mask=[[1, 1]]),
            ValueError,
            r"modality_mask must have shape \(1, 3\), got \(1, 2\)",
        ),
        (dict(images=_rgb(), return_tensors="tf"), ValueError, "return_tensors must be 'pt' or 'np'"),
    ],
)
def test_bad_input(kwargs, exc, message):
    with pytest.raises(exc, match=message):
        BigMoeImageProcessor(size=4)(**kwargs)


def test_bad_settings():
    with pytest.raises(ValueError, match="normalization must be one of"):
        BigMoeImageProcessor(normalization="imagenet")
    with pytest.raises(ValueError, match="normalization='custom' needs image_mean"):
        BigMoeImageProcessor(normalization="custom")
    with pytest.raises(ValueError, match="resample must be one of"):
        BigMoeImageProcessor(resample=1)


def test_corrupt_file_path(tmp_path):
    path = tmp_path / "bad.jpg"
    path.write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(ValueError, match=r"ir_images\[0\]: cannot decode image file .*bad.jpg"):
        BigMoeImageProcessor(size=4)(images=_rgb(), ir_images=str(path))


class _TinyFasConfig(PreTrainedConfig):
    model_type = "bigmoe_ip_test"


def test_save_load_roundtrip_and_auto(tmp_path):
    p = BigMoeImageProcessor(size={"height": 5, "width": 7}, normalization="fas127", fill_value=-1.0)
    p.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "BigMoeImageProcessor"
    assert saved["normalization"] == "fas127" and saved["size"] == {"height": 5, "width": 7}
    q = BigMoeImageProcessor.from_pretrained(tmp_path)
    assert q.to_dict() == p.to_dict()
    x = _rgb(9, 9)
    torch.testing.assert_close(q(images=x)["pixel_values"], p(images=x)["pixel_values"])
    AutoImageProcessor.register(
        _TinyFasConfig, image_processor_classes={"pil": BigMoeImageProcessor}, exist_ok=True
    )
    r = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(r) is BigMoeImageProcessor and r.to_dict() == p.to_dict()


def test_face_crop_on_astronaut():
    skdata = pytest.importorskip("skimage.data")
    astro = skdata.astronaut()  # 512 x 512, face near x 170-270, y 60-170
    top, left, h, w = detect_face_box(astro)
    assert 40 <= top <= 90 and 150 <= left <= 200 and 80 <= h <= 130 and 80 <= w <= 130
    p = BigMoeImageProcessor(size=32, do_face_crop=True, face_crop_margin=0.25, normalization="none")
    depth = np.asarray(Image.fromarray(astro[..., 0]).resize((256, 256), Image.BILINEAR))  # half resolution
    out = p(images=astro, depth_images=depth)
    # brute force: the same box, grown by 25 % per side and squared, cropped by hand
    cy, cx, half = top + h / 2, left + w / 2, max(h, w) * 0.75
    t, b, l_, r = (
        int(np.floor(cy - half)),
        int(np.ceil(cy + half)),
        int(np.floor(cx - half)),
        int(np.ceil(cx + half)),
    )
    plain = BigMoeImageProcessor(size=32, normalization="none")
    expected = plain(images=astro[t:b, l_:r])["pixel_values"]
    torch.testing.assert_close(out["pixel_values"], expected)
    d_t, d_b, d_l, d_r = int(np.floor(t / 2)), int(np.ceil(b / 2)), int(np.floor(l_ / 2)), int(np.ceil(r / 2))
    expected_depth = plain(depth_images=depth[d_t:d_b, d_l:d_r])["depth_pixel_values"]
    torch.testing.assert_close(out["depth_pixel_values"], expected_depth)
    no_face = np.full((64, 64, 3), 128, np.uint8)  # nothing to detect: the full image is kept
    torch.testing.assert_close(p(images=no_face)["pixel_values"], plain(images=no_face)["pixel_values"])

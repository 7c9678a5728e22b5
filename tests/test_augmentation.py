"""FasAugmentation: seeding, the shared flip, per-step statistics, the documented order, no in-place."""

import types

import pytest
import torch

from modeling_bigmoe.augmentation import FasAugmentation

OFF = dict(flip_p=0.0, noise_std=0.0, brightness=0.0, channel_add=0.0, gamma=0.0)


def _batch(b=4, h=6, w=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(b, 3, h, w, generator=g) * 0.8 + 0.1
    depth = (torch.rand(b, 1, h, w, generator=g) * 0.8 + 0.1).expand(b, 3, h, w).contiguous()
    ir = (torch.rand(b, 1, h, w, generator=g) * 0.8 + 0.1).expand(b, 3, h, w).contiguous()
    return {
        "pixel_values": rgb,
        "depth_pixel_values": depth,
        "ir_pixel_values": ir,
        "modality_mask": torch.ones(b, 3, dtype=torch.bool),
    }


def test_same_seed_same_output_and_stream_advances():
    x = _batch()
    a, b = FasAugmentation(seed=7), FasAugmentation(seed=7)
    first_a, first_b = a(x), b(x)
    for key in ("pixel_values", "depth_pixel_values", "ir_pixel_values"):
        assert torch.equal(first_a[key], first_b[key])
    second_a = a(x)
    assert not torch.equal(second_a["pixel_values"], first_a["pixel_values"])
    assert torch.equal(second_a["pixel_values"], b(x)["pixel_values"])
    assert not torch.equal(FasAugmentation(seed=8)(x)["pixel_values"], first_a["pixel_values"])
    a.reseed(7)
    assert torch.equal(a(x)["pixel_values"], first_a["pixel_values"])
    torch.manual_seed(3)
    g1 = FasAugmentation(seed=None)(x)
    torch.manual_seed(3)
    assert torch.equal(FasAugmentation(seed=None)(x)["ir_pixel_values"], g1["ir_pixel_values"])


def test_never_in_place_and_passthrough():
    x = _batch()
    copies = {k: v.clone() for k, v in x.items()}
    out = FasAugmentation(seed=0)(x)
    for k, v in copies.items():
        assert torch.equal(x[k], v)
    assert out["pixel_values"].data_ptr() != x["pixel_values"].data_ptr()
    assert out["modality_mask"] is x["modality_mask"]
    identity = FasAugmentation(**OFF, clamp=False, seed=0)(x)
    assert torch.equal(identity["pixel_values"], x["pixel_values"])
    assert identity["pixel_values"].data_ptr() != x["pixel_values"].data_ptr()
    with_none = FasAugmentation(seed=0)({"rgb": x["pixel_values"], "depth": None})
    assert with_none["depth"] is None and with_none["rgb"].shape == x["pixel_values"].shape


def test_flip_is_shared_across_modalities():
    x = _batch(b=64)
    out = FasAugmentation(**{**OFF, "flip_p": 0.5}, seed=3)(x)
    flipped = []
    for i in range(64):
        states = []
        for key in ("pixel_values", "depth_pixel_values", "ir_pixel_values"):
            if torch.equal(out[key][i], x[key][i].flip(-1)):
                states.append(True)
            else:
                assert torch.equal(out[key][i], x[key][i])
                states.append(False)
        assert len(set(states)) == 1, f"sample {i}: flips differ across modalities {states}"
        flipped.append(states[0])
    assert 18 <= sum(flipped) <= 46  # Binomial(64, 0.5): beyond 3.5 sigma otherwise
    all_flipped = FasAugmentation(**{**OFF, "flip_p": 1.0}, seed=0)(x)
    assert torch.equal(all_flipped["ir_pixel_values"], x["ir_pixel_values"].flip(-1))


def test_noise_changes_std_by_the_configured_amount():
    b, h, w = 8, 64, 64
    x = {"pixel_values": torch.full((b, 3, h, w), 0.5), "depth_pixel_values": torch.full((b, 3, h, w), 0.5)}
    for std in (0.02, 0.1):
        out = FasAugmentation(**{**OFF, "noise_std": std}, clamp=False, seed=0)(x)
        delta = out["pixel_values"] - 0.5
        assert delta.std().item() == pytest.approx(std, rel=0.02)
        assert abs(delta.mean().item()) < 3 * std / (delta.numel() ** 0.5)
        depth = out["depth_pixel_values"]
        assert torch.equal(depth[:, 0], depth[:, 2])  # gray modality: one noise field for its 3 channels
        assert not torch.equal(out["pixel_values"][:, 0], out["pixel_values"][:, 2])


def test_brightness_channel_add_and_gamma_ranges():
    b = 400
    ramp = torch.linspace(0.05, 0.95, 20).view(1, 1, 4, 5).expand(b, 3, 4, 5).contiguous()
    x = {"pixel_values": ramp, "ir_pixel_values": ramp.clone()}
    out = FasAugmentation(**{**OFF, "brightness": 0.2}, clamp=False, seed=0)(x)["pixel_values"]
    ratio = out / ramp
    per_image = ratio.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-5)  # one factor per image
    f = per_image[:, 0]
    assert f.min() >= 0.8 - 1e-6 and f.max() <= 1.2 + 1e-6 and f.min() < 0.81 and f.max() > 1.19
    assert f.mean().item() == pytest.approx(1.0, abs=0.02)

    out = FasAugmentation(**{**OFF, "channel_add": 0.1}, clamp=False, seed=0)(x)
    add_rgb = (out["pixel_values"] - ramp).flatten(2)
    assert torch.allclose(add_rgb, add_rgb[..., :1].expand_as(add_rgb), atol=1e-6)  # one offset per channel
    assert add_rgb.abs().max() <= 0.1 + 1e-6 and add_rgb.abs().max() > 0.099
    assert not torch.allclose(add_rgb[:, 0, 0], add_rgb[:, 1, 0])
    add_ir = (out["ir_pixel_values"] - ramp)[:, :, 0, 0]
    assert torch.allclose(add_ir[:, 0], add_ir[:, 2], atol=1e-7)  # gray: shared offset

    out = FasAugmentation(**{**OFF, "gamma": 0.3}, clamp=False, seed=0)(x)["pixel_values"]
    g = torch.log(out) / torch.log(ramp)
    per_image = g.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-4)
    assert per_image.min() >= 0.7 - 1e-4 and per_image.max() <= 1.3 + 1e-4


def test_full_pipeline_follows_documented_order():
    x = _batch(b=3)
    params = dict(flip_p=0.5, noise_std=0.03, brightness=0.3, channel_add=0.2, gamma=0.4)
    out = FasAugmentation(**params, seed=11)(x)
    g = torch.Generator().manual_seed(11)
    b, _, h, w = x["pixel_values"].shape
    flip = torch.rand(b, generator=g) < 0.5
    for key, gray in (("pixel_values", False), ("depth_pixel_values", True), ("ir_pixel_values", True)):
        c = 1 if gray else 3
        y = x[key].clone()
        for i in range(b):
            if flip[i]:
                y[i] = y[i].flip(-1)
        y = y * (1 + 0.3 * (2 * torch.rand(b, 1, 1, 1, generator=g) - 1))
        y = y + 0.2 * (2 * torch.rand(b, c, 1, 1, generator=g) - 1)
        y = y.clamp(0, 1) ** (1 + 0.4 * (2 * torch.rand(b, 1, 1, 1, generator=g) - 1))
        y = (y + 0.03 * torch.randn(b, c, h, w, generator=g)).clamp(0, 1)
        torch.testing.assert_close(out[key], y, atol=1e-6, rtol=0)
    assert out["pixel_values"].min() >= 0 and out["pixel_values"].max() <= 1


def test_dataloader_worker_reseeds(monkeypatch):
    x = _batch()
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: types.SimpleNamespace(id=2))
    in_worker = FasAugmentation(seed=5)(x)
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: None)
    assert torch.equal(in_worker["pixel_values"], FasAugmentation(seed=7)(x)["pixel_values"])


@pytest.mark.parametrize(
    "inputs, message",
    [
        ([torch.zeros(1, 3, 2, 2)], "inputs must be a dict"),
        ({"labels": torch.zeros(2)}, "inputs hold no modality tensor"),
        (
            {"rgb": torch.zeros(2, 1, 4, 4)},
            r"inputs\['rgb'\] must be a \(b, 3, H, W\) tensor, got \(2, 1, 4, 4\)",
        ),
        ({"rgb": torch.zeros(2, 3, 4, 4, dtype=torch.uint8)}, "must be a float tensor"),
        (
            {"rgb": torch.zeros(2, 3, 4, 4), "ir": torch.zeros(3, 3, 4, 4)},
            r"inputs\['ir'\] has 3 samples, expected 2",
        ),
    ],
)
def test_bad_inputs(inputs, message):
    with pytest.raises(ValueError, match=message):
        FasAugmentation(seed=0)(inputs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(flip_p=1.5), r"flip_p must be in \[0.0, 1.0\], got 1.5"),
        (dict(noise_std=-0.1), "noise_std must be in"),
        (dict(gamma=1.0), "gamma must be in"),
        (dict(gray_modalities=("thermal",)), "gray_modalities must be among"),
    ],
)
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FasAugmentation(**kwargs)

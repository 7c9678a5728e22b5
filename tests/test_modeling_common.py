"""The pieces the three models share (``modeling_bigmoe.modeling_common``): safetensors-only ``from_pretrained``,
the modality-input helpers and the CLIP-text helpers, checked on hand-computed cases."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from modeling_bigmoe import hub_configs, hub_configs_lasoftmoe, hub_configs_mmda
from modeling_bigmoe.modeling_bigmoe import BigMoeForFaceAntiSpoofing
from modeling_bigmoe.modeling_common import (
    FaceAntiSpoofingPreTrainedMixin,
    check_binary_labels,
    check_modality_inputs,
    copy_clip_state_dict,
    merge_modality_mask,
    modality_presence,
    pad_token_ids,
    stack_modalities,
)
from modeling_bigmoe.modeling_lasoftmoe import LaSoftMoeForFaceAntiSpoofing
from modeling_bigmoe.modeling_mmda import MmdaForFaceAntiSpoofing

MODELS = {
    "bigmoe": (BigMoeForFaceAntiSpoofing, hub_configs.tiny_config),
    "mmda": (MmdaForFaceAntiSpoofing, hub_configs_mmda.tiny_config),
    "lasoftmoe": (LaSoftMoeForFaceAntiSpoofing, hub_configs_lasoftmoe.tiny_config),
}


def _inputs(batch: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {k: torch.randn(batch, 3, 32, 32, generator=g)
            for k in ("pixel_values", "depth_pixel_values", "ir_pixel_values")}


# --------------------------------------------------------------------------- from_pretrained: safetensors only
def test_the_three_models_share_from_pretrained():
    shared = FaceAntiSpoofingPreTrainedMixin.from_pretrained.__func__
    for model_class, _ in MODELS.values():
        assert model_class.from_pretrained.__func__ is shared, model_class.__name__
        assert "use_safetensors=False" in model_class.from_pretrained.__doc__


@pytest.mark.parametrize("name", sorted(MODELS))
def test_pickle_only_folder_is_refused_by_default(tmp_path, name):
    model_class, tiny_config = MODELS[name]
    model = model_class(tiny_config()).eval()
    model.config.save_pretrained(tmp_path)
    # the test's own trusted pickle: the only weights in the folder
    torch.save(model.state_dict(), os.path.join(tmp_path, "pytorch_model.bin"))
    assert not os.path.exists(os.path.join(tmp_path, "model.safetensors"))

    with pytest.raises(FileNotFoundError, match=rf"{model_class.__name__}\.from_pretrained: .*pytorch_model\.bin, "
                                                r"a pickle file.*use_safetensors=False"):
        model_class.from_pretrained(tmp_path)
    with pytest.raises(OSError):  # an explicit use_safetensors=True: transformers' own error
        model_class.from_pretrained(tmp_path, use_safetensors=True)

    # explicit opt-in: loads the pickle, same weights, freezing re-applied
    reloaded = model_class.from_pretrained(tmp_path, use_safetensors=False).eval()
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key
    assert ({n for n, p in reloaded.named_parameters() if p.requires_grad}
            == {n for n, p in model.named_parameters() if p.requires_grad})
    inputs = _inputs()
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, model(**inputs).logits)


def test_safetensors_folder_loads_by_default(tmp_path):
    model = BigMoeForFaceAntiSpoofing(hub_configs.tiny_config()).eval()
    model.save_pretrained(tmp_path)
    torch.save(model.state_dict(), os.path.join(tmp_path, "pytorch_model.bin"))  # ignored: safetensors win
    reloaded = BigMoeForFaceAntiSpoofing.from_pretrained(tmp_path).eval()
    inputs = _inputs()
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, model(**inputs).logits)


def test_missing_folder_keeps_transformers_error(tmp_path):
    with pytest.raises(OSError) as info:
        BigMoeForFaceAntiSpoofing.from_pretrained(tmp_path / "nothing-here")
    assert "pickle" not in str(info.value)


def test_trainable_parameter_summary_hand_count():
    model = BigMoeForFaceAntiSpoofing(hub_configs.tiny_config())
    trainable, total, text = model.trainable_parameter_summary()
    assert (total, trainable) == hub_configs.PARAMETER_COUNTS["bigmoe-tiny"]  # 71,008 / 47,136
    assert text == "trainable params: 47,136 || all params: 71,008 || trainable%: 66.3813"  # 100 * 47136 / 71008


# --------------------------------------------------------------------------- modality inputs
def test_check_modality_inputs_batch_size_and_errors():
    x = torch.zeros(2, 3, 4, 4)
    given = {"pixel_values": x, "depth_pixel_values": None, "ir_pixel_values": x}
    assert check_modality_inputs("M", given, (3, 4, 4)) == 2
    assert check_modality_inputs("M", given, (3, 4, 4), torch.tensor([[1, 0, 1], [True, False, False]])) == 2
    cases = [
        ({"pixel_values": None, "depth_pixel_values": None, "ir_pixel_values": None}, None,
         r"M: all modalities are missing \(pixel_values, depth_pixel_values and ir_pixel_values are all None\)"),
        (dict(given, depth_pixel_values=torch.zeros(2, 3, 4, 5)), None,
         r"M: depth_pixel_values must have shape \(batch, 3, 4, 4\), got \(2, 3, 4, 5\)"),
        (dict(given, pixel_values=torch.zeros(2, 3, 4, 4, dtype=torch.long)), None,
         "M: pixel_values must be a float tensor, got Tensor torch.int64"),
        (dict(given, ir_pixel_values=torch.zeros(3, 3, 4, 4)), None,
         r"batch sizes differ between modalities: .*'ir_pixel_values': \(3, 3, 4, 4\)"),
        (given, torch.ones(2, 2), r"modality_mask must have shape \(2, 3\) \(columns rgb, depth, ir\), got \(2, 2\)"),
        (given, torch.tensor([[1, 0, 2], [1, 1, 1]]), r"only 0/1 \(or bools\), got \[\[1, 0, 2\], \[1, 1, 1\]\]"),
    ]
    for bad, mask, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            check_modality_inputs("M", bad, (3, 4, 4), mask)


def test_check_modality_inputs_finite_and_required():
    x = torch.zeros(2, 3, 4, 4)
    nan = x.clone()
    nan[1, 2, 3, 0] = float("nan")
    nan[0, 0, 0, 0] = float("inf")
    given = {"pixel_values": x, "depth_pixel_values": nan, "ir_pixel_values": None}
    with pytest.raises(ValueError, match=r"M: depth_pixel_values \(shape \(2, 3, 4, 4\)\) holds 2 NaN/inf values"):
        check_modality_inputs("M", given, (3, 4, 4))
    # only the listed arguments are checked for NaN/inf
    assert check_modality_inputs("M", given, (3, 4, 4), finite_args=("pixel_values",)) == 2
    # a finite tensor whose sum overflows is still accepted
    big = torch.full((2, 3, 4, 4), 3e38)
    assert check_modality_inputs("M", {"pixel_values": big}, (3, 4, 4)) == 2
    with pytest.raises(ValueError, match=r"M: needs rgb; got \{'pixel_values': None, 'depth_pixel_values'"):
        check_modality_inputs("M", {"pixel_values": None, "depth_pixel_values": x}, (3, 4, 4),
                              required=("pixel_values", "needs rgb"))


def test_presence_mask_and_stack_hand_values():
    a = torch.full((2, 1, 2, 2), 1.0)
    c = torch.full((2, 1, 2, 2), 3.0)
    present = modality_presence([a, None, c], 2)
    assert present.tolist() == [[True, False, True], [True, False, True]]
    mask = merge_modality_mask("M", present, torch.tensor([[1, 0, 0], [0, 0, 1]]), ("rgb", "depth", "ir"))
    assert mask.dtype == torch.bool and mask.tolist() == [[True, False, False], [False, False, True]]
    images = stack_modalities([a, None, c], mask, -1.0, a)
    assert images.shape == (3, 2, 1, 2, 2)
    # per (modality, sample): the tensor where present, else the fill
    assert images[:, :, 0, 0, 0].tolist() == [[1.0, -1.0], [-1.0, -1.0], [-1.0, 3.0]]
    assert a.eq(1.0).all() and c.eq(3.0).all()  # out of place
    with pytest.raises(ValueError, match=r"M: modality_mask marks \['depth'\] present but the tensors are None"):
        merge_modality_mask("M", present, torch.tensor([[1, 1, 0], [1, 0, 0]]), ("rgb", "depth", "ir"))
    with pytest.raises(ValueError, match=r"all modalities missing for samples \[1\]"):
        merge_modality_mask("M", present, torch.tensor([[1, 0, 0], [0, 0, 0]]), ("rgb", "depth", "ir"))


# --------------------------------------------------------------------------- the CLIP-text helpers
def test_check_binary_labels():
    check_binary_labels("M", torch.tensor([0, 1, 1]), 3)
    check_binary_labels("M", torch.zeros(0, dtype=torch.long), 0)
    with pytest.raises(ValueError, match=r"M: labels must be 0 \(spoof\) or 1 \(live\), got \[0, 2\]"):
        check_binary_labels("M", torch.tensor([0, 2]), 2)
    with pytest.raises(ValueError, match=r"M: labels must be an integer tensor of shape \(2,\), got torch.float32"):
        check_binary_labels("M", torch.tensor([0.0, 1.0]), 2)
    with pytest.raises(ValueError, match=r"shape \(2,\), got list \(\)"):
        check_binary_labels("M", [0, 1], 2)


def test_pad_token_ids_hand_values():
    ids, mask = pad_token_ids([[5, 6, 9], [5, 9], [5, 7, 8, 9]], 9)
    assert ids.tolist() == [[5, 6, 9, 9], [5, 9, 9, 9], [5, 7, 8, 9]]
    assert mask.tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    ids, _ = pad_token_ids([[1], [1, 2]], None)  # no int end token: pad with 0
    assert ids.tolist() == [[1, 0], [1, 2]]


def test_copy_clip_state_dict_remaps_and_names_the_keys():
    ours = nn.ModuleDict({"a": nn.Linear(2, 2), "wrap": nn.ModuleDict({"base_layer": nn.Linear(2, 3),
                                                                       "extra": nn.Linear(1, 1)})})
    source = {"a.weight": torch.ones(2, 2), "a.bias": torch.zeros(2),
              "wrap.weight": torch.full((3, 2), 2.0), "wrap.bias": torch.full((3,), 4.0)}

    def remap(key):
        head, _, leaf = key.rpartition(".")
        return f"{head}.base_layer.{leaf}"

    copy_clip_state_dict(ours, source, remap, "extra")
    assert ours["wrap"]["base_layer"].weight.eq(2.0).all() and ours["wrap"]["base_layer"].bias.eq(4.0).all()
    assert ours["a"].weight.eq(1.0).all()
    with pytest.raises(ValueError, match=r"without a place \['a.weight \(3, 2\)'\], our CLIP keys left unset "
                                         r"\['a.weight'\]"):
        copy_clip_state_dict(ours, dict(source, **{"a.weight": torch.ones(3, 2)}), remap, "extra")


# --------------------------------------------------------------------------- configuration_common
def test_config_field_checks_name_the_field():
    from types import SimpleNamespace

    from modeling_bigmoe.configuration_common import check_fields, check_layer_indices, set_default_labels

    good = SimpleNamespace(flag=True, n=3, k=0, p=0.5, s=1e-3, z=0.0, f=-2.5, mode="a")
    kinds = dict(bools=("flag",), positive_ints=("n",), non_negative_ints=("k",), probabilities=("p",),
                 positive_numbers=("s",), non_negative_numbers=("z",), finite_numbers=("f",),
                 choices={"mode": ("a", "b")})
    check_fields(good, "C", **kinds)
    for field, bad, pattern in [
        ("flag", 1, r"C\.flag must be a bool, got 1"),
        ("n", True, r"C\.n must be a positive int, got True"),
        ("k", -1, r"C\.k must be an int >= 0, got -1"),
        ("p", 1.5, r"C\.p must be a number in \[0, 1\], got 1\.5"),
        ("s", float("inf"), r"C\.s must be a positive finite number, got inf"),
        ("z", -0.1, r"C\.z must be a finite number >= 0, got -0\.1"),
        ("f", float("nan"), r"C\.f must be a finite number, got nan"),
        ("mode", "c", r"C\.mode must be one of \('a', 'b'\), got 'c'"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            check_fields(SimpleNamespace(**dict(vars(good), **{field: bad})), "C", **kinds)
    check_layer_indices("C.layers", None, 2)
    check_layer_indices("C.layers", [1, 0], 2)
    with pytest.raises(ValueError, match=r"C\.layers must be distinct ints in \[0, 2\), got \[1, 1\]"):
        check_layer_indices("C.layers", [1, 1], 2)
    assert set_default_labels({"num_labels": 5}) == {"id2label": {0: "spoof", 1: "live"},
                                                     "label2id": {"spoof": 0, "live": 1}}
    assert set_default_labels({"id2label": {0: "a", 1: "b"}}) == {"id2label": {0: "a", 1: "b"}}

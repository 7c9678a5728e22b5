"""The "face-anti-spoofing" pipeline (modeling_bigmoe.pipeline_fas, issue 6 item 4)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hub_fixtures import local_hub  # noqa: F401  (pytest fixture)
from PIL import Image
from transformers import pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from modeling_bigmoe import BigMoeConfig, BigMoeForFaceAntiSpoofing
from modeling_bigmoe.hub import push_run
from modeling_bigmoe.image_processing_bigmoe import BigMoeImageProcessor
from modeling_bigmoe.pipeline_fas import FAS_TASK, FaceAntiSpoofingPipeline, register_pipeline

VISION = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 3, "num_attention_heads": 4,
          "image_size": 32, "patch_size": 8}
SMALL = {"moe_num_experts": 16, "moe_bottleneck_dim": 4, "moe_key_dim": 4, "cpb_prompt_dim": 8,
         "adapter_init": "default"}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = BigMoeForFaceAntiSpoofing(BigMoeConfig(vision_config=VISION, **SMALL)).eval()
    with torch.no_grad():  # scores spread around 0.5, away from saturation
        model.classifier.weight.normal_(0.0, 0.1)
    return model


@pytest.fixture(scope="module")
def processor():
    return BigMoeImageProcessor(size=32, normalization="fas127")


@pytest.fixture(scope="module")
def fas(model, processor):
    register_pipeline()
    return pipeline(FAS_TASK, model=model, image_processor=processor)


def _images(n: int, seed: int, mode: str = "RGB") -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    shape = (40, 36, 3) if mode == "RGB" else (40, 36)
    return [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode) for _ in range(n)]


def _direct(model, processor, rgb, depth=None, ir=None) -> list[float]:
    """Live scores computed without the pipeline: processor, model, softmax."""
    inputs = processor(images=rgb, depth_images=depth, ir_images=ir)
    with torch.no_grad():
        logits = model(pixel_values=inputs["pixel_values"], depth_pixel_values=inputs["depth_pixel_values"],
                       ir_pixel_values=inputs["ir_pixel_values"], modality_mask=inputs["modality_mask"]).logits
    return logits.softmax(-1)[:, 1].tolist()


def test_registered_task_and_idempotent_registration(fas):
    register_pipeline()
    register_pipeline()
    assert PIPELINE_REGISTRY.supported_tasks[FAS_TASK]["impl"] is FaceAntiSpoofingPipeline
    from transformers import AutoModelForImageClassification

    # the three model types reach the pipeline through the auto class the package registers them with
    assert PIPELINE_REGISTRY.supported_tasks[FAS_TASK]["pt"] == (AutoModelForImageClassification,)
    assert isinstance(fas, FaceAntiSpoofingPipeline)


def test_single_sample_matches_processor_and_model(fas, model, processor, tmp_path):
    rgb, depth, ir = _images(1, 0)[0], _images(1, 1, "L")[0], _images(1, 2, "L")[0]
    expected = _direct(model, processor, [rgb], [depth], [ir])[0]
    out = fas(rgb, depth=depth, ir=ir)
    assert out["live_score"] == pytest.approx(expected, abs=1e-6)
    assert out["modalities"] == ["rgb", "depth", "ir"] and out["threshold"] == 0.5
    assert out["is_live"] == (expected >= 0.5) and out["label"] == ("live" if expected >= 0.5 else "spoof")
    # the same sample as paths, as arrays and as a dict
    paths = []
    for name, image in (("rgb", rgb), ("depth", depth), ("ir", ir)):
        paths.append(tmp_path / f"{name}.png")
        image.save(paths[-1])
    assert fas(str(paths[0]), depth=paths[1], ir=str(paths[2]))["live_score"] == pytest.approx(expected, abs=1e-6)
    arrays = {"rgb": np.asarray(rgb), "depth": np.asarray(depth), "ir": np.asarray(ir)}
    assert fas(arrays)["live_score"] == pytest.approx(expected, abs=1e-6)


def test_missing_modalities_are_reported_and_masked(fas, model, processor):
    rgb, ir = _images(1, 3)[0], _images(1, 4, "L")[0]
    out = fas(rgb, ir=ir)
    assert out["modalities"] == ["rgb", "ir"]
    assert out["live_score"] == pytest.approx(_direct(model, processor, [rgb], None, [ir])[0], abs=1e-6)
    # the model sees the mask: a missing depth scores differently from the same images with depth present
    with_depth = fas(rgb, depth=_images(1, 5, "L")[0], ir=ir)["live_score"]
    assert with_depth != pytest.approx(out["live_score"], abs=1e-6)
    assert fas({"depth": _images(1, 6, "L")[0]})["modalities"] == ["depth"]


def test_batched_equals_one_by_one(fas, model, processor):
    rgb = _images(5, 10)
    depth = [None, *_images(2, 11, "L"), None, _images(1, 12, "L")[0]]
    expected = _direct(model, processor, rgb, depth)  # one processor batch, one model call
    singles = [fas(r, depth=d) for r, d in zip(rgb, depth, strict=True)]
    for batch_size in (1, 2, 5):
        outs = fas(rgb, depth=depth, batch_size=batch_size)
        assert [o["live_score"] for o in outs] == pytest.approx(expected, abs=1e-6)
        assert [o["modalities"] for o in outs] == [s["modalities"] for s in singles]
        assert [o["modalities"] for o in outs][:2] == [["rgb"], ["rgb", "depth"]]
    as_dicts = fas([{"rgb": r, "depth": d} for r, d in zip(rgb, depth, strict=True)], batch_size=2)
    assert [o["live_score"] for o in as_dicts] == pytest.approx(expected, abs=1e-6)


def test_decision_uses_the_stored_threshold(processor):
    """A head with zero weights and bias (0, b) gives every input the live score sigmoid(b)."""
    model = BigMoeForFaceAntiSpoofing(BigMoeConfig(vision_config=VISION, **SMALL, decision_threshold=0.6)).eval()
    b = math.log(0.7 / 0.3)  # sigmoid(b) = 0.7
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, b]))
    fas = FaceAntiSpoofingPipeline(model=model, image_processor=processor)
    out = fas(_images(1, 20)[0])
    assert out["live_score"] == pytest.approx(0.7, abs=1e-6)
    assert (out["threshold"], out["is_live"], out["label"]) == (0.6, True, "live")
    model.config.decision_threshold = 0.75
    assert fas(_images(1, 20)[0])["label"] == "spoof"
    # a per-call threshold overrides the stored one; equality counts as live (score >= threshold)
    score = out["live_score"]
    assert fas(_images(1, 20)[0], threshold=score)["is_live"] is True
    assert fas(_images(1, 20)[0], threshold=math.nextafter(score, 1.0))["is_live"] is False


def test_bad_inputs_raise_value_errors(fas):
    rgb = _images(2, 30)
    with pytest.raises(ValueError, match="depth must be a list of 2"):
        fas(rgb, depth=_images(1, 31, "L"))
    with pytest.raises(ValueError, match="depth is a list but inputs is a single sample"):
        fas(rgb[0], depth=rgb)
    with pytest.raises(ValueError, match=r"inputs\['rgb'\] must be one image .* got shape \(2, 40, 36, 3\)"):
        fas(np.stack([np.asarray(i) for i in rgb]))
    with pytest.raises(ValueError, match="unknown keys \\['thermal'\\]"):
        fas({"rgb": rgb[0], "thermal": rgb[1]})
    with pytest.raises(ValueError, match="has no image"):
        fas({"rgb": None})
    with pytest.raises(ValueError, match="threshold must be a number in \\[0, 1\\], got 2"):
        fas(rgb[0], threshold=2)
    with pytest.raises(ValueError, match="must be a path, a PIL image or an array, got int"):
        fas(3)
    with pytest.raises(FileNotFoundError, match="image file not found"):
        fas("no-such-face.png")


def test_pipeline_from_the_hub_uses_pushed_processor_and_threshold(local_hub, model, processor, tmp_path):  # noqa: F811
    model.config.decision_threshold = 0.42
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    push_run(tmp_path, "fas-pipe")
    register_pipeline()
    fas = pipeline(FAS_TASK, model="user/fas-pipe")
    assert isinstance(fas.image_processor, BigMoeImageProcessor) and fas.image_processor.normalization == "fas127"
    rgb = _images(3, 40)
    outs = fas(rgb, batch_size=3)
    assert [o["live_score"] for o in outs] == pytest.approx(_direct(model, processor, rgb), abs=1e-6)
    assert {o["threshold"] for o in outs} == {0.42}

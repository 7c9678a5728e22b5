"""``face-anti-spoofing``: a transformers pipeline for multimodal (RGB + optional Depth / IR) models.

After ``register_pipeline()`` (the package calls it on import)::

    from transformers import pipeline
    fas = pipeline("face-anti-spoofing", model="user/bigmoe-fas")
    fas("rgb.png", depth="depth.png", ir="ir.png")
    # {'live_score': 0.93, 'label': 'live', 'is_live': True, 'threshold': 0.41, 'modalities': ['rgb', 'depth', 'ir']}

Inputs, per sample, are file paths, PIL images or arrays/tensors (anything
:class:`~modeling_bigmoe.image_processing_bigmoe.BigMoeImageProcessor` reads). A call takes one sample
(``fas(rgb, depth=..., ir=...)`` or ``fas({"rgb": ..., "depth": ..., "ir": ...})``) or a list of them
(``fas([rgb1, rgb2], depth=[d1, None])`` or a list of dicts) and then returns a list; ``batch_size=n``
runs the model on n samples at a time. A missing modality (``None``, or the key left out) is filled by the
processor and flagged in ``modality_mask``, which the model reads.

Output per sample: ``live_score`` = softmax(logits)[1]; ``is_live`` = ``live_score >= threshold`` (the rule
of :mod:`modeling_bigmoe.metrics`) with ``threshold`` the checkpoint's ``config.decision_threshold`` (fixed on
source validation at training time) unless the call passes ``threshold=``; ``label`` = ``config.id2label`` of
the decision; ``modalities`` = the modalities present, in the order rgb, depth, ir.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from transformers import AutoImageProcessor, AutoModelForImageClassification, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator

from .configuration_bigmoe import BigMoeConfig
from .configuration_lasoftmoe import LaSoftMoeConfig
from .configuration_mmda import MmdaConfig
from .image_processing_bigmoe import BigMoeImageProcessor

__all__ = ["FAS_TASK", "MODALITY_NAMES", "FaceAntiSpoofingPipeline", "register_pipeline"]

logger = logging.getLogger(__name__)

FAS_TASK = "face-anti-spoofing"
MODALITY_NAMES = ("rgb", "depth", "ir")
_TENSOR_KEYS = ("pixel_values", "depth_pixel_values", "ir_pixel_values", "modality_mask")
_IMAGE_TYPES = (str, os.PathLike, Image.Image, np.ndarray, torch.Tensor)


def _collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate per-sample (1, ...) tensors along the batch axis."""
    return {key: torch.cat([item[key] for item in items], dim=0) for key in items[0]}


class FaceAntiSpoofingPipeline(Pipeline):
    """Live/spoof decision for RGB + optional Depth / IR face images (see the module docstring).

    Built by ``transformers.pipeline("face-anti-spoofing", model=...)`` or directly with
    ``FaceAntiSpoofingPipeline(model=model, image_processor=processor)``. Without an image processor the one
    saved with the checkpoint (``preprocessor_config.json``) is used, else a default
    :class:`BigMoeImageProcessor` at the model's image size (CLIP normalisation), with a warning.
    """

    _load_processor = False
    _load_image_processor = None
    _load_feature_extractor = False
    _load_tokenizer = False
    _load_video_processor = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.image_processor is None:
            image_size = self.model.config.vision_config.image_size
            logger.warning("face-anti-spoofing: no image processor with the checkpoint; using BigMoeImageProcessor"
                           "(size=%d) with CLIP normalisation", image_size)
            self.image_processor = BigMoeImageProcessor(size=image_size)
        for name in ("num_labels",):
            if getattr(self.model.config, name, 2) != 2:
                raise ValueError(f"face-anti-spoofing: the model must have 2 labels (spoof, live), "
                                 f"config.{name} = {getattr(self.model.config, name)}")

    # ------------------------------------------------------------------ call
    def __call__(self, inputs=None, depth=None, ir=None, **kwargs):
        """Score one sample or a list of samples; see the module docstring for the input forms.

        Keyword arguments: ``depth`` / ``ir`` (an image, or a list aligned with a list ``inputs``),
        ``threshold`` (overrides ``config.decision_threshold``), ``batch_size``.
        """
        return super().__call__(self._pack_inputs(inputs, depth, ir), **kwargs)

    @staticmethod
    def _sample(value, where: str) -> dict[str, Any]:
        if isinstance(value, Mapping):
            unknown = set(value) - set(MODALITY_NAMES)
            if unknown:
                raise ValueError(f"face-anti-spoofing: {where} has unknown keys {sorted(unknown)}; "
                                 f"expected some of {list(MODALITY_NAMES)}")
            sample = {name: value.get(name) for name in MODALITY_NAMES}
        else:
            sample = {"rgb": value, "depth": None, "ir": None}
        for name, image in sample.items():
            if image is not None and not isinstance(image, _IMAGE_TYPES):
                raise ValueError(f"face-anti-spoofing: {where}[{name!r}] must be a path, a PIL image or an array, "
                                 f"got {type(image).__name__}")
            if isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim not in (2, 3):
                raise ValueError(f"face-anti-spoofing: {where}[{name!r}] must be one image ((H, W), (H, W, C) or "
                                 f"(C, H, W)), got shape {tuple(image.shape)}; pass a batch as a list")
        if all(image is None for image in sample.values()):
            raise ValueError(f"face-anti-spoofing: {where} has no image (rgb, depth and ir are all missing)")
        return sample

    def _pack_inputs(self, inputs, depth, ir):
        if isinstance(inputs, (list, tuple)):
            n = len(inputs)
            if n == 0:
                raise ValueError("face-anti-spoofing: inputs is an empty list")
            extra = {}
            for name, value in (("depth", depth), ("ir", ir)):
                if value is None:
                    continue
                if not isinstance(value, (list, tuple)) or len(value) != n:
                    raise ValueError(f"face-anti-spoofing: with a list of {n} inputs, {name} must be a list of {n} "
                                     f"(None entries allowed), got {type(value).__name__}"
                                     + (f" of length {len(value)}" if isinstance(value, (list, tuple)) else ""))
                extra[name] = value
            samples = []
            for i, item in enumerate(inputs):
                sample = self._sample(item, f"inputs[{i}]")
                for name, values in extra.items():
                    if isinstance(item, Mapping) and item.get(name) is not None:
                        raise ValueError(f"face-anti-spoofing: inputs[{i}] has {name!r} and the {name}= list too")
                    sample[name] = values[i]
                samples.append(self._sample(sample, f"inputs[{i}]"))
            return samples
        for name, value in (("depth", depth), ("ir", ir)):
            if isinstance(value, (list, tuple)):
                raise ValueError(  # noqa: TRY004 (bad input is a ValueError throughout the package)
                    f"face-anti-spoofing: {name} is a list but inputs is a single sample; pass a list "
                    "of inputs for a batch")
        if isinstance(inputs, Mapping):
            if depth is not None or ir is not None:
                raise ValueError("face-anti-spoofing: pass depth/ir inside the input dict or as keywords, not both")
            return self._sample(inputs, "inputs")
        return self._sample({"rgb": inputs, "depth": depth, "ir": ir}, "inputs")

    # ------------------------------------------------------------------ pipeline steps
    def _sanitize_parameters(self, threshold=None, **kwargs):
        if kwargs:
            raise ValueError(f"face-anti-spoofing: unexpected keyword arguments {sorted(kwargs)}")
        postprocess = {}
        if threshold is not None:
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
                raise ValueError(f"face-anti-spoofing: threshold must be a number in [0, 1], got {threshold!r}")
            postprocess["threshold"] = float(threshold)
        return {}, {}, postprocess

    def preprocess(self, sample: dict[str, Any]) -> dict[str, torch.Tensor]:
        """One sample dict -> processor tensors with batch 1 (missing modalities filled and masked)."""
        if not isinstance(sample, Mapping):  # a Dataset or generator of raw images
            sample = self._sample(sample, "input")

        def one(image):
            return None if image is None else [os.fspath(image) if isinstance(image, os.PathLike) else image]

        out = self.image_processor(images=one(sample.get("rgb")), depth_images=one(sample.get("depth")),
                                   ir_images=one(sample.get("ir")), return_tensors="pt")
        return {key: out[key] for key in _TENSOR_KEYS}

    def _forward(self, model_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        dtype = self.model.dtype
        images = {k: model_inputs[k].to(dtype) for k in _TENSOR_KEYS[:3]}
        outputs = self.model(**images, modality_mask=model_inputs["modality_mask"])
        return {"logits": outputs.logits, "modality_mask": model_inputs["modality_mask"]}

    def postprocess(self, model_outputs: dict[str, torch.Tensor], threshold: float | None = None) -> dict[str, Any]:
        """Live score, decision at the threshold, and the modalities used, for one sample."""
        logits = model_outputs["logits"].float()
        score = float(logits.softmax(dim=-1)[0, 1])
        threshold = float(self.model.config.decision_threshold if threshold is None else threshold)
        is_live = score >= threshold
        id2label = getattr(self.model.config, "id2label", None) or {0: "spoof", 1: "live"}
        mask = model_outputs["modality_mask"][0].bool().tolist()
        return {
            "live_score": score,
            "label": id2label[1 if is_live else 0],
            "is_live": bool(is_live),
            "threshold": threshold,
            "modalities": [name for name, present in zip(MODALITY_NAMES, mask, strict=True) if present],
        }

    def get_iterator(self, inputs, num_workers: int, batch_size: int, preprocess_params, forward_params,
                     postprocess_params):
        """As ``Pipeline.get_iterator``, with a collate function that stacks all modality tensors."""
        if isinstance(inputs, Sequence):
            dataset = PipelineDataset(inputs, self.preprocess, preprocess_params)
        else:
            num_workers = min(num_workers, 1)
            dataset = PipelineIterator(inputs, self.preprocess, preprocess_params)
        loader = DataLoader(dataset, num_workers=num_workers, batch_size=batch_size, collate_fn=_collate)
        model_iterator = PipelineIterator(loader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(model_iterator, self.postprocess, postprocess_params)


def register_pipeline() -> None:
    """Register the ``"face-anti-spoofing"`` task (models through ``AutoModelForImageClassification``, where the
    package registers BIG-MoE, MMDA and La-SoftMoE) and ``AutoImageProcessor`` for the three configs; idempotent."""
    if PIPELINE_REGISTRY.supported_tasks.get(FAS_TASK, {}).get("impl") is not FaceAntiSpoofingPipeline:
        PIPELINE_REGISTRY.register_pipeline(FAS_TASK, pipeline_class=FaceAntiSpoofingPipeline,
                                            pt_model=AutoModelForImageClassification, type="multimodal")
    for config_class in (BigMoeConfig, MmdaConfig, LaSoftMoeConfig):
        AutoImageProcessor.register(config_class, image_processor_classes={"pil": BigMoeImageProcessor,
                                                                           "torchvision": BigMoeImageProcessor},
                                    exist_ok=True)

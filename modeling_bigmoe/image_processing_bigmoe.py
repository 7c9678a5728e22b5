"""Image processor for multimodal (RGB + Depth + IR) face anti-spoofing models.

`BigMoeImageProcessor` turns aligned RGB / Depth / IR face images into the model's keyword inputs
``pixel_values``, ``depth_pixel_values``, ``ir_pixel_values`` (each ``(b, 3, H, W)`` float) and
``modality_mask`` (``(b, 3)`` bool, order rgb, depth, ir; ``True`` = present).

Pipeline (per image, the same for every modality; this order is part of the contract that
:class:`~modeling_bigmoe.augmentation.FasAugmentation` relies on):

1. decode (PIL image, numpy array, torch tensor or file path) to a float tensor on the 0..255 scale;
2. optional face crop (RGB drives the detector; the same relative box is cut from depth and IR);
3. resize to ``size`` (bilinear with antialiasing by default, matching PIL's filter);
4. rescale to 0..1 and repeat a single channel to three;
5. *(training only, outside the processor: augmentation on the 0..1 tensors)*;
6. normalise: ``"clip"`` = CLIP mean/std, ``"fas127"`` = ``(x - 127.5) / 128`` on the 0..255 scale,
   ``"custom"`` = ``image_mean`` / ``image_std``, ``"none"`` = keep 0..1;
7. missing modalities (``None``) are filled with ``fill_value`` *after* normalisation and flagged in
   ``modality_mask``.

Calling the processor with ``do_normalize=False`` stops after step 4 (missing images are zeros);
:meth:`BigMoeImageProcessor.normalize_modalities` then performs steps 6 and 7, so a collator can put
augmentation in between.

This module imports only the standard library, numpy, torch, Pillow and transformers; the optional
face detector uses scikit-image (``pip install modeling_bigmoe[facecrop]``), imported on first use.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.processing_utils import ImagesKwargs

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# (x - 127.5) / 128 on the 0..255 scale == (x/255 - 0.5) / (128/255) on the 0..1 scale.
FAS127_MEAN = (0.5, 0.5, 0.5)
FAS127_STD = (128.0 / 255.0,) * 3

NORMALIZATIONS = ("clip", "fas127", "custom", "none")
MODALITY_ARGS = ("images", "depth_images", "ir_images")
MODALITY_KEYS = ("pixel_values", "depth_pixel_values", "ir_pixel_values")

# PIL resampling codes -> torch interpolate modes.
_RESAMPLE_TO_TORCH = {0: "nearest-exact", 2: "bilinear", 3: "bicubic"}


class BigMoeImageProcessorKwargs(ImagesKwargs, total=False):
    """Extra keyword arguments accepted by :class:`BigMoeImageProcessor` (beyond `ImagesKwargs`)."""

    normalization: str | None
    fill_value: float | None
    do_face_crop: bool | None
    face_crop_margin: float | None


@functools.lru_cache(maxsize=1)
def _lbp_face_cascade():
    """Load scikit-image's LBP frontal-face cascade (ships inside the scikit-image wheel; offline)."""
    try:
        from skimage.data import lbp_frontal_face_cascade_filename
        from skimage.feature import Cascade
    except ImportError as err:  # pragma: no cover - depends on the optional extra
        raise ImportError(
            "do_face_crop=True needs scikit-image: pip install 'modeling_bigmoe[facecrop]'"
        ) from err
    return Cascade(lbp_frontal_face_cascade_filename())


def detect_face_box(image: np.ndarray | Image.Image | torch.Tensor) -> tuple[int, int, int, int] | None:
    """Return the largest frontal face in an RGB or grey image as ``(top, left, height, width)``, or None.

    Uses scikit-image's LBP cascade (no network, no downloaded weights). ``image`` may be a PIL image,
    an ``(H, W[, 3])`` numpy array or a ``(3|1, H, W)`` tensor, on the 0..255 or 0..1 scale.
    """
    if isinstance(image, Image.Image):
        arr = np.asarray(image.convert("L"), dtype=np.float64) / 255.0
    else:
        arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        arr = arr.astype(np.float64)
        if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
            arr = np.moveaxis(arr, 0, -1)
        if arr.ndim == 3:
            arr = arr.mean(axis=-1)
        if arr.max(initial=0.0) > 1.0:
            arr = arr / 255.0
    h, w = arr.shape
    side = min(h, w)
    min_side = max(24, side // 10)
    detections = _lbp_face_cascade().detect_multi_scale(
        img=arr, scale_factor=1.2, step_ratio=1, min_size=(min_side, min_side), max_size=(side, side)
    )
    if not detections:
        return None
    best = max(detections, key=lambda d: d["width"] * d["height"])
    return int(best["r"]), int(best["c"]), int(best["height"]), int(best["width"])


def _expand_box(box, margin: float, h: int, w: int) -> tuple[float, float, float, float]:
    """Grow a (top, left, height, width) box by ``margin`` of its size per side, square it, clip it.

    Returns relative coordinates (top, left, bottom, right) in 0..1.
    """
    top, left, bh, bw = box
    cy, cx = top + bh / 2.0, left + bw / 2.0
    half = max(bh, bw) * (0.5 + margin)
    t, b = max(0.0, cy - half), min(float(h), cy + half)
    l_, r = max(0.0, cx - half), min(float(w), cx + half)
    return t / h, l_ / w, b / h, r / w


class BigMoeImageProcessor(BaseImageProcessor):
    r"""Image processor for RGB + Depth + IR face anti-spoofing models (BIG-MoE, MMDA, La-SoftMoE).

    Saved as ``preprocessor_config.json``; ``BigMoeImageProcessor.from_pretrained(dir)`` and, once the
    package registers it, ``AutoImageProcessor.from_pretrained(dir)`` reload it.

    Args:
        do_resize (`bool`, defaults to `True`): resize every image to ``size``.
        size (`int | dict`, defaults to ``{"height": 224, "width": 224}``): output size.
        resample (`int`, defaults to `2` = bilinear): PIL resampling code; 0 nearest, 2 bilinear,
            3 bicubic (antialiased when shrinking, as PIL does).
        do_normalize (`bool`, defaults to `True`): apply the normalisation (False keeps 0..1).
        normalization (`str`, defaults to ``"clip"``): ``"clip"`` (CLIP mean/std), ``"fas127"``
            (``(x - 127.5) / 128``, the MMDA/BIG-MoE harness), ``"custom"`` (``image_mean``/``image_std``)
            or ``"none"``.
        image_mean / image_std (`list[float]`, optional): per-channel statistics on the 0..1 scale;
            required for ``"custom"``, otherwise derived from ``normalization``.
        fill_value (`float`, defaults to `0.0`): value of a missing modality after normalisation (the
            reference BIG-MoE fills the normalised tensor with 0).
        do_face_crop (`bool`, defaults to `False`): detect the face on RGB with scikit-image's LBP cascade
            and crop that box (grown by ``face_crop_margin`` and squared) from every modality; when no
            face is found the full image is kept. For raw photos only: MMDG crops are already aligned.
        face_crop_margin (`float`, defaults to `0.2`): margin per side, as a fraction of the box size.

    Inputs per modality: a PIL image (mode RGB, L or I;16), a numpy array or torch tensor (``(H, W)``,
    ``(H, W, C)``, ``(C, H, W)`` or a batch ``(B, ...)``, C in {1, 3}; uint8 on 0..255, uint16 on
    0..65535, floats on 0..1), a file path, or a list of these in which ``None`` marks a missing image.

    Example:

    ```python
    >>> from PIL import Image
    >>> from modeling_bigmoe.image_processing_bigmoe import BigMoeImageProcessor
    >>> processor = BigMoeImageProcessor(size=32)
    >>> out = processor(images=Image.new("RGB", (40, 40)), depth_images=Image.new("L", (40, 40)))
    >>> out["pixel_values"].shape, out["modality_mask"].tolist()
    (torch.Size([1, 3, 32, 32]), [[True, True, False]])
    ```
    """

    model_input_names = ["pixel_values", "depth_pixel_values", "ir_pixel_values", "modality_mask"]
    valid_kwargs = BigMoeImageProcessorKwargs

    def __init__(
        self,
        do_resize: bool = True,
        size: int | dict[str, int] | Sequence[int] | None = None,
        resample: int = 2,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        normalization: str = "clip",
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        fill_value: float = 0.0,
        do_face_crop: bool = False,
        face_crop_margin: float = 0.2,
        **kwargs,
    ):
        kwargs.pop("image_processor_type", None)
        super().__init__(**kwargs)
        self.do_resize = bool(do_resize)
        self.size = self._size_dict(224 if size is None else size)
        resample = int(getattr(resample, "value", resample))
        if resample not in _RESAMPLE_TO_TORCH:
            raise ValueError(
                f"resample must be one of {sorted(_RESAMPLE_TO_TORCH)} (PIL codes), got {resample}"
            )
        self.resample = resample
        # Kept for compatibility with transformers' attribute names: inputs are always rescaled to 0..1
        # by their dtype's range, so only the default factor is meaningful.
        self.do_rescale = bool(do_rescale)
        self.rescale_factor = float(rescale_factor)
        self.do_normalize = bool(do_normalize)
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        self.normalization = normalization
        mean, std = self._resolve_stats(normalization, image_mean, image_std)
        self.image_mean = list(mean)
        self.image_std = list(std)
        self.fill_value = float(fill_value)
        self.do_face_crop = bool(do_face_crop)
        if not 0.0 <= float(face_crop_margin) <= 2.0:
            raise ValueError(f"face_crop_margin must be in [0, 2], got {face_crop_margin}")
        self.face_crop_margin = float(face_crop_margin)

    # ------------------------------------------------------------------ configuration helpers
    @staticmethod
    def _size_dict(size) -> dict[str, int]:
        if isinstance(size, dict):
            if set(size) != {"height", "width"}:
                raise ValueError(f"size dict must have keys 'height' and 'width', got {sorted(size)}")
            h, w = int(size["height"]), int(size["width"])
        elif isinstance(size, int):
            h = w = size
        elif isinstance(size, Sequence) and len(size) == 2:
            h, w = int(size[0]), int(size[1])
        else:
            raise ValueError(f"size must be an int, (height, width) or a dict, got {size!r}")
        if h < 1 or w < 1:
            raise ValueError(f"size must be positive, got height={h}, width={w}")
        return {"height": h, "width": w}

    @staticmethod
    def _resolve_stats(normalization, image_mean, image_std):
        if normalization == "clip":
            return CLIP_MEAN, CLIP_STD
        if normalization == "fas127":
            return FAS127_MEAN, FAS127_STD
        if normalization == "none":
            return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        if image_mean is None or image_std is None:
            raise ValueError("normalization='custom' needs image_mean and image_std (3 floats each)")
        mean = [float(v) for v in (image_mean if isinstance(image_mean, Sequence) else [image_mean] * 3)]
        std = [float(v) for v in (image_std if isinstance(image_std, Sequence) else [image_std] * 3)]
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"image_mean/image_std must be 3 values with std > 0, got {mean} / {std}")
        return tuple(mean), tuple(std)

    def to_dict(self) -> dict[str, Any]:
        """Serialise the settings (what ``preprocessor_config.json`` holds)."""
        out = super().to_dict()
        for key in ("image_mean", "image_std"):
            out[key] = [float(v) for v in out[key]]
        return out

    # ------------------------------------------------------------------ input conversion
    def _to_tensor(self, image, arg: str, index: int, modality: str) -> torch.Tensor:
        """Convert one image to a float32 (C, H, W) tensor on the 0..255 scale, C in {1, 3}."""
        where = f"{arg}[{index}]"
        if isinstance(image, (str, os.PathLike)):
            path = os.fspath(image)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{where}: image file not found: {path}")
            try:
                with Image.open(path) as im:
                    im.load()
                    return self._to_tensor(im, arg, index, modality)
            except (OSError, SyntaxError) as err:
                raise ValueError(f"{where}: cannot decode image file {path}: {err}") from err
        if isinstance(image, Image.Image):
            mode = image.mode
            if mode in ("RGBA", "CMYK", "LA", "RGBX"):
                raise ValueError(
                    f"{where}: {modality} image has {len(image.getbands())} channels (mode {mode!r}); "
                    f"expected 1 (L) or 3 (RGB): convert it first, e.g. image.convert('RGB')"
                )
            if mode not in ("RGB", "L", "I;16", "I;16L", "I;16B"):
                raise ValueError(
                    f"{where}: unsupported PIL mode {mode!r} for {modality}; expected 'RGB', 'L' or 'I;16'"
                )
            arr = np.asarray(image)
            if mode.startswith("I;16"):
                arr = arr.astype(np.uint16)
            # (H, W[, 3]) integer pixels -> contiguous (C, H, W) float on 0..255: transpose while still small
            chw = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
            tensor = torch.from_numpy(chw.astype(np.float32, order="C"))  # one copy, contiguous
            return tensor * (255.0 / 65535.0) if mode.startswith("I;16") else tensor
        if isinstance(image, np.ndarray):
            is_torch = False
            data = image
        elif isinstance(image, torch.Tensor):
            is_torch = True
            data = image.detach().cpu()
        else:
            raise ValueError(
                f"{where}: expected a PIL image, numpy array, torch tensor or file path, "
                f"got {type(image).__name__}"
            )
        if data.ndim == 2:
            data = data[None] if is_torch else data[..., None]
        if data.ndim != 3:
            raise ValueError(
                f"{where}: expected a 2-D or 3-D {modality} image, got shape {tuple(data.shape)}"
            )
        # Channel axis: torch tensors are read channels-first when ambiguous, numpy arrays channels-last.
        first, last = data.shape[0], data.shape[-1]
        if is_torch:
            channels_first = first in (1, 3) or (last not in (1, 3) and first == 4)
        else:
            channels_first = not (last in (1, 3) or (first not in (1, 3) and last == 4))
        c = first if channels_first else last
        if c not in (1, 3):
            raise ValueError(
                f"{where}: {modality} image has {c} channels (shape {tuple(data.shape)}); expected 1 or 3"
            )
        if is_torch:
            dtype_name = str(data.dtype).replace("torch.", "")
            arr = data.numpy() if data.dtype != torch.bfloat16 else data.float().numpy()
        else:
            dtype_name = str(data.dtype)
            arr = data
        if arr.dtype == np.uint8:
            scale = 1.0
        elif arr.dtype == np.uint16:
            scale = 255.0 / 65535.0
        elif np.issubdtype(arr.dtype, np.floating):
            scale = 255.0
        elif arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer):
            raise ValueError(
                f"{where}: unsupported dtype {dtype_name} for {modality}; use uint8 (0..255), "
                f"uint16 (0..65535) or float (0..1)"
            )
        else:
            raise ValueError(f"{where}: unsupported dtype {dtype_name} for {modality}")
        if not channels_first:
            arr = np.moveaxis(arr, -1, 0)
        arr = arr.astype(np.float32, order="C")  # a contiguous copy: the caller's array is untouched
        if not np.isfinite(arr).all():
            raise ValueError(f"{where}: {modality} image contains NaN or infinite values")
        if scale == 255.0 and arr.size and (arr.min() < -1e-6 or arr.max() > 1.0 + 1e-6):
            raise ValueError(
                f"{where}: float {modality} image must lie in [0, 1], got range "
                f"[{arr.min():.4g}, {arr.max():.4g}]; pass uint8 for 0..255 data"
            )
        return torch.from_numpy(arr) * scale

    @staticmethod
    def _as_list(images, arg: str) -> list | None:
        """Turn a single image, a list or a 4-D batch into a list (None stays None)."""
        if images is None:
            return None
        if isinstance(images, (Image.Image, str, os.PathLike)):
            return [images]
        if isinstance(images, (np.ndarray, torch.Tensor)):
            if images.ndim == 4:
                return list(images)
            if images.ndim in (2, 3):
                return [images]
            raise ValueError(
                f"{arg}: expected a 2-D, 3-D or 4-D (batched) array, got shape {tuple(images.shape)}"
            )
        if isinstance(images, (list, tuple)):
            return list(images)
        raise ValueError(
            f"{arg}: expected an image, a path, a 4-D array or a list of these, got {type(images).__name__}"
        )

    # ------------------------------------------------------------------ processing
    def _resize(self, tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if tuple(tensor.shape[-2:]) == (height, width):
            return tensor
        mode = _RESAMPLE_TO_TORCH[self.resample]
        kwargs = {} if mode == "nearest-exact" else {"align_corners": False, "antialias": True}
        out = F.interpolate(tensor[None], size=(height, width), mode=mode, **kwargs)[0]
        return out.clamp_(0.0, 255.0) if mode == "bicubic" else out

    def __call__(self, images=None, depth_images=None, ir_images=None, **kwargs) -> BatchFeature:
        """Process a batch of RGB / Depth / IR images; see :meth:`preprocess`."""
        return self.preprocess(images, depth_images=depth_images, ir_images=ir_images, **kwargs)

    def preprocess(
        self,
        images=None,
        depth_images=None,
        ir_images=None,
        *,
        modality_mask: torch.Tensor | np.ndarray | Sequence | None = None,
        return_tensors: str | None = "pt",
        do_resize: bool | None = None,
        size: int | dict[str, int] | None = None,
        do_normalize: bool | None = None,
        do_face_crop: bool | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Turn RGB / Depth / IR images into model inputs.

        Args:
            images, depth_images, ir_images: one image or a batch per modality (see the class docstring);
                ``None`` for a whole modality, or a ``None`` entry in a list, marks it missing.
            modality_mask: optional ``(b, 3)`` 0/1 mask (rgb, depth, ir) that additionally drops
                modalities (a present image whose mask entry is 0 is treated as missing).
            return_tensors: ``"pt"`` (default) or ``"np"``.
            do_resize, size, do_normalize, do_face_crop: per-call overrides of the settings.

        Returns:
            `BatchFeature` with ``pixel_values``, ``depth_pixel_values``, ``ir_pixel_values`` (float32,
            ``(b, 3, H, W)``) and ``modality_mask`` (bool, ``(b, 3)``).
        """
        unknown = set(kwargs) - {"data_format", "input_data_format", "device"}
        if unknown:
            raise ValueError(f"unexpected keyword arguments: {sorted(unknown)}")
        if return_tensors not in ("pt", "np", None):
            raise ValueError(f"return_tensors must be 'pt' or 'np', got {return_tensors!r}")
        do_resize = self.do_resize if do_resize is None else do_resize
        size = self.size if size is None else self._size_dict(size)
        do_normalize = self.do_normalize if do_normalize is None else do_normalize
        do_face_crop = self.do_face_crop if do_face_crop is None else do_face_crop

        lists = {
            arg: self._as_list(v, arg)
            for arg, v in zip(MODALITY_ARGS, (images, depth_images, ir_images), strict=True)
        }
        given = {arg: len(v) for arg, v in lists.items() if v is not None}
        if not given:
            raise ValueError("at least one of images, depth_images, ir_images must be given")
        if len(set(given.values())) > 1:
            raise ValueError(f"batch sizes differ between modalities: {given}")
        batch = next(iter(given.values()))
        if batch == 0:
            raise ValueError(f"empty batch: {given}")

        mask = torch.ones(batch, 3, dtype=torch.bool)
        if modality_mask is not None:
            m = torch.as_tensor(
                np.asarray(modality_mask) if not isinstance(modality_mask, torch.Tensor) else modality_mask
            )
            if tuple(m.shape) != (batch, 3):
                raise ValueError(f"modality_mask must have shape ({batch}, 3), got {tuple(m.shape)}")
            mask &= m.bool().cpu()
        for j, arg in enumerate(MODALITY_ARGS):
            items = lists[arg]
            for i in range(batch):
                if items is None or items[i] is None:
                    mask[i, j] = False

        modalities = ("rgb", "depth", "ir")
        raw: list[list[torch.Tensor | None]] = []
        for j, arg in enumerate(MODALITY_ARGS):
            items = lists[arg]
            raw.append(
                [
                    self._to_tensor(items[i], arg, i, modalities[j]) if mask[i, j] else None
                    for i in range(batch)
                ]
            )

        if do_face_crop:
            self._face_crop(raw)

        if not do_resize:
            shapes = {tuple(t.shape[-2:]) for col in raw for t in col if t is not None}
            if len(shapes) > 1:
                raise ValueError(f"do_resize=False needs images of one size, got sizes {sorted(shapes)}")
            height, width = shapes.pop() if shapes else (size["height"], size["width"])
        else:
            height, width = size["height"], size["width"]

        outputs = {}
        for j, key in enumerate(MODALITY_KEYS):
            stack = torch.zeros(batch, 3, height, width, dtype=torch.float32)
            for i, t in enumerate(raw[j]):
                if t is None:
                    continue
                t = self._resize(t, height, width) if do_resize else t
                stack[i] = t / 255.0  # broadcasting repeats a single channel to three
            outputs[key] = stack
        outputs["modality_mask"] = mask
        if do_normalize:
            outputs = dict(self.normalize_modalities(outputs, return_tensors="pt"))
        return BatchFeature(data=outputs, tensor_type=return_tensors or "pt")

    def normalize_modalities(self, inputs: dict[str, Any], return_tensors: str | None = "pt") -> BatchFeature:
        """Normalise 0..1 ``(b, 3, H, W)`` modality tensors and fill missing ones with ``fill_value``.

        ``inputs`` holds any of ``pixel_values``, ``depth_pixel_values``, ``ir_pixel_values`` and
        ``modality_mask`` (missing mask = all present). Returns new tensors (inputs are not modified);
        other keys pass through.
        """
        mask = inputs.get("modality_mask")
        mean = torch.tensor(self.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std, dtype=torch.float32).view(1, 3, 1, 1)
        out = dict(inputs)
        for j, key in enumerate(MODALITY_KEYS):
            x = inputs.get(key)
            if x is None:
                continue
            x = torch.as_tensor(x)
            if x.ndim != 4 or x.shape[1] != 3:
                raise ValueError(f"{key} must have shape (b, 3, H, W), got {tuple(x.shape)}")
            if self.normalization == "none":
                y = x.to(torch.float32).clone()
            else:
                y = (x.to(torch.float32) - mean.to(x.device)) / std.to(x.device)
            if mask is not None:
                missing = ~torch.as_tensor(mask)[:, j].to(device=y.device, dtype=torch.bool)
                y[missing] = self.fill_value  # y is a new tensor: the caller's input is untouched
            out[key] = y
        return BatchFeature(data=out, tensor_type=return_tensors or "pt")

    def _face_crop(self, raw: list[list[torch.Tensor | None]]) -> None:
        """Crop every sample's images to the face box found on its RGB image (in place on the list)."""
        for i, rgb in enumerate(raw[0]):
            if rgb is None:
                continue
            box = detect_face_box(rgb.permute(1, 2, 0).numpy() / 255.0)
            if box is None:
                continue
            h, w = rgb.shape[-2:]
            t, l_, b, r = _expand_box(box, self.face_crop_margin, h, w)
            for j in range(3):
                img = raw[j][i]
                if img is None:
                    continue
                ih, iw = img.shape[-2:]
                y0, y1 = math.floor(t * ih), math.ceil(b * ih)
                x0, x1 = math.floor(l_ * iw), math.ceil(r * iw)
                raw[j][i] = img[:, y0 : max(y1, y0 + 1), x0 : max(x1, x0 + 1)].contiguous()


__all__ = ["BigMoeImageProcessor", "detect_face_box", "CLIP_MEAN", "CLIP_STD"]

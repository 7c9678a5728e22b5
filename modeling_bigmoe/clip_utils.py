"""Helpers that find the parts of a ``transformers`` CLIP vision tower without hard-coding module paths.

``CLIPVisionModel`` was flattened in transformers 5.6: 5.0-5.5 keep the transformer under
``model.vision_model`` (``vision_model.encoder.layers``), 5.6+ hold it directly
(``encoder.layers``). Everything in this package reaches CLIP through these functions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = [
    "get_clip_vision_transformer",
    "get_clip_encoder_layers",
    "get_clip_embeddings",
    "get_clip_layernorms",
    "clip_layer_parts",
    "grid_size",
    "num_patches",
    "clip_attention_implementation",
    "run_clip_attention",
]


def get_clip_vision_transformer(vision_tower: nn.Module) -> nn.Module:
    """The module that owns ``embeddings``, ``encoder`` and the layernorms (5.0-5.5 and 5.6+ layouts)."""
    for candidate in (vision_tower, getattr(vision_tower, "vision_model", None)):
        if candidate is not None and hasattr(candidate, "encoder") and hasattr(candidate, "embeddings"):
            return candidate
    raise ValueError(
        f"get_clip_vision_transformer: {type(vision_tower).__name__} has neither `encoder`+`embeddings` nor "
        "`vision_model.encoder`; not a CLIP vision tower")


def get_clip_encoder_layers(vision_tower: nn.Module) -> nn.ModuleList:
    """The ``nn.ModuleList`` of encoder layers of a CLIP vision tower, in either layout."""
    layers = getattr(get_clip_vision_transformer(vision_tower).encoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"get_clip_encoder_layers: {type(vision_tower).__name__}.encoder has no `layers` ModuleList")
    return layers


def get_clip_embeddings(vision_tower: nn.Module) -> nn.Module:
    """CLIP's ``CLIPVisionEmbeddings`` (patch conv, class embedding, position table)."""
    return get_clip_vision_transformer(vision_tower).embeddings


def get_clip_layernorms(vision_tower: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``(pre_layernorm, post_layernorm)`` of a CLIP vision tower (CLIP spells the first ``pre_layrnorm``)."""
    root = get_clip_vision_transformer(vision_tower)
    pre = getattr(root, "pre_layrnorm", None) or getattr(root, "pre_layernorm", None)
    post = getattr(root, "post_layernorm", None)
    if pre is None or post is None:
        raise ValueError(f"get_clip_layernorms: {type(root).__name__} lacks pre/post layernorm")
    return pre, post


def clip_layer_parts(layer: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
    """``(layer_norm1, self_attn, layer_norm2, mlp)`` of one ``CLIPEncoderLayer``."""
    parts = tuple(getattr(layer, name, None) for name in ("layer_norm1", "self_attn", "layer_norm2", "mlp"))
    if any(part is None for part in parts):
        raise ValueError(f"clip_layer_parts: {type(layer).__name__} is not a CLIPEncoderLayer")
    return parts


def grid_size(image_size: int, patch_size: int) -> int:
    """Patch grid side ``image_size // patch_size`` (``image_size`` must be a multiple of ``patch_size``)."""
    if image_size <= 0 or patch_size <= 0 or image_size % patch_size:
        raise ValueError(f"grid_size: image_size ({image_size}) must be a positive multiple of patch_size "
                         f"({patch_size})")
    return image_size // patch_size


def num_patches(image_size: int, patch_size: int) -> int:
    """Patch tokens per modality, ``grid_size ** 2``."""
    return grid_size(image_size, patch_size) ** 2


@contextlib.contextmanager
def clip_attention_implementation(vision_tower: nn.Module, implementation: str) -> Iterator[None]:
    """Temporarily switch the tower's attention backend (e.g. to ``"eager"`` to get attention maps)."""
    config = vision_tower.config
    previous = config._attn_implementation
    if previous == implementation:
        yield
        return
    vision_tower.set_attn_implementation(implementation)
    try:
        yield
    finally:
        vision_tower.set_attn_implementation(previous)


def run_clip_attention(self_attn: nn.Module, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Call a ``CLIPAttention`` without a mask; returns ``(output, weights or None)``."""
    out = self_attn(hidden_states=hidden_states, attention_mask=None)
    return (out[0], out[1]) if isinstance(out, tuple) else (out, None)

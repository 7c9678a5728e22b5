"""See what the model sees: routing, prompt and attention maps of BIG-MoE, and expert usage over a dataset.

Everything here runs the model once (``torch.no_grad``, eval mode) and reads what it already exposes:
``output_routing=True`` gives each adapted block's PEER routing (:class:`~modeling_bigmoe.adapters.BigMoeRouting`),
``output_attentions=True`` the attention matrices; the prompt tokens that reach each block's isolated gate are
read by a forward pre-hook on the block adapters (the model's forward does not return them; the hook only
reads and is removed after the call).

Per adapted block, maps on the patch grid (``grid x grid``, 14 x 14 for ViT-B/16 at 224 px), row-major like
the token stream:

* ``top_score``: the gate's confidence at each location, the largest routing weight over heads and kept
  experts (weights are a softmax over the ``experts_per_head`` kept experts of each head, so the value lies in
  ``[1/experts_per_head, 1]``), averaged over the heads;
* ``top_cluster``: the product-key cluster of the location's top expert. Expert ``e = K*i + j`` is the pair of
  sub-keys (i, j), ``K = sqrt(num_experts)``; its cluster is the first sub-key ``i = e // K`` (the K experts
  sharing it), so 1600 experts form 40 clusters, one colour each;
* ``prompt_magnitude``: the L2 norm of the prompt-bypass token the gate reads at each location;
* ``cls_attention`` (when asked): CLS's attention to each modality's patches, averaged over heads, one map per
  modality in the public order rgb, depth, ir.

:class:`ExpertUsage` counts, over a dataset, how often every expert of every block is chosen: how many ever
fire and the entropy of the choice distribution per block.

The other two model types, where the concept exists: La-SoftMoE CLIP, per Soft MoE block and modality, the
expert each patch draws on most (combine weights summed over the expert's slots), that expert's share, and
how much the slots read the patch (dispatch weights summed over slots), from a pre-hook on each Soft MoE
layer; MMDA, the live probability of each alignment level (``alignment_logits``). Expert-usage counts are
BIG-MoE only.

Plot functions write PNGs (matplotlib, Agg canvas, no global pyplot state) atomically; ``bigmoe-fas explain``
(:func:`add_explain_parser`) writes them for one capture.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .adapters import BigMoeBlockAdapter, BigMoeRouting
from .clip_utils import get_clip_encoder_layers
from .modeling_bigmoe import INTERNAL_MODALITIES, PUBLIC_MODALITIES

__all__ = [
    "EXPLAINED_MODEL_TYPES",
    "BlockMaps",
    "CaptureExplanation",
    "ExpertUsage",
    "SlotMaps",
    "add_explain_parser",
    "atomic_write",
    "cls_attention_maps",
    "expert_cluster",
    "explain_capture",
    "explain_inputs",
    "prompt_magnitude",
    "render_expert_usage",
    "render_inputs",
    "render_routing",
    "routing_top_cluster",
    "routing_top_score",
    "run_explain",
    "save_figure",
    "soft_moe_maps",
]

MODALITY_TITLES = {"rgb": "RGB", "depth": "Depth", "ir": "IR"}


# ----------------------------------------------------------------------------------------------
# map computations (pure functions on tensors)
# ----------------------------------------------------------------------------------------------


def _check_routing(routing: BigMoeRouting, grid: int, where: str) -> None:
    if not isinstance(routing, BigMoeRouting):
        raise ValueError(  # noqa: TRY004 (bad input is a ValueError throughout the package)
            f"{where}: routing must be a BigMoeRouting, got {type(routing).__name__}")
    if routing.indices.shape != routing.weights.shape or routing.indices.dim() != 4:
        raise ValueError(f"{where}: routing indices/weights must both be (b, N, heads, k), got "
                         f"{tuple(routing.indices.shape)} / {tuple(routing.weights.shape)}")
    if routing.indices.shape[1] != grid * grid:
        raise ValueError(f"{where}: routing covers {routing.indices.shape[1]} locations, grid {grid} needs "
                         f"{grid * grid}")


def routing_top_score(routing: BigMoeRouting, grid: int) -> np.ndarray:
    """(b, grid, grid): per location, the largest routing weight of each head, averaged over heads."""
    _check_routing(routing, grid, "routing_top_score")
    top = routing.weights.detach().float().amax(dim=-1).mean(dim=-1)  # (b, N)
    return top.reshape(-1, grid, grid).cpu().numpy()


def expert_cluster(indices: torch.Tensor | np.ndarray, num_experts: int) -> np.ndarray:
    """Product-key cluster of expert ids: ``e // sqrt(num_experts)`` (the first sub-key)."""
    num_keys = math.isqrt(int(num_experts))
    if num_experts <= 0 or num_keys * num_keys != num_experts:
        raise ValueError(f"expert_cluster: num_experts must be a perfect square, got {num_experts}")
    ids = np.asarray(indices.detach().cpu() if isinstance(indices, torch.Tensor) else indices)
    if ids.size and (ids.min() < 0 or ids.max() >= num_experts):
        raise ValueError(f"expert_cluster: expert ids must lie in [0, {num_experts}), got range "
                         f"[{ids.min()}, {ids.max()}]")
    return ids // num_keys


def routing_top_cluster(routing: BigMoeRouting, grid: int, num_experts: int) -> np.ndarray:
    """(b, grid, grid) int: the cluster of each location's top expert (largest weight over heads and k;
    ties go to the first head / first kept expert)."""
    _check_routing(routing, grid, "routing_top_cluster")
    b, n, h, k = routing.weights.shape
    flat_w = routing.weights.detach().reshape(b, n, h * k)
    flat_i = routing.indices.detach().reshape(b, n, h * k)
    top = flat_i.gather(-1, flat_w.argmax(dim=-1, keepdim=True)).squeeze(-1)  # (b, N)
    return expert_cluster(top, num_experts).reshape(b, grid, grid)


def prompt_magnitude(prompt_tokens: torch.Tensor, grid: int) -> np.ndarray:
    """(b, N, c) prompt tokens -> (b, grid, grid) L2 norms, row-major."""
    if prompt_tokens.dim() != 3 or prompt_tokens.shape[1] != grid * grid:
        raise ValueError(f"prompt_magnitude: prompt_tokens must be (b, {grid * grid}, c), got "
                         f"{tuple(prompt_tokens.shape)}")
    return prompt_tokens.detach().float().norm(dim=-1).reshape(-1, grid, grid).cpu().numpy()


def cls_attention_maps(attention: torch.Tensor, grid: int, num_modalities: int = 3) -> np.ndarray:
    """(b, heads, 1+m*N, 1+m*N) attention -> (b, m, grid, grid) CLS-to-patch weights averaged over heads,
    modalities in the public order rgb, depth, ir (the stream holds them as rgb, ir, depth)."""
    n = grid * grid
    if attention.dim() != 4 or attention.shape[-1] != 1 + num_modalities * n or attention.shape[-2] < 1:
        raise ValueError(f"cls_attention_maps: attention must be (b, heads, {1 + num_modalities * n}, "
                         f"{1 + num_modalities * n}), got {tuple(attention.shape)}")
    cls = attention.detach().float()[:, :, 0, 1:].mean(dim=1)  # (b, m*N)
    maps = cls.reshape(-1, num_modalities, grid, grid)
    if num_modalities == len(INTERNAL_MODALITIES):
        maps = maps[:, [INTERNAL_MODALITIES.index(name) for name in PUBLIC_MODALITIES]]
    return maps.cpu().numpy()


def soft_moe_maps(dispatch: torch.Tensor, combine: torch.Tensor, num_experts: int, grid: int,
                  num_modalities: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Soft MoE weights of a ``[CLS; patches]`` stream -> per-patch maps ``(top_expert, top_share, read_mass)``,
    each (b, m, grid, grid), modalities in stream order.

    ``dispatch`` / ``combine`` are (b, 1 + m*N, s) with slot ``j`` owned by expert ``j // (s / num_experts)``.
    ``top_expert``: the expert whose slots the token's output draws on most (combine summed per expert);
    ``top_share``: that expert's share of the token's combine weights (in [1/num_experts, 1]);
    ``read_mass``: the dispatch weight the slots put on the token, summed over slots (mean 1 would be uniform
    over ``s`` slots and ``s`` tokens; CLS is left out of the maps).
    """
    n = 1 + num_modalities * grid * grid
    if dispatch.shape != combine.shape or dispatch.dim() != 3 or dispatch.shape[1] != n:
        raise ValueError(f"soft_moe_maps: dispatch and combine must both be (b, {n}, s), got "
                         f"{tuple(dispatch.shape)} / {tuple(combine.shape)}")
    b, _, s = combine.shape
    if num_experts <= 0 or s % num_experts:
        raise ValueError(f"soft_moe_maps: {s} slots do not split over {num_experts} experts")
    per_expert = combine.detach().float()[:, 1:].reshape(b, n - 1, num_experts, s // num_experts).sum(-1)
    share, top = per_expert.max(dim=-1)
    mass = dispatch.detach().float()[:, 1:].sum(-1)
    shape = (b, num_modalities, grid, grid)
    return top.reshape(shape).cpu().numpy(), share.reshape(shape).cpu().numpy(), mass.reshape(shape).cpu().numpy()


# ----------------------------------------------------------------------------------------------
# one capture
# ----------------------------------------------------------------------------------------------


@dataclass
class BlockMaps:
    """The maps of one adapted block for a batch (see the module docstring); arrays are (b, grid, grid)
    except ``cls_attention`` (b, 3, grid, grid), ``None`` unless attentions were asked for."""

    layer_idx: int
    top_score: np.ndarray
    top_cluster: np.ndarray
    prompt_magnitude: np.ndarray
    cls_attention: np.ndarray | None = None


@dataclass
class SlotMaps:
    """The Soft MoE maps of one La-SoftMoE block (see :func:`soft_moe_maps`); arrays are (b, m, grid, grid)
    with the modalities of the model's stream (``CaptureExplanation.stream_modalities``)."""

    layer_idx: int
    top_expert: np.ndarray
    top_share: np.ndarray
    read_mass: np.ndarray


@dataclass
class CaptureExplanation:
    """What :func:`explain_inputs` returns for a batch.

    Attributes:
        live_scores: (b,) softmax(logits)[:, 1].
        threshold: the checkpoint's ``config.decision_threshold``.
        modalities: per sample, the modalities present (public order rgb, depth, ir).
        blocks: one :class:`BlockMaps` per adapted block, in layer order.
        grid: patches per side; num_experts, num_clusters: experts per block and product-key clusters.
        images: per modality, (b, H, W, 3) float in [0, 1] as the model sees them (before normalisation),
            ``None`` for a modality missing in every sample; empty when unknown.
        routing: the raw routing, one per block (BIG-MoE).
        model_type: ``"bigmoe"``, ``"la_softmoe"`` or ``"mmda"``.
        slot_blocks: La-SoftMoE only, one :class:`SlotMaps` per Soft MoE block; ``stream_modalities`` names
            their modality axis (``("rgb",)`` for ``input_mode="rgb"``).
        alignment_live: MMDA only, (b, L) live probability of each alignment level (softmax of the RS2 logits
            ``[v0, v1..vD, v'_{D-1}..v'_0]``).
    """

    live_scores: np.ndarray
    threshold: float
    modalities: list[list[str]]
    blocks: list[BlockMaps]
    grid: int
    num_experts: int
    images: dict[str, np.ndarray | None] = field(default_factory=dict)
    routing: tuple[BigMoeRouting, ...] = ()
    model_type: str = "bigmoe"
    slot_blocks: list[SlotMaps] = field(default_factory=list)
    stream_modalities: tuple[str, ...] = PUBLIC_MODALITIES
    alignment_live: np.ndarray | None = None

    @property
    def num_clusters(self) -> int:
        """Product-key clusters (sub-keys per half)."""
        return math.isqrt(self.num_experts)

    def is_live(self, sample: int = 0) -> bool:
        """The decision for ``sample``: ``live_score >= threshold``."""
        return bool(self.live_scores[sample] >= self.threshold)

    def summary(self, sample: int = 0) -> dict[str, Any]:
        """JSON-ready numbers for ``sample``: score, decision, modalities and per-block map statistics."""
        blocks = []
        for block in self.blocks:
            entry = {"layer": block.layer_idx,
                     "mean_top_score": float(block.top_score[sample].mean()),
                     "distinct_clusters": int(np.unique(block.top_cluster[sample]).size),
                     "mean_prompt_magnitude": float(block.prompt_magnitude[sample].mean())}
            if block.cls_attention is not None:
                entry["cls_attention_share"] = {name: float(block.cls_attention[sample, j].sum())
                                                for j, name in enumerate(PUBLIC_MODALITIES)}
            blocks.append(entry)
        out = {"model_type": self.model_type, "live_score": float(self.live_scores[sample]),
               "threshold": self.threshold, "decision": "live" if self.is_live(sample) else "spoof",
               "modalities": self.modalities[sample], "grid": self.grid, "num_experts": self.num_experts,
               "blocks": blocks}
        if self.slot_blocks:
            out["slot_blocks"] = [
                {"layer": block.layer_idx,
                 "expert_patch_counts": np.bincount(block.top_expert[sample].reshape(-1),
                                                    minlength=self.num_experts).tolist(),
                 "mean_top_share": float(block.top_share[sample].mean())} for block in self.slot_blocks]
        if self.alignment_live is not None:
            out["alignment_live"] = [float(v) for v in self.alignment_live[sample]]
        return out


def _bigmoe_parts(model) -> tuple[Any, Any]:
    """(backbone, config) of a BIG-MoE model; a clear error for other model types."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type != "bigmoe":
        raise ValueError(f"visualization: model_type {model_type!r} is not supported here; PEER routing, "
                         "prompt and expert-usage statistics exist for BIG-MoE ('bigmoe') models only")
    backbone = getattr(model, "bigmoe", model)
    return backbone, config


EXPLAINED_MODEL_TYPES = ("bigmoe", "la_softmoe", "mmda")


@torch.no_grad()
def explain_inputs(model, *, pixel_values=None, depth_pixel_values=None, ir_pixel_values=None,
                   modality_mask=None, attentions: bool = False,
                   display_images: Mapping[str, np.ndarray | None] | None = None) -> CaptureExplanation:
    """Run a face anti-spoofing model once (eval, no grad) on model inputs (as the image processor returns
    them) and compute what it exposes: BIG-MoE, the maps of every adapted block (``attentions=True`` adds
    CLS-attention maps; eager attention, slower); La-SoftMoE CLIP, the Soft MoE slot maps of every block;
    MMDA, the live probability of every alignment level."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in EXPLAINED_MODEL_TYPES:
        raise ValueError(f"explain_inputs: model_type {model_type!r} is not supported; expected one of "
                         f"{list(EXPLAINED_MODEL_TYPES)}")
    inputs = {"pixel_values": pixel_values, "depth_pixel_values": depth_pixel_values,
              "ir_pixel_values": ir_pixel_values}
    if model_type == "la_softmoe":
        return _explain_lasoftmoe(model, inputs, modality_mask, display_images)
    if model_type == "mmda":
        return _explain_mmda(model, inputs, modality_mask, display_images)
    return _explain_bigmoe(model, inputs, modality_mask, attentions, display_images)


def _present_modalities(inputs: dict, modality_mask, used: Sequence[str] = PUBLIC_MODALITIES) -> list[list[str]]:
    """Per sample, the public modalities given (tensor present and, with a mask, marked present)."""
    tensor = next(t for t in inputs.values() if t is not None)
    b = tensor.shape[0]
    keys = dict(zip(PUBLIC_MODALITIES, ("pixel_values", "depth_pixel_values", "ir_pixel_values"), strict=True))
    mask = None if modality_mask is None else torch.as_tensor(modality_mask).bool().cpu()
    return [[name for j, name in enumerate(PUBLIC_MODALITIES)
             if name in used and inputs[keys[name]] is not None and (mask is None or bool(mask[i, j]))]
            for i in range(b)]


def _run(model, inputs: dict, modality_mask, **kwargs):
    was_training = model.training
    model.eval()
    dtype = model.dtype
    cast = {name: (None if t is None else t.to(dtype)) for name, t in inputs.items()}
    try:
        return model(**cast, modality_mask=modality_mask, return_dict=True, **kwargs)
    finally:
        model.train(was_training)


def _explain_lasoftmoe(model, inputs, modality_mask, display_images) -> CaptureExplanation:
    from .layers_softmoe import LaSoftMoeLayer

    config = model.config
    layers = {}
    for name, module in model.named_modules():
        if isinstance(module, LaSoftMoeLayer):
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            layers[int(getattr(parent, "layer_idx", len(layers)))] = module
    if not layers:
        raise ValueError("explain_inputs: the La-SoftMoE model holds no Soft MoE layer")
    captured: dict[int, torch.Tensor] = {}

    def make_hook(layer_idx: int):
        def hook(module, args):
            captured[layer_idx] = args[0].detach()
        return hook

    handles = [module.register_forward_pre_hook(make_hook(i)) for i, module in layers.items()]
    try:
        out = _run(model, inputs, modality_mask)
    finally:
        for handle in handles:
            handle.remove()
    stream = PUBLIC_MODALITIES if config.input_mode == "multimodal" else ("rgb",)
    slot_blocks = []
    num_experts = config.moe_num_experts
    grid = 0
    for i in sorted(layers):
        module = layers[i]
        x = captured[i]
        grid = math.isqrt((x.shape[1] - 1) // len(stream))
        _, dispatch, combine = module.forward(x, return_weights=True)  # .forward: the hooks are gone anyway
        top, share, mass = soft_moe_maps(dispatch, combine, num_experts, grid, len(stream))
        slot_blocks.append(SlotMaps(layer_idx=i, top_expert=top, top_share=share, read_mass=mass))
    scores = out.logits.float().softmax(dim=-1)[:, 1].cpu().numpy()
    return CaptureExplanation(live_scores=scores, threshold=float(getattr(config, "decision_threshold", 0.5)),
                              modalities=_present_modalities(inputs, modality_mask, stream), blocks=[], grid=grid,
                              num_experts=num_experts, images=dict(display_images or {}), model_type="la_softmoe",
                              slot_blocks=slot_blocks, stream_modalities=stream)


def _explain_mmda(model, inputs, modality_mask, display_images) -> CaptureExplanation:
    config = model.config
    out = _run(model, inputs, modality_mask)
    scores = out.logits.float().softmax(dim=-1)[:, 1].cpu().numpy()
    levels = out.alignment_logits.float().softmax(dim=-1)[..., 1].cpu().numpy()
    return CaptureExplanation(live_scores=scores, threshold=float(getattr(config, "decision_threshold", 0.5)),
                              modalities=_present_modalities(inputs, modality_mask), blocks=[], grid=0, num_experts=0,
                              images=dict(display_images or {}), model_type="mmda", alignment_live=levels)


def _explain_bigmoe(model, inputs, modality_mask, attentions, display_images) -> CaptureExplanation:
    backbone, config = _bigmoe_parts(model)
    if not hasattr(model, "classifier"):
        raise ValueError("explain_inputs: needs a BigMoeForFaceAntiSpoofing (with its classifier head), got "
                         f"{type(model).__name__}")
    grid = config.grid_size
    captured: dict[int, torch.Tensor] = {}
    handles = []

    def make_hook(layer_idx: int):
        def hook(module, args, kwargs):
            prompt = args[1] if len(args) > 1 else kwargs.get("prompt_tokens")
            if prompt is not None:
                captured[layer_idx] = prompt.detach()
        return hook

    for layer in get_clip_encoder_layers(backbone.vision_tower):
        if isinstance(layer, BigMoeBlockAdapter):
            handles.append(layer.register_forward_pre_hook(make_hook(layer.layer_idx), with_kwargs=True))
    try:
        out = _run(model, inputs, modality_mask, output_routing=True, output_attentions=attentions)
    finally:
        for handle in handles:
            handle.remove()
    blocks = []
    for routing in out.routing:
        i = routing.layer_idx
        if i not in captured:
            raise ValueError(f"explain_inputs: no prompt tokens were seen for block {i}")
        blocks.append(BlockMaps(
            layer_idx=i,
            top_score=routing_top_score(routing, grid),
            top_cluster=routing_top_cluster(routing, grid, config.moe_num_experts),
            prompt_magnitude=prompt_magnitude(captured[i], grid),
            cls_attention=cls_attention_maps(out.attentions[i], grid) if attentions else None))
    code = out.modality_code.cpu()
    internal_present = [[not bool((int(c) >> j) & 1) for j in range(3)] for c in code.tolist()]
    modalities = [[name for name in PUBLIC_MODALITIES if present[INTERNAL_MODALITIES.index(name)]]
                  for present in internal_present]
    scores = out.logits.float().softmax(dim=-1)[:, 1].cpu().numpy()
    return CaptureExplanation(live_scores=scores, threshold=float(getattr(config, "decision_threshold", 0.5)),
                              modalities=modalities, blocks=blocks, grid=grid, num_experts=config.moe_num_experts,
                              images=dict(display_images or {}), routing=tuple(out.routing))


def explain_capture(model, processor, rgb, depth=None, ir=None, *, attentions: bool = False) -> CaptureExplanation:
    """:func:`explain_inputs` for one capture given as images (paths, PIL images or arrays; Depth / IR optional,
    RGB required), pre-processed by ``processor`` (a :class:`BigMoeImageProcessor`)."""
    if rgb is None:
        raise ValueError("explain_capture: rgb is required (Depth / IR are read only next to an RGB image)")

    def one(image):
        return None if image is None else [os.fspath(image) if isinstance(image, os.PathLike) else image]

    enc = processor(images=one(rgb), depth_images=one(depth), ir_images=one(ir), return_tensors="pt")
    raw = processor(images=one(rgb), depth_images=one(depth), ir_images=one(ir), return_tensors="pt",
                    do_normalize=False)
    display = {}
    for name, key, image in (("rgb", "pixel_values", rgb), ("depth", "depth_pixel_values", depth),
                             ("ir", "ir_pixel_values", ir)):
        display[name] = None if image is None else raw[key].permute(0, 2, 3, 1).clamp(0, 1).numpy()
    return explain_inputs(model, pixel_values=enc["pixel_values"], depth_pixel_values=enc["depth_pixel_values"],
                          ir_pixel_values=enc["ir_pixel_values"], modality_mask=enc["modality_mask"],
                          attentions=attentions, display_images=display)


# ----------------------------------------------------------------------------------------------
# expert usage over a dataset
# ----------------------------------------------------------------------------------------------


class ExpertUsage:
    """Counts of expert choices per adapted block: every (token, head, kept expert) choice counts once.

    ``update(routing)`` with a model output's ``routing`` tuple; then ``fired`` (experts chosen at least once,
    per block), ``entropy_bits`` (Shannon entropy of the choice distribution, bits; at most
    ``log2(num_experts)``) and ``normalized_entropy`` (entropy / log2(num_experts), in [0, 1]).
    """

    def __init__(self, num_experts: int, layers: Sequence[int]):
        if num_experts <= 0:
            raise ValueError(f"ExpertUsage: num_experts must be positive, got {num_experts}")
        if len(layers) == 0 or len(set(layers)) != len(layers):
            raise ValueError(f"ExpertUsage: layers must be distinct and non-empty, got {list(layers)}")
        self.num_experts = int(num_experts)
        self.layers = [int(i) for i in layers]
        self.counts = np.zeros((len(self.layers), self.num_experts), dtype=np.int64)
        self.samples = 0

    @classmethod
    def for_model(cls, model) -> ExpertUsage:
        """An empty counter sized for a BIG-MoE model's adapted blocks."""
        backbone, config = _bigmoe_parts(model)
        layers = [layer.layer_idx for layer in get_clip_encoder_layers(backbone.vision_tower)
                  if isinstance(layer, BigMoeBlockAdapter)]
        return cls(config.moe_num_experts, layers)

    def update(self, routing: Sequence[BigMoeRouting]) -> None:
        """Add one batch's routing (one :class:`BigMoeRouting` per block, in the counter's layer order)."""
        seen = [r.layer_idx for r in routing]
        if seen != self.layers:
            raise ValueError(f"ExpertUsage.update: routing covers layers {seen}, the counter {self.layers}")
        for row, r in enumerate(routing):
            ids = r.indices.detach().reshape(-1).cpu().long()
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_experts):
                raise ValueError(f"ExpertUsage.update: layer {r.layer_idx} expert ids outside "
                                 f"[0, {self.num_experts}): [{int(ids.min())}, {int(ids.max())}]")
            self.counts[row] += np.bincount(ids.numpy(), minlength=self.num_experts)
        self.samples += int(routing[0].indices.shape[0]) if routing else 0

    @property
    def fired(self) -> np.ndarray:
        """(blocks,) experts chosen at least once."""
        return (self.counts > 0).sum(axis=1)

    @property
    def entropy_bits(self) -> np.ndarray:
        """(blocks,) entropy of each block's choice distribution in bits (0 for a block with no choices)."""
        out = np.zeros(len(self.layers))
        for row, counts in enumerate(self.counts):
            total = counts.sum()
            if total:
                p = counts[counts > 0] / total
                out[row] = float(-(p * np.log2(p)).sum())
        return out

    @property
    def normalized_entropy(self) -> np.ndarray:
        """(blocks,) entropy / log2(num_experts) (0 with a single expert)."""
        return self.entropy_bits / math.log2(self.num_experts) if self.num_experts > 1 else np.zeros(len(self.layers))

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers per block."""
        return {"num_experts": self.num_experts, "samples": self.samples,
                "blocks": [{"layer": layer, "fired": int(f), "entropy_bits": float(e),
                            "normalized_entropy": float(ne)}
                           for layer, f, e, ne in zip(self.layers, self.fired, self.entropy_bits,
                                                      self.normalized_entropy, strict=True)]}

    @torch.no_grad()
    def add_batches(self, model, batches: Iterable[Mapping[str, torch.Tensor]]) -> ExpertUsage:
        """Run ``model`` (eval, no grad) on processor batches (``pixel_values``, ``depth_pixel_values``,
        ``ir_pixel_values``, ``modality_mask``) and count their routing; returns ``self``."""
        was_training = model.training
        model.eval()
        try:
            for batch in batches:
                out = model(**{k: (None if batch.get(k) is None else batch[k].to(model.dtype))
                               for k in ("pixel_values", "depth_pixel_values", "ir_pixel_values")},
                            modality_mask=batch.get("modality_mask"), output_routing=True, return_dict=True)
                self.update(out.routing)
        finally:
            model.train(was_training)
        return self


# ----------------------------------------------------------------------------------------------
# figures
# ----------------------------------------------------------------------------------------------


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _to_array(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def atomic_write(path: str | os.PathLike, writer) -> Path:
    """Create ``path``'s folder, call ``writer(tmp)`` on a temporary name beside ``path`` (ordinary permissions),
    then ``os.replace`` it into place; the temporary file is removed on failure. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        writer(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def save_figure(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an (H, W, 3) uint8 array as a PNG, atomically (:func:`atomic_write`)."""
    from PIL import Image

    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise ValueError(f"save_figure: image must be (H, W, 3) uint8, got {array.shape} {array.dtype}")
    return atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def _check_sample(explanation: CaptureExplanation, sample: int) -> None:
    n = len(explanation.live_scores)
    if not 0 <= sample < n:
        raise ValueError(f"sample must be in [0, {n}), got {sample}")


def render_inputs(explanation: CaptureExplanation, sample: int = 0) -> np.ndarray:
    """The three input modalities side by side (as the model sees them, before normalisation), titled with
    the score and decision; a missing modality is a grey panel marked "missing". Returns (H, W, 3) uint8."""
    _check_sample(explanation, sample)
    fig = _figure(7.5, 3.0)
    axes = fig.subplots(1, 3)
    present = explanation.modalities[sample]
    for ax, name in zip(axes, PUBLIC_MODALITIES, strict=True):
        images = explanation.images.get(name)
        if images is not None and name in present:
            ax.imshow(images[sample], interpolation="nearest")
            ax.set_title(MODALITY_TITLES[name])
        else:
            ax.imshow(np.full((8, 8, 3), 0.8))
            ax.set_title(f"{MODALITY_TITLES[name]} (missing)")
        ax.set_xticks([])
        ax.set_yticks([])
    decision = "live" if explanation.is_live(sample) else "spoof"
    fig.suptitle(f"live score {explanation.live_scores[sample]:.3f}  ->  {decision} "
                 f"(threshold {explanation.threshold:.3f})")
    fig.tight_layout()
    return _to_array(fig)


def _cluster_cmap(num_clusters: int):
    from matplotlib.colors import ListedColormap, hsv_to_rgb

    # K evenly spaced hues with alternating brightness so that neighbouring clusters stay distinguishable
    hsv = np.stack([np.arange(num_clusters) / num_clusters, np.full(num_clusters, 0.75),
                    np.where(np.arange(num_clusters) % 2, 0.65, 0.95)], axis=1)
    return ListedColormap(hsv_to_rgb(hsv))


def render_routing(explanation: CaptureExplanation, sample: int = 0) -> np.ndarray:
    """BIG-MoE: one row per adapted block: gate top score, top-expert cluster, prompt magnitude and (when
    computed) the CLS attention to each modality. La-SoftMoE: one row per Soft MoE block, per modality the top
    expert, its combine share and the slots' read mass. MMDA: a bar chart of the alignment levels' live
    probabilities. Returns (H, W, 3) uint8."""
    _check_sample(explanation, sample)
    if explanation.model_type == "la_softmoe":
        return _render_slots(explanation, sample)
    if explanation.model_type == "mmda":
        return _render_alignment(explanation, sample)
    blocks = explanation.blocks
    if not blocks:
        raise ValueError("render_routing: the explanation holds no adapted block")
    with_attention = blocks[0].cls_attention is not None
    cols = 3 + (3 if with_attention else 0)
    fig = _figure(2.3 * cols, 2.1 * len(blocks) + 0.5)
    axes = np.asarray(fig.subplots(len(blocks), cols, squeeze=False))
    k = explanation.num_clusters
    cmap = _cluster_cmap(k)
    # the top weight of a head lies in [1/experts_per_head, 1]
    low = 1.0 / explanation.routing[0].weights.shape[-1] if explanation.routing else 0.0
    for row, block in enumerate(blocks):
        panels = [("gate top score", block.top_score[sample], {"cmap": "viridis", "vmin": low, "vmax": 1.0}),
                  (f"expert cluster (of {k})", block.top_cluster[sample],
                   {"cmap": cmap, "vmin": -0.5, "vmax": k - 0.5}),
                  ("prompt |p|", block.prompt_magnitude[sample], {"cmap": "magma"})]
        if with_attention:
            attn = block.cls_attention[sample]
            top = float(attn.max()) or 1.0
            panels += [(f"CLS attn {MODALITY_TITLES[name]}", attn[j], {"cmap": "inferno", "vmin": 0.0, "vmax": top})
                       for j, name in enumerate(PUBLIC_MODALITIES)]
        for col, (title, data, kwargs) in enumerate(panels):
            ax = axes[row, col]
            im = ax.imshow(data, interpolation="nearest", **kwargs)
            ax.set_title(f"block {block.layer_idx}: {title}" if col == 0 else title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if col != 1:
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(f"routing and prompts ({explanation.grid}x{explanation.grid} grid, "
                 f"{explanation.num_experts} experts per block)", fontsize=10)
    fig.tight_layout()
    return _to_array(fig)


def _render_slots(explanation: CaptureExplanation, sample: int) -> np.ndarray:
    blocks = explanation.slot_blocks
    if not blocks:
        raise ValueError("render_routing: the explanation holds no Soft MoE block")
    stream = explanation.stream_modalities
    e = explanation.num_experts
    cols = 3 * len(stream)
    fig = _figure(2.3 * cols, 2.1 * len(blocks) + 0.5)
    axes = np.asarray(fig.subplots(len(blocks), cols, squeeze=False))
    cmap = _cluster_cmap(e)
    for row, block in enumerate(blocks):
        panels = []
        for j, name in enumerate(stream):
            title = MODALITY_TITLES[name]
            panels += [(f"{title}: top expert (of {e})", block.top_expert[sample, j],
                        {"cmap": cmap, "vmin": -0.5, "vmax": e - 0.5}, False),
                       (f"{title}: its combine share", block.top_share[sample, j],
                        {"cmap": "viridis", "vmin": 1.0 / e, "vmax": 1.0}, True),
                       (f"{title}: slot read mass", block.read_mass[sample, j], {"cmap": "magma"}, True)]
        for col, (title, data, kwargs, bar) in enumerate(panels):
            ax = axes[row, col]
            im = ax.imshow(data, interpolation="nearest", **kwargs)
            ax.set_title(f"block {block.layer_idx}: {title}" if col == 0 else title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if bar:
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(f"Soft MoE slots ({explanation.grid}x{explanation.grid} grid, {e} experts per block)", fontsize=10)
    fig.tight_layout()
    return _to_array(fig)


def _render_alignment(explanation: CaptureExplanation, sample: int) -> np.ndarray:
    levels = explanation.alignment_live
    if levels is None:
        raise ValueError("render_routing: the explanation holds no alignment levels")
    values = levels[sample]
    depth = (len(values) - 1) // 2
    labels = ["v0"] + [f"v{i}" for i in range(1, depth + 1)] + [f"v'{i}" for i in range(depth - 1, -1, -1)]
    fig = _figure(max(5.0, 0.5 * len(values) + 2), 3.2)
    ax = fig.subplots(1, 1)
    x = np.arange(len(values))
    colors = ["tab:green" if v >= explanation.threshold else "tab:red" for v in values]
    ax.bar(x, values, color=colors)
    ax.axhline(explanation.threshold, color="grey", ls="--", lw=0.8, label=f"threshold {explanation.threshold:.3f}")
    ax.axhline(explanation.live_scores[sample], color="black", lw=0.8,
               label=f"classifier {explanation.live_scores[sample]:.3f}")
    ax.set_xticks(x, labels[:len(values)] if len(labels) == len(values) else [str(i) for i in x], fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("live probability")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title("MMDA alignment levels (U-DSA): live probability per level", fontsize=9)
    fig.tight_layout()
    return _to_array(fig)


def render_expert_usage(usage: ExpertUsage) -> np.ndarray:
    """Bar charts per block: experts that ever fired (of ``num_experts``) and the normalised entropy of the
    choices. Returns (H, W, 3) uint8."""
    fig = _figure(8.0, 3.2)
    ax_fired, ax_entropy = fig.subplots(1, 2)
    labels = [str(i) for i in usage.layers]
    x = np.arange(len(labels))
    bars = ax_fired.bar(x, usage.fired, color="tab:blue")
    ax_fired.bar_label(bars, fontsize=7)
    ax_fired.set_ylim(0, usage.num_experts * 1.1)
    ax_fired.axhline(usage.num_experts, color="grey", lw=0.8, ls="--")
    ax_fired.set_title(f"experts that fired (of {usage.num_experts})", fontsize=9)
    bars = ax_entropy.bar(x, usage.normalized_entropy, color="tab:orange")
    ax_entropy.bar_label(bars, fmt="%.2f", fontsize=7)
    ax_entropy.set_ylim(0, 1.1)
    ax_entropy.set_title("choice entropy / log2(experts)", fontsize=9)
    for ax in (ax_fired, ax_entropy):
        ax.set_xticks(x, labels)
        ax.set_xlabel("block")
    fig.suptitle(f"expert usage over {usage.samples} captures", fontsize=10)
    fig.tight_layout()
    return _to_array(fig)


# ----------------------------------------------------------------------------------------------
# CLI: bigmoe-fas explain
# ----------------------------------------------------------------------------------------------


def _usage_batches(processor, captures: list[dict], batch_size: int):
    for start in range(0, len(captures), batch_size):
        chunk = captures[start:start + batch_size]
        yield processor([c["rgb"] for c in chunk], depth_images=[c.get("depth") for c in chunk],
                        ir_images=[c.get("ir") for c in chunk], return_tensors="pt")


def _synthetic_batches(processor, n: int, domain: str, seed: int, batch_size: int):
    from .synthetic import generate_domain

    data = generate_domain(domain, n, size=64, seed=seed)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        yield processor(list(data["rgb"][start:stop]), depth_images=list(data["depth"][start:stop]),
                        ir_images=list(data["ir"][start:stop]), return_tensors="pt")


def _resolve_capture(inputs: str, depth: str | None, ir: str | None, name: str | None) -> dict:
    from .cli import collect_captures

    path = Path(inputs)
    if path.is_dir():
        if depth or ir:
            raise ValueError("explain: --depth / --ir go with an RGB file, not with a folder of captures")
        captures = collect_captures(inputs)
        if name is None:
            return captures[0]
        for capture in captures:
            if capture["name"] == name:
                return capture
        raise ValueError(f"explain: no capture named {name!r} in {inputs!r} (found "
                         f"{[c['name'] for c in captures][:8]})")
    if not path.is_file():
        raise FileNotFoundError(f"explain: INPUTS {inputs!r} is neither an image file nor a folder")
    for flag, value in (("--depth", depth), ("--ir", ir)):
        if value is not None and not Path(value).is_file():
            raise FileNotFoundError(f"explain: {flag} file {value!r} not found")
    return {"name": path.stem, "rgb": inputs, "depth": depth, "ir": ir}


def run_explain(args: argparse.Namespace) -> int:
    """The ``explain`` subcommand: write ``inputs.png``, ``routing.png``, ``summary.json`` (and ``usage.png``
    with ``--usage`` / ``--usage-synthetic``) for one capture into ``--out``."""
    from .cli import collect_captures, load_fas_model

    if not Path(args.model).exists():
        raise FileNotFoundError(f"explain: MODEL folder {args.model!r} does not exist")
    capture = _resolve_capture(args.inputs, args.depth, args.ir, args.capture)
    model, processor = load_fas_model(args.model)
    model_type = model.config.model_type
    if (args.usage or args.usage_synthetic) and model_type != "bigmoe":
        shows = "the Soft MoE slots" if model_type == "la_softmoe" else "the alignment levels"
        raise ValueError(f"explain: --usage / --usage-synthetic count PEER expert usage, which only BIG-MoE models "
                         f"have; {args.model} is a {model_type!r} model (drop the flag: routing.png shows {shows})")
    explanation = explain_capture(model, processor, capture["rgb"], capture.get("depth"), capture.get("ir"),
                                  attentions=args.attention)
    out = Path(args.out)
    written = [save_figure(render_inputs(explanation), out / "inputs.png"),
               save_figure(render_routing(explanation), out / "routing.png")]
    summary = {"capture": capture, **explanation.summary()}
    if args.usage or args.usage_synthetic:
        usage = ExpertUsage.for_model(model)
        if args.usage:
            usage.add_batches(model, _usage_batches(processor, collect_captures(args.usage), args.batch_size))
        if args.usage_synthetic:
            usage.add_batches(model, _synthetic_batches(processor, args.usage_synthetic, args.synthetic_domain,
                                                        args.seed, args.batch_size))
        written.append(save_figure(render_expert_usage(usage), out / "usage.png"))
        summary["expert_usage"] = usage.summary()
    text = json.dumps(summary, indent=2) + "\n"
    written.append(atomic_write(out / "summary.json", lambda tmp: tmp.write_text(text, encoding="utf-8")))
    print(f"{capture['name']}: live score {summary['live_score']:.4f} -> {summary['decision']} "
          f"(threshold {summary['threshold']:.4f}; modalities {'+'.join(summary['modalities'])})")
    for path in written:
        print(f"wrote {path}")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_explain_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``explain MODEL INPUTS --out DIR`` to an argparse ``subparsers`` object; returns the sub-parser."""
    parser = subparsers.add_parser(
        "explain", help="PNGs of what the model sees for one capture (inputs, routing, prompts, attention)",
        description="Write inputs.png (the three modalities), routing.png (per block: gate top score, "
                    "top-expert cluster, prompt magnitude, optional CLS attention), summary.json and, with "
                    "--usage/--usage-synthetic, usage.png (experts fired and entropy per block).")
    parser.add_argument("model", help="saved model folder (BIG-MoE; MMDA and La-SoftMoE: routing.png shows their "
                                      "alignment levels / Soft MoE slots, no --usage)")
    parser.add_argument("inputs", help="an RGB image (with --depth / --ir), or a folder of captures "
                                       "(<name>_rgb|_depth|_ir.<ext> or rgb/ depth/ ir/ subfolders)")
    parser.add_argument("--out", required=True, help="output folder for the PNGs and summary.json")
    parser.add_argument("--depth", default=None, help="Depth image aligned with the RGB file")
    parser.add_argument("--ir", default=None, help="IR image aligned with the RGB file")
    parser.add_argument("--capture", default=None, help="capture name when INPUTS is a folder (default: first)")
    parser.add_argument("--attention", action="store_true", help="also draw CLS attention to each modality")
    parser.add_argument("--usage", default=None, help="folder of captures for the expert-usage chart")
    parser.add_argument("--usage-synthetic", type=_positive_int, default=None, metavar="N",
                        help="count expert usage over N generated synthetic captures")
    parser.add_argument("--synthetic-domain", default="C", choices=("C", "P", "S", "W"))
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic captures")
    parser.add_argument("--batch-size", type=_positive_int, default=16)
    parser.set_defaults(func=run_explain)
    return parser

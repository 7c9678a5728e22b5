"""MMDA blocks: MD2A fusion, U-DSA (U-shaped Dual Space Adaptation), RS2 alignment, classifier, loss.

MMDA: "Multimodal Denoising and Alignment" (Ma, Lin, Yu, Liu, Yuan, Xie, Shen; arXiv 2505.09484),
later retitled "Purify then Guide". On top of CLIP's image embeddings of RGB, Depth and IR
(X: 3 x 512 per sample) and CLIP's text embeddings of spoof and live templates:

1. Fusion block (MD2A, the Differential Transformer attention of Ye et al. with a domain-side
   map, plus an ST-MoE-style MoE after Zoph et al.)::

       x1 = X + MD2A(LN(X), LN(X_dom));  x2 = MoE(LN2(x1));  x = X + x1 + x2
       v0 = Linear(3 * 512 -> 512)(flatten(x))

2. U-DSA, depth 7: seven down-path refine blocks applied *both* to the visual embedding and to
   the template text embeddings (shared levels), then seven up-path ("Remap") refine blocks::

       v_l = Down_l(v_{l-1})                         l = 1..7      (t_l = Down_l(t_{l-1}))
       v'_7 = v_7;   v'_{l-1} = Remap_{l-1}(v'_l) + v_{l-1}        l = 7..1

   15 visual levels ``[v0, v1..v7, v'6..v'0]``, each paired with a text level.
3. RS2 at every level: ``[s * max_j cos(v, t_spoof_j), s * max_j cos(v, t_live_j)]``.
4. Classifier ``Linear(MoE(v'0))``, also applied to the text embeddings with the soft targets
   [0.9, 0.1] (spoof templates) and [0.1, 0.9] (live templates).
5. Loss = sum of MoE aux losses + CE(classifier) + sum of the 15 alignment CEs + two text CEs.

Reference quirks kept behind switches (defaults in brackets):
    ``double_residual`` [True = ref]      ``x + x1 + x2`` instead of ``x1 + x2``
    ``batch_attention`` [False; ref True] U-DSA attention across the batch / the templates
    ``label_smoothing_mode`` ["proper"; ref "reference"] ``0.9 onehot + 0.1`` (unnormalised)

Shape letters used in the comments:
    b  batch     m  modalities (RGB, Depth, IR)     d  width (512)
    T  templates of one class     L  levels (15)    K  classes (2: 0 spoof, 1 live)

Leaf layers take explicit keyword arguments and never see a model config; the MoE's own
keyword arguments travel as ``moe_kwargs`` (see :class:`MmdaSTMoE`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .layers_attention import MmdaDifferentialAttention, reorganise_by_domain
from .layers_stmoe import MmdaSTMoE

__all__ = [
    "MmdaFusionBlock",
    "MmdaRefineBlock",
    "MmdaUDSA",
    "MmdaUDSAOutput",
    "MmdaClassifier",
    "rs2_alignment_logits",
    "rs2_alignment_logits_all_levels",
    "smooth_labels",
    "soft_cross_entropy",
    "text_anchor_targets",
    "mmda_loss",
    "LABEL_SMOOTHING_MODES",
]

LABEL_SMOOTHING_MODES = ("proper", "reference")


def _check_dim(name: str, value: int) -> None:
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")


# ---------------------------------------------------------------------------------------------
# fusion: MD2A + MoE over the three modality embeddings
# ---------------------------------------------------------------------------------------------


class MmdaFusionBlock(nn.Module):
    """MD2A fusion of the modality embeddings into one vector ``v0``.

    ``x1 = X + MD2A(LN(X), LN(X_dom))``; ``x2 = MoE(LN2(x1))``; ``x = X + x1 + x2`` (the
    reference doubles the residual; ``double_residual=False`` gives ``x1 + x2``); then
    ``v0 = Linear(m*d -> d)(flatten(x))``. ``X_dom`` comes from :func:`reorganise_by_domain`
    (``X_dom = X`` without domain labels). The MoE routes each sample's m tokens as a group.

    Args:
        dim: embedding width (ref 512).
        num_modalities: tokens per sample (ref 3: RGB, Depth, IR).
        heads: MD2A heads (ref 16).
        depth: MD2A depth for lambda_init (ref 12).
        attn_dropout: MD2A attention dropout (ref 0.1).
        double_residual: keep the reference's ``X + x1 + x2`` (ref True).
        moe_kwargs: keyword arguments for :class:`MmdaSTMoE`.
    """

    def __init__(
        self,
        dim: int,
        *,
        num_modalities: int = 3,  # ref
        heads: int = 16,  # ref
        depth: int = 12,  # ref
        attn_dropout: float = 0.1,  # ref
        double_residual: bool = True,  # ref: x = X + x1 + x2
        moe_kwargs: Mapping | None = None,
    ):
        super().__init__()
        _check_dim("MmdaFusionBlock: dim", dim)
        _check_dim("MmdaFusionBlock: num_modalities", num_modalities)
        self.dim = dim
        self.num_modalities = num_modalities
        self.double_residual = double_residual
        self.norm = nn.LayerNorm(dim)
        self.attn = MmdaDifferentialAttention(dim, heads=heads, depth=depth, dropout=attn_dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.moe = MmdaSTMoE(dim, **dict(moe_kwargs or {}))
        self.proj = nn.Linear(num_modalities * dim, dim)

    def reset_parameters(self) -> None:
        for module in (self.norm, self.attn, self.norm2, self.moe, self.proj):
            module.reset_parameters()

    def forward(self, x: torch.Tensor, domain_labels: torch.Tensor | Sequence | None = None):
        """``x`` (b, m, d) modality embeddings -> ``(v0 (b, d), aux_loss)``."""
        if x.dim() != 3 or x.shape[1:] != (self.num_modalities, self.dim):
            raise ValueError(
                f"MmdaFusionBlock: x must be (b, {self.num_modalities}, {self.dim}), got {tuple(x.shape)}")
        x_dom = reorganise_by_domain(x, domain_labels)
        # differential attention: one LayerNorm for both X and X_dom
        x1 = x + self.attn(self.norm(x), self.norm(x_dom))
        x2, aux = self.moe(self.norm2(x1))
        fused = x + x1 + x2 if self.double_residual else x1 + x2
        return self.proj(fused.flatten(1)), aux


# ---------------------------------------------------------------------------------------------
# U-DSA: refine block and the U-shaped stack
# ---------------------------------------------------------------------------------------------


class MmdaRefineBlock(nn.Module):
    """One U-DSA level: ``x1 = x + MHA(LN(x))``, then ``x + x1 + MoE(LN2(x1))``.

    ``x`` is (b, n, d). By default attention runs within each row's own n tokens (for MMDA's
    (b, 1, d) inputs that is a single token, so MHA reduces to its value and output maps).
    ``batch_attention=True`` reproduces the reference, whose ``nn.MultiheadAttention`` was
    built without ``batch_first``: the rows attend to each other (across the batch for
    images, across the templates for text), so a sample's output depends on its batch.
    The MoE always routes each row as its own group.

    Args:
        dim: width (ref 512).
        heads: MHA heads (ref 16).
        batch_attention: attend across rows as the reference does (ours False, ref True).
        double_residual: ``x + x1 + x2`` as the reference (True) or ``x1 + x2`` (False).
        attn_dropout: MHA dropout (ref 0, PyTorch's default).
        moe_kwargs: keyword arguments for :class:`MmdaSTMoE`.
    """

    def __init__(
        self,
        dim: int,
        *,
        heads: int = 16,  # ref
        batch_attention: bool = False,  # ref True: MHA without batch_first
        double_residual: bool = True,  # ref
        attn_dropout: float = 0.0,  # ref
        moe_kwargs: Mapping | None = None,
    ):
        super().__init__()
        _check_dim("MmdaRefineBlock: dim", dim)
        _check_dim("MmdaRefineBlock: heads", heads)
        if dim % heads:
            raise ValueError(f"MmdaRefineBlock: heads ({heads}) must divide dim ({dim})")
        self.dim = dim
        self.batch_attention = batch_attention
        self.double_residual = double_residual
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=attn_dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.moe = MmdaSTMoE(dim, **dict(moe_kwargs or {}))

    def reset_parameters(self) -> None:
        self.norm.reset_parameters()
        self.attn._reset_parameters()
        self.norm2.reset_parameters()
        self.moe.reset_parameters()

    def forward(self, x: torch.Tensor):
        """``x`` (b, n, d) -> ``(out (b, n, d), aux_loss)``."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"MmdaRefineBlock: x must be (b, n, {self.dim}), got {tuple(x.shape)}")
        h = self.norm(x)
        if self.batch_attention:
            # ref: the batch axis is read as the sequence axis: (n, b, d), attend over b
            h = h.transpose(0, 1)
            h = self.attn(h, h, h, need_weights=False)[0].transpose(0, 1)
        else:
            h = self.attn(h, h, h, need_weights=False)[0]
        x1 = x + h
        x2, aux = self.moe(self.norm2(x1))
        out = x + x1 + x2 if self.double_residual else x1 + x2
        return out, aux


class MmdaUDSAOutput(NamedTuple):
    """U-DSA results.

    Attributes:
        visual_levels: 15 tensors (b, d): ``[v0, v1..v7, v'6..v'0]``; the last feeds the classifier.
        text_levels: 15 lists, one tensor (T_c, d) per text set given (spoof, live), paired
            with the visual level of the same index.
        aux_loss: the sum of all MoE auxiliary losses of the stack (scalar).
    """

    visual_levels: list
    text_levels: list
    aux_loss: torch.Tensor


class MmdaUDSA(nn.Module):
    """U-shaped Dual Space Adaptation: ``depth`` shared down levels and ``depth`` up (Remap) levels.

    Down level l is the same module for the visual embedding and for every text set (each
    text set, e.g. the spoof templates, is processed as its own (T, 1, d) batch), so image
    and text class subspaces move together. The up path is visual:
    ``v'_{l-1} = Remap_{l-1}(v'_l) + v_{l-1}`` with ``v'_depth = v_depth``; its outputs are
    paired with the text of the same down level ``t_{l-1}``. With ``text_up_path=True`` the
    text also takes the up path (``t'_{l-1} = Remap_{l-1}(t'_l) + t_{l-1}``) and the pairs
    are ``(v'_{l-1}, t'_{l-1})``.

    Args:
        dim: width (ref 512).
        depth: levels of the down path and of the up path (ref 7, giving 15 levels).
        heads: MHA heads of each refine block (ref 16).
        batch_attention: the reference's cross-batch attention (ours False, ref True).
        double_residual: the reference's doubled residual in each refine block (ref True).
        text_up_path: also run the text through the up path (ours False).
        moe_kwargs: keyword arguments for every :class:`MmdaSTMoE`.
    """

    def __init__(
        self,
        dim: int,
        *,
        depth: int = 7,  # ref
        heads: int = 16,  # ref
        batch_attention: bool = False,  # ref True (udsa_batch_attention)
        double_residual: bool = True,  # ref
        text_up_path: bool = False,  # ours: the spec pairs up-path outputs with the down-path text
        moe_kwargs: Mapping | None = None,
    ):
        super().__init__()
        _check_dim("MmdaUDSA: dim", dim)
        _check_dim("MmdaUDSA: depth", depth)
        self.dim = dim
        self.depth = depth
        self.text_up_path = text_up_path

        def block() -> MmdaRefineBlock:
            return MmdaRefineBlock(dim, heads=heads, batch_attention=batch_attention,
                                   double_residual=double_residual, moe_kwargs=moe_kwargs)

        self.down = nn.ModuleList(block() for _ in range(depth))
        # up[i] is Remap_i: it maps level i + 1 back to level i
        self.up = nn.ModuleList(block() for _ in range(depth))

    @property
    def num_levels(self) -> int:
        return 2 * self.depth + 1

    def reset_parameters(self) -> None:
        for module in (*self.down, *self.up):
            module.reset_parameters()

    def forward(self, visual: torch.Tensor, texts: Sequence[torch.Tensor] = ()) -> MmdaUDSAOutput:
        """``visual`` (b, d) and text sets (T_c, d) -> :class:`MmdaUDSAOutput` with 15 paired levels."""
        if visual.dim() != 2 or visual.shape[-1] != self.dim:
            raise ValueError(f"MmdaUDSA: visual must be (b, {self.dim}), got {tuple(visual.shape)}")
        for i, t in enumerate(texts):
            if t.dim() != 2 or t.shape[-1] != self.dim:
                raise ValueError(f"MmdaUDSA: texts[{i}] must be (T, {self.dim}), got {tuple(t.shape)}")
        aux = visual.new_zeros((), dtype=torch.float32)

        # down path, shared by image and text: (b, 1, d) and (T, 1, d)
        v = [visual.unsqueeze(1)]
        t = [[ti.unsqueeze(1) for ti in texts]]
        for level in self.down:
            out, a = level(v[-1])
            v.append(out)
            aux = aux + a
            outs = []
            for ti in t[-1]:
                o, a = level(ti)
                outs.append(o)
                aux = aux + a
            t.append(outs)

        # up path: v'_{l-1} = Remap_{l-1}(v'_l) + v_{l-1}
        v_up, t_up = [], []
        v_cur, t_cur = v[-1], t[-1]
        for lvl in range(self.depth, 0, -1):
            out, a = self.up[lvl - 1](v_cur)
            aux = aux + a
            v_cur = out + v[lvl - 1]
            v_up.append(v_cur)
            if self.text_up_path:
                outs = []
                for ti, skip in zip(t_cur, t[lvl - 1]):
                    o, a = self.up[lvl - 1](ti)
                    aux = aux + a
                    outs.append(o + skip)
                t_cur = outs
            else:
                t_cur = t[lvl - 1]
            t_up.append(t_cur)

        visual_levels = [x.squeeze(1) for x in v + v_up]
        text_levels = [[x.squeeze(1) for x in level] for level in t + t_up]
        return MmdaUDSAOutput(visual_levels, text_levels, aux)


# ---------------------------------------------------------------------------------------------
# RS2: nearest-template alignment logits
# ---------------------------------------------------------------------------------------------


def rs2_alignment_logits(
    image_embeds: torch.Tensor,
    spoof_text_embeds: torch.Tensor,
    live_text_embeds: torch.Tensor,
    logit_scale: torch.Tensor | float,
) -> torch.Tensor:
    """RS2 logits: ``[s * max_j cos(v, t_spoof_j), s * max_j cos(v, t_live_j)]``.

    Each image aligns with the nearest template of each class, not with the mean prompt.

    Args:
        image_embeds: (b, d).
        spoof_text_embeds: (T_spoof, d) (class 0).
        live_text_embeds: (T_live, d) (class 1).
        logit_scale: the multiplier ``s``, i.e. CLIP's ``logit_scale.exp()`` (100 for CLIP).

    Returns:
        (b, 2) logits, column 0 spoof, column 1 live.
    """
    if image_embeds.dim() != 2:
        raise ValueError(
            f"rs2_alignment_logits: image_embeds must be (b, d), got {tuple(image_embeds.shape)}")
    d = image_embeds.shape[-1]
    for name, t in (("spoof_text_embeds", spoof_text_embeds), ("live_text_embeds", live_text_embeds)):
        if t.dim() != 2 or t.shape[-1] != d or t.shape[0] == 0:
            raise ValueError(f"rs2_alignment_logits: {name} must be (T >= 1, {d}), got {tuple(t.shape)}")
    v = F.normalize(image_embeds, dim=-1)
    best = [(v @ F.normalize(t, dim=-1).T).max(dim=-1).values for t in (spoof_text_embeds, live_text_embeds)]
    return logit_scale * torch.stack(best, dim=-1)


def rs2_alignment_logits_all_levels(
    visual_levels: Sequence[torch.Tensor],
    text_levels: Sequence[Sequence[torch.Tensor]],
    logit_scale: torch.Tensor | float,
) -> list:
    """RS2 logits at every level: a list of (b, 2); ``text_levels[l]`` is ``(spoof, live)``."""
    if len(visual_levels) != len(text_levels):
        raise ValueError(
            f"rs2_alignment_logits_all_levels: {len(visual_levels)} visual levels but "
            f"{len(text_levels)} text levels")
    out = []
    for level, (v, texts) in enumerate(zip(visual_levels, text_levels)):
        if len(texts) != 2:
            raise ValueError(
                f"rs2_alignment_logits_all_levels: text_levels[{level}] must hold (spoof, live), "
                f"got {len(texts)} sets")
        out.append(rs2_alignment_logits(v, texts[0], texts[1], logit_scale))
    return out


# ---------------------------------------------------------------------------------------------
# targets and losses
# ---------------------------------------------------------------------------------------------


def smooth_labels(
    labels: torch.Tensor, num_classes: int = 2, smoothing: float = 0.1, mode: str = "proper"
) -> torch.Tensor:
    """Soft targets from integer labels (b,) -> (b, K).

    ``mode="proper"``: ``(1 - eps) onehot + eps / K`` (rows sum to 1; torch's label_smoothing).
    ``mode="reference"``: ``(1 - eps) onehot + eps``, the MMDA reference's unnormalised target
    (with eps = 0.1: [1.0, 0.1] for spoof, rows sum to 1.1).
    """
    if mode not in LABEL_SMOOTHING_MODES:
        raise ValueError(f"smooth_labels: mode must be one of {LABEL_SMOOTHING_MODES}, got {mode!r}")
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"smooth_labels: smoothing must be in [0, 1], got {smoothing}")
    if labels.dim() != 1 or labels.is_floating_point():
        raise ValueError(f"smooth_labels: labels must be a 1-D integer tensor, got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"smooth_labels: labels must lie in [0, {num_classes}), got {labels.tolist()}")
    onehot = F.one_hot(labels, num_classes).float()
    floor = smoothing / num_classes if mode == "proper" else smoothing
    return (1.0 - smoothing) * onehot + floor


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-sum_k targets_k log_softmax(logits)_k`` (targets need not sum to 1)."""
    if logits.shape != targets.shape:
        raise ValueError(
            f"soft_cross_entropy: logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ")
    return -(targets.to(logits.dtype) * logits.log_softmax(dim=-1)).sum(dim=-1).mean()


def text_anchor_targets(
    num_templates: int, class_index: int, *, value: float = 0.9, num_classes: int = 2
) -> torch.Tensor:
    """Soft targets for the text anchors: ``value`` on ``class_index``, the rest shared equally.

    With the defaults: ``[0.9, 0.1]`` for spoof templates (class 0), ``[0.1, 0.9]`` for live (class 1).
    """
    if not 0 <= class_index < num_classes or num_classes < 2:
        raise ValueError(
            f"text_anchor_targets: class_index must be in [0, {num_classes}) with num_classes >= 2, "
            f"got {class_index}, {num_classes}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"text_anchor_targets: value must be in [0, 1], got {value}")
    row = torch.full((num_classes,), (1.0 - value) / (num_classes - 1))
    row[class_index] = value
    return row.expand(num_templates, num_classes).clone()


class MmdaClassifier(nn.Module):
    """The classification head ``Linear(d -> K)(MoE(x))`` with text-anchored soft targets.

    Applied to the last up-path output ``v'0``. During training it is also applied to the
    text embeddings, which must be classified as their class with a soft target
    (:meth:`text_anchor_loss`), so that the head stays anchored to the text class subspaces.

    The MoE's router reads its input unnormalised (its GEGLU experts normalise for
    themselves). With the reference's doubled residuals ``v'0`` is about 2^14 times larger
    than ``v0``, so the router logits, and the router z-loss with them, explode (measured
    ~1e5 at width 128 on random inputs). ``prenorm=True`` (ours) puts a LayerNorm before the
    MoE; the default keeps the spec's plain ``Linear(MoE(x))``.

    Args:
        dim: width (ref 512).
        num_labels: classes (2: 0 spoof, 1 live).
        text_target: weight of the true class in the text soft targets (ref 0.9).
        prenorm: LayerNorm before the MoE (ours; the spec has none).
        moe_kwargs: keyword arguments for :class:`MmdaSTMoE`.
    """

    def __init__(
        self,
        dim: int,
        *,
        num_labels: int = 2,
        text_target: float = 0.9,  # ref
        prenorm: bool = False,  # ref: none
        moe_kwargs: Mapping | None = None,
    ):
        super().__init__()
        _check_dim("MmdaClassifier: dim", dim)
        if num_labels < 2:
            raise ValueError(f"MmdaClassifier: num_labels must be >= 2, got {num_labels}")
        self.dim = dim
        self.num_labels = num_labels
        self.text_target = text_target
        self.norm = nn.LayerNorm(dim) if prenorm else nn.Identity()
        self.moe = MmdaSTMoE(dim, **dict(moe_kwargs or {}))
        self.head = nn.Linear(dim, num_labels)

    def reset_parameters(self) -> None:
        if isinstance(self.norm, nn.LayerNorm):
            self.norm.reset_parameters()
        self.moe.reset_parameters()
        self.head.reset_parameters()

    def forward(self, x: torch.Tensor):
        """``x`` (b, d) -> ``(logits (b, K), aux_loss)``."""
        if x.dim() != 2 or x.shape[-1] != self.dim:
            raise ValueError(f"MmdaClassifier: x must be (b, {self.dim}), got {tuple(x.shape)}")
        h, aux = self.moe(self.norm(x).unsqueeze(1))
        return self.head(h.squeeze(1)), aux

    def text_anchor_loss(self, spoof_text_embeds: torch.Tensor, live_text_embeds: torch.Tensor):
        """Soft-target CEs of the head on the spoof (class 0) and live (class 1) text embeddings.

        Returns ``(ce_spoof, ce_live, aux_loss)``; targets ``[0.9, 0.1]`` and ``[0.1, 0.9]`` by default.
        """
        if self.num_labels != 2:
            raise ValueError(f"MmdaClassifier.text_anchor_loss: needs num_labels == 2, got {self.num_labels}")
        losses, aux = [], None
        for cls, t in enumerate((spoof_text_embeds, live_text_embeds)):
            logits, a = self(t)
            target = text_anchor_targets(t.shape[0], cls, value=self.text_target).to(logits.device)
            losses.append(soft_cross_entropy(logits, target))
            aux = a if aux is None else aux + a
        return losses[0], losses[1], aux


def mmda_loss(
    logits: torch.Tensor,
    alignment_logits: Sequence[torch.Tensor],
    labels: torch.Tensor,
    *,
    text_anchor_losses: Sequence[torch.Tensor] = (),
    aux_losses: Sequence[torch.Tensor] | torch.Tensor = (),
    label_smoothing: float = 0.1,  # ref
    label_smoothing_mode: str = "proper",  # ref: "reference" (0.9 onehot + 0.1, unnormalised)
) -> tuple[torch.Tensor, dict]:
    """MMDA's summed loss, all weights 1.

    ``loss = sum(aux) + CE(logits, y~) + sum_l CE(alignment_logits[l], y~) + sum(text_anchor_losses)``
    where ``y~ = smooth_labels(labels, K, label_smoothing, label_smoothing_mode)`` is used by
    the classifier CE and by every alignment CE.

    Args:
        logits: (b, K) classifier logits.
        alignment_logits: RS2 logits per level, each (b, K) (15 in MMDA).
        labels: (b,) integer labels, 0 spoof, 1 live.
        text_anchor_losses: the two text-anchor CEs (:meth:`MmdaClassifier.text_anchor_loss`).
        aux_losses: MoE auxiliary losses (already weighted), a scalar or a sequence of scalars.
        label_smoothing: eps (ref 0.1).
        label_smoothing_mode: "proper" or "reference" (see :func:`smooth_labels`).

    Returns:
        ``(loss, terms)`` where ``terms`` holds ``classifier``, ``alignment`` (sum over levels),
        ``alignment_per_level`` (list), ``text_anchor`` and ``aux`` (all detached).
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"mmda_loss: logits must be (b, K) and labels (b,), got {tuple(logits.shape)} "
            f"and {tuple(labels.shape)}")
    targets = smooth_labels(labels, logits.shape[-1], label_smoothing, label_smoothing_mode).to(logits.device)
    ce_cls = soft_cross_entropy(logits, targets)
    per_level = []
    for level, a in enumerate(alignment_logits):
        if a.shape != logits.shape:
            raise ValueError(
                f"mmda_loss: alignment_logits[{level}] must be {tuple(logits.shape)}, got {tuple(a.shape)}")
        per_level.append(soft_cross_entropy(a, targets))
    zero = logits.new_zeros(())
    ce_align = torch.stack(per_level).sum() if per_level else zero
    ce_text = torch.stack(list(text_anchor_losses)).sum() if len(text_anchor_losses) else zero
    if isinstance(aux_losses, torch.Tensor):
        aux = aux_losses.sum()
    else:
        aux = torch.stack([a.reshape(()) for a in aux_losses]).sum() if len(aux_losses) else zero
    loss = aux + ce_cls + ce_align + ce_text
    terms = {
        "classifier": ce_cls.detach(),
        "alignment": ce_align.detach(),
        "alignment_per_level": [p.detach() for p in per_level],
        "text_anchor": ce_text.detach(),
        "aux": aux.detach(),
    }
    return loss, terms

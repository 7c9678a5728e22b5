"""MD2A: Modality-Domain joint Differential Attention, its RMSNorm and the batch reorganisation.

MMDA: "Multimodal Denoising and Alignment" (Ma, Lin, Yu, Liu, Yuan, Xie, Shen; arXiv 2505.09484),
later retitled "Purify then Guide". MD2A is the differential attention of the Differential
Transformer (Ye, Dong, Xia, Sun, Zhu, Huang, Wei; "Differential Transformer", arXiv 2410.05258)
with one change: the *subtracted* attention map is computed from the embeddings of a sample of
the same domain (``X_dom``), so that what is common to the domain (domain noise) cancels out
while the modality-specific signal survives::

    A   = softmax(Q  K^T  / sqrt(dim))        Q,  K,  V from X       (already layer-normed)
    A'  = softmax(Q' K'^T / sqrt(dim))        Q', K'    from X_dom   (already layer-normed)
    out = RMSNorm((A - lambda * A') V) * (1 - lambda_init)
    lambda = exp(lambda_q1 . lambda_k1) - exp(lambda_q2 . lambda_k2) + lambda_init
    lambda_init = 0.8 - 0.6 * exp(-0.3 * depth)

Shape letters used in the comments:
    b  batch             n  tokens (modalities: RGB, Depth, IR)     d  width (512)
    h  heads             e  head dim (d / h)

Leaf layers take explicit keyword arguments and never see a model config.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MmdaRMSNorm", "MmdaDifferentialAttention", "lambda_init_fn", "reorganise_by_domain"]


def lambda_init_fn(depth: float) -> float:
    """Differential Transformer's lambda schedule: ``0.8 - 0.6 * exp(-0.3 * depth)``.

    MMDA uses ``depth = 12`` (one fusion layer after a 12-layer CLIP), giving about 0.7836.
    """
    if depth < 0:
        raise ValueError(f"lambda_init_fn: depth must be >= 0, got {depth}")
    return 0.8 - 0.6 * math.exp(-0.3 * depth)


def reorganise_by_domain(x: torch.Tensor, domain_labels: torch.Tensor | Sequence | None) -> torch.Tensor:
    """MMDA's "batch reorganise": for each sample, the embeddings of the first same-domain sample.

    For sample ``i`` the result holds ``x[j]`` where ``j`` is the smallest batch index with
    ``domain_labels[j] == domain_labels[i]`` (possibly ``i`` itself, so the first sample of
    each domain keeps its own embeddings). With ``domain_labels=None`` (inference, or data
    without domain labels) ``X_dom = X`` is returned unchanged: the subtracted map then comes
    from the sample itself.

    Args:
        x: (b, ...) embeddings, batch first.
        domain_labels: None, a 1-D integer tensor of length b, or a sequence of b hashable
            labels (ints or strings).

    Returns:
        ``X_dom`` with the same shape as ``x`` (a gathered copy, differentiable w.r.t. ``x``).
    """
    if domain_labels is None:
        return x
    b = x.shape[0]
    if isinstance(domain_labels, torch.Tensor):
        if domain_labels.dim() != 1 or domain_labels.is_floating_point() or domain_labels.is_complex():
            raise ValueError(
                f"reorganise_by_domain: domain_labels must be a 1-D integer tensor, got dtype "
                f"{domain_labels.dtype} and shape {tuple(domain_labels.shape)}")
        labels = domain_labels.to(x.device)
    else:
        ids: dict = {}
        labels = torch.tensor([ids.setdefault(lab, len(ids)) for lab in domain_labels], device=x.device)
    if labels.shape[0] != b:
        raise ValueError(
            f"reorganise_by_domain: domain_labels has {labels.shape[0]} entries but x has batch {b} "
            f"(x shape {tuple(x.shape)})")
    # same[i, j]: sample j shares sample i's domain; argmax returns the first maximal index
    same = labels.unsqueeze(1) == labels.unsqueeze(0)
    first = same.to(torch.uint8).argmax(dim=1)
    return x.index_select(0, first)


class MmdaRMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019): ``x / sqrt(mean(x^2) + eps) * weight`` (``weight`` starts at 1)."""

    def __init__(self, dim: int, *, eps: float = 1e-5):  # ref: Differential Transformer's eps
        super().__init__()
        if dim <= 0:
            raise ValueError(f"MmdaRMSNorm: dim must be positive, got {dim}")
        if eps <= 0:
            raise ValueError(f"MmdaRMSNorm: eps must be positive, got {eps}")
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"MmdaRMSNorm: last dim must be {self.dim}, got shape {tuple(x.shape)}")
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


class MmdaDifferentialAttention(nn.Module):
    """MD2A: differential attention (Ye et al., Differential Transformer) with a domain-side map.

    The caller passes inputs that are already layer-normed (MMDA's fusion block applies one
    LayerNorm to both ``X`` and ``X_dom``). Queries, keys and values of ``x`` and the second
    queries and keys of ``x_dom`` come from five separate bias-free ``dim -> dim`` maps, split
    into ``heads`` heads. Both maps are scaled by ``1 / sqrt(dim)`` (the *whole* width, as the
    MMDA reference, not ``1 / sqrt(head_dim)``). Their difference ``A - lambda A'`` (after
    attention dropout) weighs ``V``; the concatenated heads pass through ``RMSNorm(dim)`` and
    are multiplied by ``1 - lambda_init``. There is no output projection.

    ``lambda`` is one scalar shared by all heads, re-parameterised as
    ``exp(lambda_q1 . lambda_k1) - exp(lambda_q2 . lambda_k2) + lambda_init`` from four
    learned ``dim``-vectors drawn from N(0, ``lambda_std``).

    Args:
        dim: width of the embeddings (ref 512).
        heads: attention heads; must divide ``dim`` (ref 16).
        depth: layer depth fed to :func:`lambda_init_fn` (ref 12, lambda_init ~ 0.784).
        lambda_init: overrides the value derived from ``depth`` when given.
        lambda_std: std of the four lambda vectors at initialisation (ref 0.1).
        dropout: dropout on the differential attention map (ref 0.1).
        eps: RMSNorm epsilon.
    """

    def __init__(
        self,
        dim: int,
        *,
        heads: int = 16,  # ref
        depth: int = 12,  # ref: lambda_init = 0.8 - 0.6 exp(-3.6)
        lambda_init: float | None = None,
        lambda_std: float = 0.1,  # ref
        dropout: float = 0.1,  # ref
        eps: float = 1e-5,
    ):
        super().__init__()
        if dim <= 0 or heads <= 0:
            raise ValueError(
                f"MmdaDifferentialAttention: dim and heads must be positive, got dim={dim}, heads={heads}")
        if dim % heads:
            raise ValueError(f"MmdaDifferentialAttention: heads ({heads}) must divide dim ({dim})")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"MmdaDifferentialAttention: dropout must be in [0, 1], got {dropout}")
        if lambda_std < 0:
            raise ValueError(f"MmdaDifferentialAttention: lambda_std must be >= 0, got {lambda_std}")
        self.dim = dim
        self.heads = heads
        self.head_dim = dim // heads
        self.depth = depth
        self.lambda_init = float(lambda_init) if lambda_init is not None else lambda_init_fn(depth)
        self.lambda_std = lambda_std
        self.scale = dim ** -0.5  # ref: temperature sqrt(dim), the whole width

        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_q_dom = nn.Linear(dim, dim, bias=False)
        self.to_k_dom = nn.Linear(dim, dim, bias=False)
        self.lambda_q1 = nn.Parameter(torch.empty(dim))
        self.lambda_k1 = nn.Parameter(torch.empty(dim))
        self.lambda_q2 = nn.Parameter(torch.empty(dim))
        self.lambda_k2 = nn.Parameter(torch.empty(dim))
        self.norm = MmdaRMSNorm(dim, eps=eps)
        self.attn_dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Projections: PyTorch's Linear default; lambda vectors N(0, lambda_std); norm weight 1."""
        for linear in (self.to_q, self.to_k, self.to_v, self.to_q_dom, self.to_k_dom):
            linear.reset_parameters()
        for vec in (self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2):
            nn.init.normal_(vec, mean=0.0, std=self.lambda_std)
        self.norm.reset_parameters()

    def lambda_full(self) -> torch.Tensor:
        """The scalar ``exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init``."""
        lambda_1 = torch.exp(torch.dot(self.lambda_q1.float(), self.lambda_k1.float()))
        lambda_2 = torch.exp(torch.dot(self.lambda_q2.float(), self.lambda_k2.float()))
        return lambda_1 - lambda_2 + self.lambda_init

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, self.head_dim).transpose(1, 2)  # (b, h, n, e)

    def forward(
        self, x: torch.Tensor, x_dom: torch.Tensor | None = None, *, return_attention: bool = False
    ):
        """``x`` and ``x_dom`` (b, n, dim), both layer-normed; ``x_dom=None`` means ``x_dom = x``.

        Returns (b, n, dim); with ``return_attention=True`` also the differential map
        ``A - lambda A'`` (b, h, n, n) before dropout.
        """
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"MmdaDifferentialAttention: x must be (b, n, {self.dim}), got {tuple(x.shape)}")
        if x_dom is None:
            x_dom = x
        if x_dom.shape != x.shape:
            raise ValueError(
                f"MmdaDifferentialAttention: x_dom must have x's shape {tuple(x.shape)}, "
                f"got {tuple(x_dom.shape)}")
        b, n, _ = x.shape
        # queries, keys, values: (b, h, n, e)
        q, k, v = (self._split_heads(f(x)) for f in (self.to_q, self.to_k, self.to_v))
        q_dom, k_dom = (self._split_heads(f(x_dom)) for f in (self.to_q_dom, self.to_k_dom))
        # two attention maps: (b, h, n, n)
        attn = torch.softmax(torch.einsum("bhie,bhje->bhij", q, k).float() * self.scale, dim=-1)
        attn_dom = torch.softmax(torch.einsum("bhie,bhje->bhij", q_dom, k_dom).float() * self.scale, dim=-1)
        # differential map and weighted values: (b, h, n, e) -> (b, n, d)
        diff = attn - self.lambda_full() * attn_dom
        out = torch.einsum("bhij,bhje->bhie", self.attn_dropout(diff).to(v.dtype), v)
        out = out.transpose(1, 2).reshape(b, n, self.dim)
        # RMSNorm over the whole width, then the fixed (1 - lambda_init) scale
        out = self.norm(out) * (1.0 - self.lambda_init)
        if return_attention:
            return out, diff
        return out

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}, lambda_init={self.lambda_init:.4f}"

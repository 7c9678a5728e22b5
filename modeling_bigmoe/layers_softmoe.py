"""Soft MoE with an optional linear-attention combine (the "La" of La-SoftMoE).

La-SoftMoE CLIP: "La-SoftMoE CLIP for Unified Physical-Digital Face Attack Detection"
(Zou, Du, Zhang, Zhang, Liu, Wan, Lei; IJCB 2024, arXiv 2408.12793). Soft MoE after
Puigcerver, Riquelme, Mustafa, Houlsby, "From Sparse to Soft Mixtures of Experts"
(ICLR 2024, arXiv 2308.00951). One layer sits beside the MLP of each CLIP block:
``x <- x + MLP(LN2(x)) + SoftMoE(LN2(x))``; this file holds the layer only.

Algorithm (per batch element; X is (n, d), Phi is (d, s) with s = e * p slots)::

    L = scale * l2norm_d(X) . l2norm_d(Phi)                 (n, s)   logits, scale learnable
    D = softmax over tokens i of L[:, j]                    (n, s)   dispatch, sum_i D_ij = 1
    X~ = D^T X                                              (s, d)   slot inputs
    Y~[slots of expert k] = f_k(X~[slots of expert k])      (s, d)   all experts in one einsum
    C = combine(L)                                          (n, s)   sum_j C_ij = 1
    Y = C Y~                                                (n, d)

Combine (reconstructed, every choice a switch):

* ``combine="softmax"``: ``C = softmax over slots of L^`` (the original Soft MoE).
* ``combine="linear"``:  ``C_ij = phi(L^_ij) / sum_j' phi(L^_ij')`` (linear attention).

where ``L^ = L`` (``combine_norm="none"``) or ``L^ = InstanceNorm(L)``, each slot's logits
normalised across the tokens without affine (``combine_norm="instance"``). The kernel
``phi`` is ``ELU(z) + 1`` (``"elu1"``), ``ReLU(z) + phi_eps`` (``"relu"``; the epsilon keeps a
token whose logits are all negative at uniform weights instead of 0 / 0), or
``ELU(a_j z + c_j) + 1`` with a learnable per-slot affine map started at ``a = 1, c = 0``
(``"learnable"``; the diagonal of a linear map: 2 * s parameters, and it starts equal to
``"elu1"``). Dispatch is always the softmax over tokens of the raw ``L``.

Slot count (``Phi`` is a parameter, so it is fixed at construction, never at run time):

1. ``num_slots`` given: must be a multiple of ``num_experts`` (and agree with
   ``slots_per_expert`` when both are given);
2. else ``slots_per_expert`` given: ``s = num_experts * slots_per_expert``;
3. else ``num_tokens`` given: ``slots_per_expert = max(1, num_tokens // num_experts)``, the
   token count the layer is built for. RGB CLIP-B/16 at 224: 197 tokens -> 4 x 49 = 196
   slots; the multimodal early-fusion stream of 1 + 3 * 196 = 589 tokens -> 4 x 147 = 588
   slots (three times the RGB count, as the modality count);
4. else the paper's default, 49 slots per expert (4 x 49 = 196, the patch count at 224/16).

At run time any token count works, including fewer tokens than slots (each slot then
averages over the few tokens it sees; the weights still sum to 1).

Shape letters used in the comments:
    b  batch       n  tokens         d  model width        s  slots (= e * p)
    e  experts     p  slots per expert                     r  expert bottleneck width

Leaf layers take explicit keyword arguments and never see a model config.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers_peer import quick_gelu

__all__ = [
    "COMBINE_MODES",
    "COMBINE_NORMS",
    "EXPERT_ACTIVATIONS",
    "PHI_KINDS",
    "LaSoftMoeExperts",
    "LaSoftMoeFeatureMap",
    "LaSoftMoeLayer",
    "instance_norm_over_tokens",
    "resolve_num_slots",
]

COMBINE_MODES = ("softmax", "linear")
COMBINE_NORMS = ("none", "instance")
PHI_KINDS = ("elu1", "relu", "learnable")
EXPERT_ACTIVATIONS = ("gelu", "quick_gelu")

_DEFAULT_SLOTS_PER_EXPERT = 49  # paper: 4 experts x 49 slots = 196 = patches at 224/16


def _check_choice(owner: str, field: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{owner}: {field} must be one of {allowed}, got {value!r}")


def _check_positive(owner: str, field: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{owner}: {field} must be a positive int, got {value!r}")


def resolve_num_slots(
    num_experts: int,
    *,
    slots_per_expert: int | None = None,
    num_slots: int | None = None,
    num_tokens: int | None = None,
) -> int:
    """The total slot count ``s`` from the rules in the module docstring (explicit counts win).

    Raises ``ValueError`` when ``num_slots`` is not a multiple of ``num_experts``, when
    ``num_slots`` and ``slots_per_expert`` disagree, or when a count is not a positive int.
    """
    owner = "LaSoftMoeLayer"
    _check_positive(owner, "num_experts", num_experts)
    if slots_per_expert is not None:
        _check_positive(owner, "slots_per_expert", slots_per_expert)
    if num_tokens is not None:
        _check_positive(owner, "num_tokens", num_tokens)
    if num_slots is not None:
        _check_positive(owner, "num_slots", num_slots)
        if num_slots % num_experts:
            raise ValueError(
                f"{owner}: num_slots ({num_slots}) must be divisible by num_experts ({num_experts})")
        if slots_per_expert is not None and slots_per_expert * num_experts != num_slots:
            raise ValueError(
                f"{owner}: num_slots ({num_slots}) disagrees with num_experts x slots_per_expert "
                f"({num_experts} x {slots_per_expert} = {num_experts * slots_per_expert})")
        return num_slots
    if slots_per_expert is not None:
        return num_experts * slots_per_expert
    if num_tokens is not None:
        return num_experts * max(1, num_tokens // num_experts)
    return num_experts * _DEFAULT_SLOTS_PER_EXPERT


def instance_norm_over_tokens(logits: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Normalise each slot's logits across the tokens: ``(L - mean_n) / sqrt(var_n + eps)``.

    ``logits`` (b, n, s) -> (b, n, s). Biased variance and no affine, i.e. exactly
    ``nn.InstanceNorm1d(s)`` applied to the (b, s, n) transpose.
    """
    mean = logits.mean(dim=1, keepdim=True)
    var = logits.var(dim=1, unbiased=False, keepdim=True)
    return (logits - mean) * torch.rsqrt(var + eps)


class LaSoftMoeFeatureMap(nn.Module):
    """The positive kernel ``phi`` of the linear-attention combine, applied elementwise.

    ``"elu1"``: ``ELU(z) + 1``; ``"relu"``: ``ReLU(z) + eps``; ``"learnable"``:
    ``ELU(weight_j * z + bias_j) + 1`` with one (weight, bias) pair per slot ``j``
    (init 1 and 0, so it starts equal to ``"elu1"``).
    """

    def __init__(self, kind: str = "elu1", *, num_slots: int, eps: float = 1e-6):
        super().__init__()
        _check_choice("LaSoftMoeFeatureMap", "phi", kind, PHI_KINDS)
        _check_positive("LaSoftMoeFeatureMap", "num_slots", num_slots)
        if not eps > 0:
            raise ValueError(f"LaSoftMoeFeatureMap: eps must be positive, got {eps}")
        self.kind = kind
        self.num_slots = num_slots
        self.eps = eps
        if kind == "learnable":
            self.weight = nn.Parameter(torch.empty(num_slots))
            self.bias = nn.Parameter(torch.empty(num_slots))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``"learnable"``: weight 1, bias 0 (identity map); the fixed kernels hold no parameters."""
        if self.kind == "learnable":
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``z`` (..., s) -> phi(z) (..., s), strictly positive."""
        if self.kind == "elu1":
            return F.elu(z) + 1.0
        if self.kind == "relu":
            return F.relu(z) + self.eps
        return F.elu(z * self.weight + self.bias) + 1.0

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, num_slots={self.num_slots}"


class LaSoftMoeExperts(nn.Module):
    """``num_experts`` bottleneck MLPs ``d -> r -> d`` run together in one einsum each way.

    ``f_k(x) = act(x W_in[k] + b_in[k]) W_out[k] + b_out[k]``. With ``zero_init_output=True``
    (the default) ``W_out`` and ``b_out`` start at zero, so the layer adds exactly nothing at
    the start and training begins from the pretrained CLIP.
    """

    def __init__(
        self,
        dim: int,
        *,
        num_experts: int = 4,  # paper
        expert_dim: int = 64,  # not given in the paper ("almost no parameters are added")
        activation: str = "gelu",
        dropout: float = 0.0,
        zero_init_output: bool = True,
    ):
        super().__init__()
        owner = "LaSoftMoeExperts"
        for name, value in (("dim", dim), ("num_experts", num_experts), ("expert_dim", expert_dim)):
            _check_positive(owner, name, value)
        _check_choice(owner, "activation", activation, EXPERT_ACTIVATIONS)
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"{owner}: dropout must be in [0, 1], got {dropout}")
        self.dim = dim
        self.num_experts = num_experts
        self.expert_dim = expert_dim
        self.activation = activation
        self.zero_init_output = zero_init_output
        self.w_in = nn.Parameter(torch.empty(num_experts, dim, expert_dim))
        self.b_in = nn.Parameter(torch.empty(num_experts, expert_dim))
        self.w_out = nn.Parameter(torch.empty(num_experts, expert_dim, dim))
        self.b_out = nn.Parameter(torch.empty(num_experts, dim))
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Input side as ``nn.Linear`` (U(+-1/sqrt(d))); output side zero, or U(+-1/sqrt(r))."""
        bound_in = 1.0 / math.sqrt(self.dim)
        nn.init.uniform_(self.w_in, -bound_in, bound_in)
        nn.init.uniform_(self.b_in, -bound_in, bound_in)
        if self.zero_init_output:
            nn.init.zeros_(self.w_out)
            nn.init.zeros_(self.b_out)
        else:
            bound_out = 1.0 / math.sqrt(self.expert_dim)
            nn.init.uniform_(self.w_out, -bound_out, bound_out)
            nn.init.uniform_(self.b_out, -bound_out, bound_out)

    def forward(self, slots: torch.Tensor) -> torch.Tensor:
        """``slots`` (b, e, p, d), expert ``k`` taking ``slots[:, k]`` -> (b, e, p, d)."""
        if slots.dim() != 4 or slots.shape[1] != self.num_experts or slots.shape[-1] != self.dim:
            raise ValueError(
                f"LaSoftMoeExperts: slots must be (b, {self.num_experts}, p, {self.dim}), "
                f"got {tuple(slots.shape)}")
        hidden = torch.einsum("bepd,edr->bepr", slots, self.w_in) + self.b_in[:, None, :]
        hidden = F.gelu(hidden) if self.activation == "gelu" else quick_gelu(hidden)
        hidden = self.dropout(hidden)
        return torch.einsum("bepr,erd->bepd", hidden, self.w_out) + self.b_out[:, None, :]


class LaSoftMoeLayer(nn.Module):
    """A Soft MoE layer whose combine step is a softmax or a linear-attention normalisation.

    Args:
        dim: token width ``d`` (CLIP-B: 768).
        num_experts: expert count ``e`` (paper 4).
        slots_per_expert, num_slots, num_tokens: the slot count, resolved as described in the
            module docstring (default: 49 per expert, 196 in all, as the paper).
        expert_dim: bottleneck width ``r`` of each expert (paper: not given; 64).
        combine: ``"softmax"`` (Soft MoE) or ``"linear"`` (La-SoftMoE, default).
        combine_norm: ``"none"`` or ``"instance"`` (default): normalise each slot's logits
            across the tokens before the combine.
        phi: kernel of the linear combine, ``"elu1"`` (default), ``"relu"`` or ``"learnable"``;
            ignored (and holds no parameters) with ``combine="softmax"``.
        scale_init: initial value of the learnable logit scale (Soft MoE: 1.0). Larger values
            make dispatch and combine sharper.
        activation: expert non-linearity, ``"gelu"`` or ``"quick_gelu"`` (CLIP's).
        dropout: dropout on the experts' hidden activations.
        zero_init_output: start each expert's output projection at zero (default True).
        norm_eps: epsilon of the L2 normalisations (1e-6) and of the instance norm (1e-5).
        phi_eps: the ``"relu"`` kernel's floor (1e-6).

    ``forward(x, *, return_weights=False)``: ``x`` (b, n, d) -> ``y`` (b, n, d), plus the
    dispatch weights (b, n, s; each slot sums to 1 over the tokens) and the combine weights
    (b, n, s; each token sums to 1 over the slots) when ``return_weights=True``. Slot ``j``
    belongs to expert ``j // slots_per_expert``.
    """

    def __init__(
        self,
        dim: int,
        *,
        num_experts: int = 4,  # paper
        slots_per_expert: int | None = None,  # None: see resolve_num_slots (paper 49)
        num_slots: int | None = None,
        num_tokens: int | None = None,
        expert_dim: int = 64,  # not given in the paper; small bottleneck
        combine: str = "linear",  # paper's "La"; "softmax" is plain Soft MoE
        combine_norm: str = "instance",  # reconstruction
        phi: str = "elu1",  # reconstruction
        scale_init: float = 1.0,  # Soft MoE
        activation: str = "gelu",
        dropout: float = 0.0,
        zero_init_output: bool = True,  # training starts from CLIP
        norm_eps: float = 1e-6,
        instance_norm_eps: float = 1e-5,
        phi_eps: float = 1e-6,
    ):
        super().__init__()
        owner = "LaSoftMoeLayer"
        _check_positive(owner, "dim", dim)
        _check_choice(owner, "combine", combine, COMBINE_MODES)
        _check_choice(owner, "combine_norm", combine_norm, COMBINE_NORMS)
        _check_choice(owner, "phi", phi, PHI_KINDS)
        if not (isinstance(scale_init, (int, float)) and math.isfinite(scale_init) and scale_init > 0):
            raise ValueError(f"{owner}: scale_init must be a positive finite number, got {scale_init!r}")
        s = resolve_num_slots(num_experts, slots_per_expert=slots_per_expert, num_slots=num_slots,
                              num_tokens=num_tokens)
        self.dim = dim
        self.num_experts = num_experts
        self.num_slots = s
        self.slots_per_expert = s // num_experts
        self.combine = combine
        self.combine_norm = combine_norm
        self.phi = phi
        self.scale_init = float(scale_init)
        self.norm_eps = norm_eps
        self.instance_norm_eps = instance_norm_eps

        # Phi: (d, s) slot parameters; logit scale: a learnable scalar
        self.slot_weight = nn.Parameter(torch.empty(dim, s))
        self.scale = nn.Parameter(torch.empty(()))
        self.experts = LaSoftMoeExperts(dim, num_experts=num_experts, expert_dim=expert_dim,
                                        activation=activation, dropout=dropout,
                                        zero_init_output=zero_init_output)
        # the kernel exists (and holds parameters) only where it is used
        self.feature_map = (LaSoftMoeFeatureMap(phi, num_slots=s, eps=phi_eps)
                            if combine == "linear" else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Phi ~ N(0, 1/d), scale = ``scale_init``, then the experts' and the kernel's own init."""
        nn.init.normal_(self.slot_weight, std=1.0 / math.sqrt(self.dim))
        nn.init.constant_(self.scale, self.scale_init)
        self.experts.reset_parameters()
        if self.feature_map is not None:
            self.feature_map.reset_parameters()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``L = scale * l2norm(x) . l2norm(Phi)``: ``x`` (b, n, d) -> (b, n, s), in [-scale, scale]."""
        phi_hat = F.normalize(self.slot_weight, dim=0, eps=self.norm_eps) * self.scale
        # (x / |x|) Phi^ == (x Phi^) / |x|: the division runs on (b, n, s) instead of (b, n, d)
        x_norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(self.norm_eps)
        return (x @ phi_hat) / x_norm

    def combine_weights(self, logits: torch.Tensor) -> torch.Tensor:
        """Combine weights C (b, n, s) from the logits; every token's row sums to 1."""
        if self.combine_norm == "instance":
            logits = instance_norm_over_tokens(logits, self.instance_norm_eps)
        if self.combine == "softmax":
            return logits.softmax(dim=-1)
        kernel = self.feature_map(logits)
        return kernel / kernel.sum(dim=-1, keepdim=True)

    def forward(self, x: torch.Tensor, *, return_weights: bool = False):
        """``x`` (b, n, d) -> ``y`` (b, n, d) [, dispatch (b, n, s), combine (b, n, s)]."""
        if x.dim() != 3 or x.shape[-1] != self.dim or x.shape[1] == 0:
            raise ValueError(f"LaSoftMoeLayer: x must be (b, n>0, {self.dim}), got {tuple(x.shape)}")
        b, _n, d = x.shape
        e, p = self.num_experts, self.slots_per_expert
        # logits and dispatch: softmax over the tokens for each slot
        logits = self.logits(x)
        dispatch = logits.softmax(dim=1)
        # slot inputs X~ = D^T X: (b, s, d) -> (b, e, p, d)
        slots = (dispatch.transpose(1, 2) @ x).reshape(b, e, p, d)
        # every expert on its own slots, batched
        slot_out = self.experts(slots).reshape(b, e * p, d)
        # combine: Y = C Y~
        combine = self.combine_weights(logits)
        y = combine @ slot_out
        if return_weights:
            return y, dispatch, combine
        return y

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_experts={self.num_experts}, slots_per_expert={self.slots_per_expert}, "
                f"combine={self.combine!r}, combine_norm={self.combine_norm!r}, phi={self.phi!r}")

"""The ST-MoE-style top-2 mixture of experts used throughout MMDA (fusion, U-DSA, classifier).

Routing, capacity and the two auxiliary losses follow ST-MoE ("ST-MoE: Designing Stable and
Transferable Sparse Expert Models", Zoph, Bello, Kumar, Du, Huang, Dean, Shazeer, Fedus;
arXiv 2202.08906), which builds on the top-2 gating of GShard and the load-balancing loss of
Switch Transformer. MMDA (arXiv 2505.09484) mixes two kinds of expert:

* GEGLU feed-forward experts: ``RMSNorm -> Linear(d, 2h) -> GEGLU -> Linear(h, d)``
  (ref d = 512, h = 1365 = int(512 * 4 * 2 / 3));
* constant experts: a learned ``d``-vector that is returned as is (no compute).

Routing (per token, router logits ``z = W x``, probabilities ``p = softmax(z)``)::

    (g1, e1), (g2, e2) = top-2 of p             w1 = g1 / (g1 + g2),  w2 = g2 / (g1 + g2)
    second expert used only if w2 >= threshold   (threshold 0.2)
    capacity C = min(n, max(min_expert_capacity, ceil(capacity_factor * n / E)))   per group
    out = w1 * expert_e1(x) + w2 * expert_e2(x)  (a term is dropped when the expert is full)

    balance loss = E * sum_e f_e * P_e     f_e: share of tokens whose top-1 is e, P_e: mean p_e
    router z-loss = mean over tokens of logsumexp(z)^2
    aux_loss = 1e-2 * balance loss + 1e-3 * router z-loss

Shape letters used in the comments:
    b  batch (routing groups)    n  tokens per group    d  width    E  experts (GEGLU + constant)
    F  GEGLU experts             C  constant experts    h  GEGLU hidden width

Leaf layers take explicit keyword arguments and never see a model config.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers_attention import MmdaRMSNorm

__all__ = ["MmdaGEGLU", "MmdaGEGLUExpert", "MmdaSTMoE", "balance_loss", "router_z_loss", "expert_capacity"]


def balance_loss(router_probs: torch.Tensor, top1_index: torch.Tensor) -> torch.Tensor:
    """Switch/ST-MoE load-balancing loss ``E * sum_e f_e * P_e`` over all tokens.

    Args:
        router_probs: (..., E) softmax router probabilities.
        top1_index: (...) index of each token's first expert (before capacity).

    Returns a scalar; 1 when both the routing and the probabilities are uniform, ``E`` when
    every token goes to one expert with probability 1.
    """
    num_experts = router_probs.shape[-1]
    if top1_index.shape != router_probs.shape[:-1]:
        raise ValueError(
            f"balance_loss: top1_index must have shape {tuple(router_probs.shape[:-1])}, "
            f"got {tuple(top1_index.shape)}")
    probs = router_probs.reshape(-1, num_experts)
    fraction = F.one_hot(top1_index.reshape(-1), num_experts).to(probs.dtype).mean(dim=0)
    return num_experts * (fraction * probs.mean(dim=0)).sum()


def router_z_loss(router_logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE router z-loss: the mean over tokens of ``logsumexp(logits)^2``."""
    return torch.logsumexp(router_logits.float(), dim=-1).pow(2).mean()


def expert_capacity(
    num_tokens: int, num_experts: int, capacity_factor: float, min_capacity: int = 4
) -> int:
    """Slots per expert and group: ``min(n, max(min_capacity, ceil(capacity_factor * n / E)))``."""
    if num_tokens < 0 or num_experts <= 0 or capacity_factor <= 0 or min_capacity < 0:
        raise ValueError(
            f"expert_capacity: need num_tokens >= 0, num_experts > 0, capacity_factor > 0, "
            f"min_capacity >= 0; "
            f"got {num_tokens}, {num_experts}, {capacity_factor}, {min_capacity}")
    return min(num_tokens, max(min_capacity, math.ceil(capacity_factor * num_tokens / num_experts)))


class MmdaGEGLU(nn.Module):
    """GEGLU (Shazeer 2020): split the last dim in two halves ``(a, g)`` and return ``a * GELU(g)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 2:
            raise ValueError(f"MmdaGEGLU: last dim must be even, got shape {tuple(x.shape)}")
        a, g = x.chunk(2, dim=-1)
        return a * F.gelu(g)


class MmdaGEGLUExpert(nn.Module):
    """One feed-forward expert: ``RMSNorm(d) -> Linear(d, 2h) -> GEGLU -> Linear(h, d)``."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        if dim <= 0 or hidden_dim <= 0:
            raise ValueError(f"MmdaGEGLUExpert: dim and hidden_dim must be positive, got {dim}, {hidden_dim}")
        self.norm = MmdaRMSNorm(dim)
        self.proj_in = nn.Linear(dim, 2 * hidden_dim)
        self.act = MmdaGEGLU()
        self.proj_out = nn.Linear(hidden_dim, dim)

    def reset_parameters(self) -> None:
        self.norm.reset_parameters()
        self.proj_in.reset_parameters()
        self.proj_out.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_out(self.act(self.proj_in(self.norm(x))))


class MmdaSTMoE(nn.Module):
    """ST-MoE-style top-2 mixture of GEGLU experts and constant experts (Zoph et al., ST-MoE).

    Input ``x`` is (b, n, dim): the ``b`` rows are routing groups and capacity is counted per
    group over its ``n`` tokens, in token order, first choices before second choices (GShard's
    priority). Returns ``(output, aux_loss)`` with ``output`` (b, n, dim); a token whose
    choices were all dropped gets a zero output (the caller's residual carries it).

    Experts ``0 .. num_experts-1`` are GEGLU experts, experts ``num_experts ..`` are the
    constant experts; all ``E`` share the router and the capacity rule.

    Our reading of the second-expert policy: ST-MoE keeps the second expert only when its
    gate is large enough; we apply the threshold deterministically to the *renormalised*
    top-2 weight ``w2 = g2 / (g1 + g2)`` (so 0.2 means the second expert carries at least a
    fifth of the token), in training and in evaluation alike. The weights are not
    renormalised again when the second expert is skipped or a slot is dropped: the first
    expert keeps ``w1``.

    Args:
        dim: width (ref 512).
        num_experts: GEGLU feed-forward experts (ref 4).
        num_constant_experts: constant experts (ref 3).
        expert_hidden_dim: GEGLU hidden width h; default ``int(dim * 4 * 2 / 3)`` (ref 1365).
        threshold: minimum renormalised weight of the second expert (ref 0.2).
        capacity_factor_train: capacity factor in training mode (ref 1.25).
        capacity_factor_eval: capacity factor in eval mode (ref 2.0).
        min_expert_capacity: floor on the slots per expert and group (4; ours, after the
            usual ST-MoE implementations), never above the group's token count.
        balance_loss_coef: weight of the balance loss in ``aux_loss`` (ref 1e-2).
        router_z_loss_coef: weight of the router z-loss in ``aux_loss`` (ref 1e-3).
        constant_init_std: std of the constant experts' vectors at initialisation (ours 0.02).
    """

    def __init__(
        self,
        dim: int,
        *,
        num_experts: int = 4,  # ref: GEGLU experts
        num_constant_experts: int = 3,  # ref
        expert_hidden_dim: int | None = None,  # ref: int(512 * 4 * 2 / 3) = 1365
        threshold: float = 0.2,  # ref: second-expert threshold
        capacity_factor_train: float = 1.25,  # ref
        capacity_factor_eval: float = 2.0,  # ref
        min_expert_capacity: int = 4,  # ours
        balance_loss_coef: float = 1e-2,  # ref
        router_z_loss_coef: float = 1e-3,  # ref
        constant_init_std: float = 0.02,  # ours
    ):
        super().__init__()
        if dim <= 0:
            raise ValueError(f"MmdaSTMoE: dim must be positive, got {dim}")
        if num_experts < 0 or num_constant_experts < 0:
            raise ValueError(
                f"MmdaSTMoE: num_experts and num_constant_experts must be >= 0, "
                f"got {num_experts}, {num_constant_experts}")
        if num_experts + num_constant_experts < 2:
            raise ValueError(
                f"MmdaSTMoE: top-2 routing needs at least 2 experts in all, got num_experts={num_experts} "
                f"+ num_constant_experts={num_constant_experts}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"MmdaSTMoE: threshold must be in [0, 1], got {threshold}")
        for name, value in (("capacity_factor_train", capacity_factor_train),
                            ("capacity_factor_eval", capacity_factor_eval)):
            if value <= 0:
                raise ValueError(f"MmdaSTMoE: {name} must be positive, got {value}")
        if min_expert_capacity < 0:
            raise ValueError(f"MmdaSTMoE: min_expert_capacity must be >= 0, got {min_expert_capacity}")
        hidden = int(dim * 4 * 2 / 3) if expert_hidden_dim is None else expert_hidden_dim
        if hidden <= 0:
            raise ValueError(f"MmdaSTMoE: expert_hidden_dim must be positive, got {hidden}")
        self.dim = dim
        self.num_experts = num_experts
        self.num_constant_experts = num_constant_experts
        self.total_experts = num_experts + num_constant_experts
        self.expert_hidden_dim = hidden
        self.threshold = threshold
        self.capacity_factor_train = capacity_factor_train
        self.capacity_factor_eval = capacity_factor_eval
        self.min_expert_capacity = min_expert_capacity
        self.balance_loss_coef = balance_loss_coef
        self.router_z_loss_coef = router_z_loss_coef
        self.constant_init_std = constant_init_std

        self.router = nn.Linear(dim, self.total_experts, bias=False)
        self.experts = nn.ModuleList(MmdaGEGLUExpert(dim, hidden) for _ in range(num_experts))
        self.constant_experts = nn.Parameter(torch.empty(num_constant_experts, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Router and experts: PyTorch's Linear default; constant vectors N(0, constant_init_std)."""
        self.router.reset_parameters()
        for expert in self.experts:
            expert.reset_parameters()
        nn.init.normal_(self.constant_experts, std=self.constant_init_std)

    @property
    def capacity_factor(self) -> float:
        return self.capacity_factor_train if self.training else self.capacity_factor_eval

    def route(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Router decisions for ``x`` (b, n, dim).

        Returns a dict with ``logits`` and ``probs`` (b, n, E, float32), ``top_index`` (b, n, 2),
        ``top_weight`` (b, n, 2; renormalised), ``combine`` (b, n, E; the weight each token
        gives each expert after threshold and capacity, zero where not dispatched),
        ``dispatch`` (b, n, E bool), ``capacity`` (int), ``dropped`` (count of token-expert
        assignments lost to capacity), ``balance_loss`` and ``z_loss`` (scalars).
        """
        b, n, _ = x.shape
        num_e = self.total_experts
        # router in float32 (ST-MoE: selective precision for the router)
        logits = self.router(x).float()  # (b, n, E)
        probs = logits.softmax(dim=-1)
        top_p, top_i = probs.topk(2, dim=-1)  # (b, n, 2)
        top_w = top_p / top_p.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(top_p.dtype).tiny)

        # assignments before capacity: (b, n, E)
        mask_1 = F.one_hot(top_i[..., 0], num_e).to(probs.dtype)
        mask_2 = F.one_hot(top_i[..., 1], num_e).to(probs.dtype)
        mask_2 = mask_2 * (top_w[..., 1:2] >= self.threshold).to(probs.dtype)
        wanted = mask_1.sum() + mask_2.sum()

        # capacity per group and expert, first choices first, in token order
        capacity = expert_capacity(n, num_e, self.capacity_factor, self.min_expert_capacity)
        pos_1 = mask_1.cumsum(dim=1) - 1
        mask_1 = mask_1 * (pos_1 < capacity).to(probs.dtype)
        pos_2 = mask_2.cumsum(dim=1) - 1 + mask_1.sum(dim=1, keepdim=True)
        mask_2 = mask_2 * (pos_2 < capacity).to(probs.dtype)
        combine = mask_1 * top_w[..., 0:1] + mask_2 * top_w[..., 1:2]
        dispatch = (mask_1 + mask_2) > 0

        return {
            "logits": logits,
            "probs": probs,
            "top_index": top_i,
            "top_weight": top_w,
            "combine": combine,
            "dispatch": dispatch,
            "capacity": capacity,
            "dropped": (wanted - dispatch.sum()).long(),
            "balance_loss": balance_loss(probs, top_i[..., 0]),
            "z_loss": router_z_loss(logits),
        }

    def forward(self, x: torch.Tensor, *, return_routing: bool = False):
        """``x`` (b, n, dim) -> ``(output (b, n, dim), aux_loss)`` [+ the routing dict of :meth:`route`]."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"MmdaSTMoE: x must be (b, n, {self.dim}), got {tuple(x.shape)}")
        b, n, d = x.shape
        routing = self.route(x)
        combine = routing["combine"].to(x.dtype).reshape(b * n, self.total_experts)
        tokens = x.reshape(b * n, d)
        out = torch.zeros_like(tokens)
        # GEGLU experts: run each on the tokens it received
        for e, expert in enumerate(self.experts):
            idx = combine[:, e].nonzero(as_tuple=True)[0]
            if idx.numel():
                out = out.index_add(0, idx, expert(tokens[idx]) * combine[idx, e].unsqueeze(-1))
        # constant experts: weighted sum of their vectors, no compute
        if self.num_constant_experts:
            out = out + combine[:, self.num_experts:] @ self.constant_experts.to(x.dtype)
        aux_loss = (self.balance_loss_coef * routing["balance_loss"]
                    + self.router_z_loss_coef * routing["z_loss"])
        out = out.view(b, n, d)
        if return_routing:
            return out, aux_loss, routing
        return out, aux_loss

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_experts={self.num_experts}, "
                f"num_constant_experts={self.num_constant_experts}, "
                f"threshold={self.threshold}, capacity_factor=({self.capacity_factor_train}, "
                f"{self.capacity_factor_eval})")

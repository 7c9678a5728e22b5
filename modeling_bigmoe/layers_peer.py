"""Product-key experts with an isolated gate, and the Isolated Gating Mechanism Adapter (IGMA).

BIG-MoE: "Bypass Isolated Gating MoE for Generalized Multimodal Face Anti-Spoofing"
(Ma, Yu, Lin, Xie, Shen; ICASSP 2025, arXiv 2412.18065). The expert layer is PEER
("Mixture of A Million Experts", He 2024, arXiv 2407.04153) with one change that BIG-MoE
makes: the router's queries are computed from a *separate* gate input, so that the gate
never sees the raw token stream.

Shape letters used in the comments:
    b  batch             n  tokens (spatial locations)     d  expert input/output dim
    h  heads             k  experts kept per head          p  product-key half (2)
    K  sub-keys per half (sqrt of the expert count)        e  key dim
    m  modalities        N  patch tokens per modality      r  bottleneck dim

Leaf layers take explicit keyword arguments and never see a model config.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BigMoeRMSNorm", "BigMoePEER", "BigMoeIsolatedGateAdapter", "quick_gelu", "serial_small_ops"]


_QUICK_GELU_SCALE = 1.702
# IGMA's (b, m*N, hidden) projections run on one thread up to this many input elements (ViT-B/16 at batch 1:
# 588 x 768 = 451 584); measured on 2 cores, a second thread only pays off from batch 2 on
_SERIAL_MAX_NUMEL = 1 << 19


class _QuickGELUFunction(torch.autograd.Function):
    """QuickGELU that saves only its input for backward (autograd's chain keeps ``x`` and ``sigmoid(1.702 x)``,
    two tensors; this recomputes the sigmoid). Forward and gradient are bit-identical to the chain's."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sigmoid(1.702 * x).mul_(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(1.702 * x)
        # the chain's terms: d(x*s)/dx = s, and through the sigmoid: (grad*x) * s * (1-s) * 1.702
        return grad * s + torch.ops.aten.sigmoid_backward(grad * x, s) * 1.702


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """CLIP's QuickGELU: x * sigmoid(1.702 x).

    Without autograd it runs in one buffer (``sigmoid_``, ``mul_``); with autograd it saves only ``x`` for the
    backward. Values are bit-identical to ``x * torch.sigmoid(1.702 * x)`` either way.
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return _QuickGELUFunction.apply(x)
    return (1.702 * x).sigmoid_().mul_(x)


@contextlib.contextmanager
def serial_small_ops(enabled: bool = True) -> Iterator[None]:
    """Run a stretch of small CPU ops on the calling thread only (``torch.set_num_threads(1)``, restored after).

    The adapters are many ops on tensors of a few thousand to a few hundred thousand elements; with several intra-op
    threads each of them opens a parallel region (tiny GEMMs, convolutions, GELU and softmax split work far below the
    size where a second thread pays off), and waking the sleeping workers costs ~40-80 us per op, more than the op.
    Only the scheduling changes (on the reference model the logits came out bit-identical). No-op when ``enabled`` is
    false, when only one thread is in use, or off the main thread: the thread count is process-wide state, so two
    threads (a web server's workers, say) saving and restoring it around each other could leave it at 1; on the
    main thread the count is restored on exit, errors included.
    """
    threads = torch.get_num_threads()
    if not enabled or threads <= 1 or threading.current_thread() is not threading.main_thread():
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _cached_from_weights(owner: nn.Module, name: str, weights: tuple[torch.Tensor, ...], build):
    """``build()`` computed once per state of ``weights`` and kept on ``owner`` (attribute ``name``, not state).

    For the inference path only (the caller checks that no gradient can reach ``weights``): the value is
    rebuilt when any weight is replaced or changes dtype, device or version (in-place updates such as an
    optimizer step or ``load_state_dict`` bump ``_version``). It is built outside inference mode and autocast so
    that it may also serve a later no-grad or autocast forward. Weights without a version counter (plain tensors
    made in inference mode) are never cached.
    """
    try:
        key = tuple((w._version, w.data_ptr(), w.dtype, w.device) for w in weights)
    except RuntimeError:
        # a plain tensor made inside torch.inference_mode has no version counter, so a cache could not notice an
        # in-place update: build the value afresh, uncached
        owner.__dict__.pop(name, None)
        with torch.no_grad(), torch.autocast(weights[0].device.type, enabled=False):
            return build()
    cached = owner.__dict__.get(name)
    if cached is not None and cached[1] == key and all(a is b for a, b in zip(cached[0], weights)):
        return cached[2]
    with torch.inference_mode(False), torch.no_grad(), torch.autocast(weights[0].device.type, enabled=False):
        value = build()
    owner.__dict__[name] = (weights, key, value)
    return value


class BigMoeRMSNorm(nn.Module):
    """RMSNorm as in PEER: ``F.normalize(x) * weight * sqrt(dim)`` (``weight`` starts at 1)."""

    def __init__(self, dim: int, eps: float = 1e-12):
        super().__init__()
        if dim <= 0:
            raise ValueError(f"BigMoeRMSNorm: dim must be positive, got {dim}")
        self.dim = dim
        self.eps = eps
        self.scale = math.sqrt(dim)
        self.weight = nn.Parameter(torch.ones(dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1, eps=self.eps) * (self.weight * self.scale)


class BigMoePEER(nn.Module):
    """Product-key experts (PEER) whose router reads a separate gate input.

    Every expert is a single hidden neuron: a down vector ``u_e`` and an up vector ``v_e``
    (rows of two ``nn.Embedding(num_experts, dim)`` tables). For each token and head the
    router scores the two halves of its query against ``K = sqrt(num_experts)`` sub-keys,
    keeps the ``product_key_topk`` best of each half, forms the ``topk**2`` candidate experts
    (score ``s_x + s_y``, index ``K * i_x + i_y``) and keeps ``experts_per_head`` of them::

        out = sum_h sum_k softmax_k(score) * GELU(u_e . x_hat) * v_e

    Args:
        dim: expert input/output size (BIG-MoE: 3 modalities x bottleneck 8 = 24).
        gate_dim: size of the gate input the queries are computed from (BIG-MoE: 16).
        heads: routing heads; their outputs are summed (ref 2).
        num_experts: a perfect square (ref 1600 = 40^2).
        experts_per_head: experts kept per head and token (ref 2).
        product_key_topk: sub-keys kept per half before combining (ref 2); must be
            ``>= experts_per_head`` for the product-key search to be exact.
        key_dim: size of each query half and sub-key (ref 8 = gate_dim / 2).
        pre_rmsnorm: normalise ``x`` and the gate with two separate RMSNorms (ref True).
        dropout: dropout on the weighted expert activations (ref 0).
    """

    def __init__(
        self,
        dim: int,
        *,
        gate_dim: int,
        heads: int = 2,  # ref
        num_experts: int = 1600,  # ref: 40^2
        experts_per_head: int = 2,  # ref
        product_key_topk: int = 2,  # ref
        key_dim: int = 8,  # ref: gate_dim / 2
        pre_rmsnorm: bool = True,  # ref
        dropout: float = 0.0,  # ref
    ):
        super().__init__()
        num_keys = math.isqrt(num_experts)
        if num_experts <= 0 or num_keys * num_keys != num_experts:
            raise ValueError(f"BigMoePEER: num_experts must be a perfect square, got {num_experts}")
        for name, value in (("dim", dim), ("gate_dim", gate_dim), ("heads", heads), ("key_dim", key_dim),
                            ("experts_per_head", experts_per_head), ("product_key_topk", product_key_topk)):
            if value <= 0:
                raise ValueError(f"BigMoePEER: {name} must be positive, got {value}")
        if product_key_topk > num_keys:
            raise ValueError(
                f"BigMoePEER: product_key_topk ({product_key_topk}) exceeds the sub-keys per half ({num_keys})")
        if experts_per_head > product_key_topk ** 2:
            raise ValueError(
                f"BigMoePEER: experts_per_head ({experts_per_head}) exceeds the candidate count "
                f"product_key_topk**2 ({product_key_topk ** 2})")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"BigMoePEER: dropout must be in [0, 1], got {dropout}")
        self.dim = dim
        self.gate_dim = gate_dim
        self.heads = heads
        self.num_experts = num_experts
        self.num_keys = num_keys
        self.experts_per_head = experts_per_head
        self.product_key_topk = product_key_topk
        self.key_dim = key_dim

        self.norm_x = BigMoeRMSNorm(dim) if pre_rmsnorm else nn.Identity()
        self.norm_gate = BigMoeRMSNorm(gate_dim) if pre_rmsnorm else nn.Identity()
        self.to_queries = nn.Linear(gate_dim, 2 * heads * key_dim, bias=False)
        self.keys = nn.Parameter(torch.empty(heads, num_keys, 2, key_dim))
        self.weight_down = nn.Embedding(num_experts, dim)
        self.weight_up = nn.Embedding(num_experts, dim)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self, expert_init_std: float = 1.0) -> None:
        """Reference initialisation: keys N(0, 0.02), expert tables N(0, 1), norms 1, Linear default."""
        nn.init.normal_(self.keys, std=0.02)
        nn.init.normal_(self.weight_down.weight, std=expert_init_std)
        nn.init.normal_(self.weight_up.weight, std=expert_init_std)
        self.to_queries.reset_parameters()
        for norm in (self.norm_x, self.norm_gate):
            if isinstance(norm, BigMoeRMSNorm):
                norm.reset_parameters()

    def route(self, gate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Product-key top-k: ``gate`` (b, n, gate_dim) -> (scores, indices), each (b, n, h, k)."""
        b, n, _ = gate.shape
        # queries: (b, n, p, h, e) -> (p, b, n, h, e)
        queries = self.to_queries(self.norm_gate(gate)).view(b, n, 2, self.heads, self.key_dim)
        queries = queries.permute(2, 0, 1, 3, 4)
        # similarity of each half against its sub-keys: (p, b, n, h, K)
        sim = torch.einsum("pbnhe,hKpe->pbnhK", queries, self.keys)
        scores_x, idx_x = sim[0].topk(self.product_key_topk, dim=-1)
        scores_y, idx_y = sim[1].topk(self.product_key_topk, dim=-1)
        # candidate experts: (b, n, h, topk * topk)
        all_scores = (scores_x.unsqueeze(-1) + scores_y.unsqueeze(-2)).flatten(-2)
        all_indices = (idx_x.unsqueeze(-1) * self.num_keys + idx_y.unsqueeze(-2)).flatten(-2)
        scores, pick = all_scores.topk(self.experts_per_head, dim=-1)
        indices = all_indices.gather(-1, pick)
        return scores, indices

    def forward(self, x: torch.Tensor, gate: torch.Tensor, *, return_routing: bool = False):
        """``x`` (b, n, dim) and ``gate`` (b, n, gate_dim) -> (b, n, dim).

        With ``return_routing=True`` also returns the chosen expert ``indices`` (b, n, h, k)
        and their routing ``weights`` (b, n, h, k; softmax over k, so each head sums to 1).
        """
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"BigMoePEER: x must be (b, n, {self.dim}), got {tuple(x.shape)}")
        if gate.shape[:-1] != x.shape[:-1] or gate.shape[-1] != self.gate_dim:
            raise ValueError(
                f"BigMoePEER: gate must be {tuple(x.shape[:-1]) + (self.gate_dim,)}, got {tuple(gate.shape)}")
        scores, indices = self.route(gate)
        weights = scores.softmax(dim=-1)
        b, n, d = x.shape
        hk = indices.shape[-2] * indices.shape[-1]
        # gather the experts' vectors: (b*n, h*k, d)
        down = self.weight_down(indices).view(b * n, hk, d)
        up = self.weight_up(indices).view(b * n, hk, d)
        # per token: (h*k, d) @ (d, 1) -> (h*k,) activations; (1, h*k) @ (h*k, d) -> (d,)
        hidden = torch.bmm(down, self.norm_x(x).reshape(b * n, d, 1)).view(b, n, *indices.shape[-2:])
        hidden = self.dropout(F.gelu(hidden) * weights)
        out = torch.bmm(hidden.view(b * n, 1, hk), up).view(b, n, d)
        if return_routing:
            return out, indices, weights
        return out


class BigMoeIsolatedGateAdapter(nn.Module):
    """IGMA: a parallel adapter beside a block's MLP, routed by an isolated gate.

    Input: the block's post-LN2 *patch* tokens (CLS stripped by the caller) ordered
    modality-major, ``[mod0 N tokens; mod1 N; mod2 N]``, and the block's prompt tokens.

    1. ``C = QuickGELU(down(x))`` per token, regrouped per location: (b, N, m*r).
    2. Isolated gate ``G = [QuickGELU(gate_fuse(C)); QuickGELU(gate_prompt(P))]``: (b, N, 2r).
       The prompts reach only the gate, never the experts or the stream.
    3. ``C' = PEER(C, gate=G)``: (b, N, m*r).
    4. Back per modality, ``delta = QuickGELU(up(dropout(C')))`` (QuickGELU after the
       up-projection, as the reference): (b, m*N, hidden).

    Returns ``(delta, G)`` (plus the routing when asked); ``G`` feeds the prompt bypass.
    """

    def __init__(
        self,
        hidden_size: int,
        *,
        num_modalities: int = 3,
        bottleneck_dim: int = 8,  # ref r
        prompt_dim: int = 64,  # ref
        num_experts: int = 1600,  # ref
        heads: int = 2,  # ref
        experts_per_head: int = 2,  # ref
        product_key_topk: int = 2,  # ref
        key_dim: int = 8,  # ref
        moe_dropout: float = 0.0,  # ref
        dropout: float = 0.1,  # ref
    ):
        super().__init__()
        for name, value in (("hidden_size", hidden_size), ("num_modalities", num_modalities),
                            ("bottleneck_dim", bottleneck_dim), ("prompt_dim", prompt_dim)):
            if value <= 0:
                raise ValueError(f"BigMoeIsolatedGateAdapter: {name} must be positive, got {value}")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"BigMoeIsolatedGateAdapter: dropout must be in [0, 1], got {dropout}")
        self.hidden_size = hidden_size
        self.num_modalities = num_modalities
        self.bottleneck_dim = bottleneck_dim
        self.prompt_dim = prompt_dim
        r, m = bottleneck_dim, num_modalities
        self.down = nn.Linear(hidden_size, r)
        self.gate_fuse = nn.Linear(m * r, r)
        self.gate_prompt = nn.Linear(prompt_dim, r)
        self.peer = BigMoePEER(
            m * r,
            gate_dim=2 * r,
            heads=heads,
            num_experts=num_experts,
            experts_per_head=experts_per_head,
            product_key_topk=product_key_topk,
            key_dim=key_dim,
            dropout=moe_dropout,
        )
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(r, hidden_size)

    @property
    def gate_dim(self) -> int:
        return 2 * self.bottleneck_dim

    def reset_parameters(self, *, zero_up: bool = False, expert_init_std: float = 1.0) -> None:
        for linear in (self.down, self.gate_fuse, self.gate_prompt, self.up):
            linear.reset_parameters()
        if zero_up:
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)
        self.peer.reset_parameters(expert_init_std)

    def forward(self, hidden_states: torch.Tensor, prompt_tokens: torch.Tensor, *, return_routing: bool = False,
                accumulate_into: torch.Tensor | None = None):
        """``hidden_states`` (b, m*N, hidden), ``prompt_tokens`` (b, N, prompt_dim) -> (delta, gate[, idx, w]).

        With ``accumulate_into`` (a tensor shaped like ``hidden_states``, e.g. the stream's patch rows) the delta is
        added into it in place and ``accumulate_into`` is returned in the delta's place. In float32 without autograd
        or autocast this runs as ``silu_(c @ (1.702 W_up)^T + 1.702 b_up)`` added with ``alpha = 1/1.702`` (the scaled
        weights are cached): the same QuickGELU (``x sigmoid(1.702 x) = silu(1.702 x) / 1.702``, equal to float
        rounding) without the temporary buffers of the delta.
        """
        if accumulate_into is not None and accumulate_into.shape != hidden_states.shape:
            raise ValueError(
                f"BigMoeIsolatedGateAdapter: accumulate_into must have the shape of hidden_states "
                f"{tuple(hidden_states.shape)}, got {tuple(accumulate_into.shape)}")
        b, mn, hid = hidden_states.shape
        m = self.num_modalities
        if hid != self.hidden_size or mn % m:
            raise ValueError(
                f"BigMoeIsolatedGateAdapter: hidden_states must be (b, {m}*N, {self.hidden_size}), "
                f"got {tuple(hidden_states.shape)}")
        n = mn // m
        if prompt_tokens.shape != (b, n, self.prompt_dim):
            raise ValueError(
                f"BigMoeIsolatedGateAdapter: prompt_tokens must be {(b, n, self.prompt_dim)}, "
                f"got {tuple(prompt_tokens.shape)}")
        # the down/up projections touch (b, m*N, hidden): on one thread while that is small; the rest (tensors of
        # b*N rows of at most prompt_dim) always on one thread
        with serial_small_ops(hidden_states.numel() <= _SERIAL_MAX_NUMEL):
            return self._forward(hidden_states, prompt_tokens, return_routing, accumulate_into)

    def _forward(self, hidden_states, prompt_tokens, return_routing, accumulate_into):
        b, mn, _ = hidden_states.shape
        m, r = self.num_modalities, self.bottleneck_dim
        n = mn // m
        # expert input C: per location, the m modalities' r-vectors side by side: (b, N, m*r)
        c = quick_gelu(self.down(hidden_states))
        with serial_small_ops():
            c = c.view(b, m, n, r).transpose(1, 2).reshape(b, n, m * r)
            # isolated gate: (b, N, 2r)
            gate = quick_gelu(torch.cat([self.gate_fuse(c), self.gate_prompt(prompt_tokens)], dim=-1))
            routed = self.peer(c, gate, return_routing=return_routing)
            c_out = routed[0] if return_routing else routed
            # back to the stream, modality-major: (b, m*N, r) -> (b, m*N, hidden)
            c_out = self.dropout(c_out.view(b, n, m, r).transpose(1, 2).reshape(b, m * n, r))
        if accumulate_into is None:
            delta = quick_gelu(self.up(c_out))
        elif (_needs_grad(c_out, accumulate_into, self.up.weight, self.up.bias) or c_out.dtype != torch.float32
              or torch.is_autocast_enabled(c_out.device.type)):
            delta = accumulate_into.add_(quick_gelu(self.up(c_out)))
        else:
            weight, bias = _cached_from_weights(self, "_scaled_up_cache", (self.up.weight, self.up.bias),
                                                self._build_scaled_up)
            scaled = F.silu(F.linear(c_out, weight, bias), inplace=True)
            delta = accumulate_into.add_(scaled, alpha=1.0 / _QUICK_GELU_SCALE)
        if return_routing:
            return delta, gate, routed[1], routed[2]
        return delta, gate

    def _build_scaled_up(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(1.702 W_up, 1.702 b_up)`` for the inference path of :meth:`forward` with ``accumulate_into``."""
        return self.up.weight * _QUICK_GELU_SCALE, self.up.bias * _QUICK_GELU_SCALE

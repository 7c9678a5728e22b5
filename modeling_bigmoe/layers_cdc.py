"""Central-difference convolutions, the Convolutional Prompt Bypass (CPB) and the prompt generator.

BIG-MoE: "Bypass Isolated Gating MoE for Generalized Multimodal Face Anti-Spoofing"
(Ma, Yu, Lin, Xie, Shen; ICASSP 2025, arXiv 2412.18065). Central-difference convolution
after Yu et al., "Searching Central Difference Convolutional Networks for Face
Anti-Spoofing" (CVPR 2020); ECA after Wang et al., "ECA-Net" (CVPR 2020).

Shape letters: b batch, c channels, g grid side (image_size // patch_size), N = g*g tokens,
m modalities, H/W image size, pd prompt dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers_peer import _cached_from_weights, _needs_grad, quick_gelu

__all__ = [
    "tokens_to_map",
    "map_to_tokens",
    "CentralDifferenceConv2d",
    "BigMoeECA",
    "BigMoeConvPromptBypass",
    "BigMoePromptGenerator",
]


def tokens_to_map(tokens: torch.Tensor, grid: int, *, legacy_transpose: bool = False) -> torch.Tensor:
    """(b, N, c) row-major tokens -> (b, c, g, g) map; the exact inverse of :func:`map_to_tokens`.

    ``legacy_transpose=True`` reproduces the reference code, whose reshape swaps the grid's
    rows and columns, so each token -> map -> token round trip transposes the 14x14 grid.
    """
    b, n, c = tokens.shape
    if n != grid * grid:
        raise ValueError(f"tokens_to_map: expected {grid}*{grid}={grid * grid} tokens, got shape {tuple(tokens.shape)}")
    fmap = tokens.transpose(1, 2).reshape(b, c, grid, grid)
    return fmap.transpose(2, 3) if legacy_transpose else fmap


def map_to_tokens(fmap: torch.Tensor) -> torch.Tensor:
    """(b, c, g, g) map -> (b, g*g, c) tokens, row-major."""
    if fmap.dim() != 4:
        raise ValueError(f"map_to_tokens: expected a (b, c, g, g) map, got shape {tuple(fmap.shape)}")
    return fmap.flatten(2).transpose(1, 2)


def _small_map_conv2d(x: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
    """``F.conv2d(x, weight, padding=padding)`` (stride 1, no bias) for the CPB's small prompt maps.

    ATen runs a float32 batch-1 convolution whose input has at most 20 480 elements (a 14x14 map of <= 104
    channels) through its generic im2col path, about twice as slow here as oneDNN; without autograd such a call goes
    to oneDNN directly (same convolution, summation order of oneDNN). Everything else (autograd, autocast, other
    dtypes, devices or sizes) is ``F.conv2d``.
    """
    if (x.shape[0] == 1 and x.numel() <= 20480 and x.dtype == torch.float32 and x.device.type == "cpu"
            and weight.dtype == torch.float32 and not _needs_grad(x, weight) and not torch.is_autocast_enabled("cpu")
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return torch.mkldnn_convolution(x.contiguous(), weight.contiguous(), None, [padding, padding], [1, 1],
                                        [1, 1], 1)
    return F.conv2d(x, weight, padding=padding)


class CentralDifferenceConv2d(nn.Module):
    """Central-difference convolution: ``y = conv(x, W) - theta * conv(x, sum_spatial(W))``.

    The second term is a 1x1 convolution (padding 0) with the kernel summed over its taps; it
    lines up with the first only when the padding centres the kernel (odd kernel,
    ``padding == kernel_size // 2``), which is therefore required. Both terms are folded into
    one convolution whose centre tap is ``W_c - theta * sum(W)``: one kernel launch instead
    of two, same result. ``theta = 0`` is a plain convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        theta: float = 0.7,  # ref
    ):
        super().__init__()
        if in_channels <= 0 or out_channels <= 0:
            raise ValueError(f"CentralDifferenceConv2d: channels must be positive, got {in_channels}->{out_channels}")
        if kernel_size <= 0 or stride <= 0 or padding < 0:
            raise ValueError(
                f"CentralDifferenceConv2d: bad geometry kernel_size={kernel_size} stride={stride} padding={padding}")
        if kernel_size % 2 == 0 or padding != kernel_size // 2:
            raise ValueError(
                f"CentralDifferenceConv2d: needs an odd kernel_size and padding == kernel_size // 2 so that the "
                f"central-difference term lines up, got kernel_size={kernel_size} padding={padding}")
        if not 0.0 <= theta <= 1.0:
            raise ValueError(f"CentralDifferenceConv2d: theta must be in [0, 1], got {theta}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.theta = float(theta)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's Conv2d default (Kaiming-uniform, a = sqrt(5))."""
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"CentralDifferenceConv2d: expected (b, {self.in_channels}, H, W), got {tuple(x.shape)}")
        return F.conv2d(x, self.folded_weight(), stride=self.stride, padding=self.padding)

    def folded_weight(self) -> torch.Tensor:
        """The single kernel ``W - theta * pad(sum_spatial(W))`` (``W`` itself for ``theta = 0``).

        When no gradient can reach ``W`` (inference, or a frozen ``W``) the folded kernel is cached and reused
        until ``W`` changes (a new tensor, dtype or device, or an in-place update, which bumps ``W._version``).
        """
        weight = self.weight
        if self.theta == 0.0:
            return weight
        if _needs_grad(weight):
            return self._fold(weight)
        return _cached_from_weights(self, "_folded_cache", (weight,), lambda: self._fold(weight))

    def _fold(self, weight: torch.Tensor) -> torch.Tensor:
        c = self.kernel_size // 2
        kernel_sum = weight.sum(dim=(2, 3), keepdim=True)
        return weight - self.theta * F.pad(kernel_sum, (c, c, c, c))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, theta={self.theta}")


class BigMoeECA(nn.Module):
    """Efficient channel attention: global average pool, Conv1d over channels, sigmoid, rescale."""

    def __init__(self, kernel_size: int = 3):
        super().__init__()
        if kernel_size <= 0 or kernel_size % 2 == 0:
            raise ValueError(f"BigMoeECA: kernel_size must be a positive odd number, got {kernel_size}")
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)

    def reset_parameters(self) -> None:
        self.conv.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        attn = self.conv(x.mean(dim=(2, 3)).view(b, 1, c)).sigmoid().view(b, c, 1, 1)
        return x * attn


class BigMoeConvPromptBypass(nn.Module):
    """CPB: turns a block's gate features and prompt into the next block's prompt.

    ``g = QuickGELU(CDC(gate_map))``, ``p = QuickGELU(CDC(prompt_map))``,
    ``P_next = QuickGELU(CDC(Dropout(ECA([p; g]))))``. Its output reaches only the next
    block's gate: local central-difference cues steer the routing, never the stream.
    """

    def __init__(
        self,
        *,
        gate_dim: int = 16,  # ref: 2 * bottleneck 8
        prompt_dim: int = 64,  # ref
        theta: float = 0.7,  # ref
        eca_kernel_size: int = 3,  # ref
        dropout: float = 0.1,  # ref
    ):
        super().__init__()
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"BigMoeConvPromptBypass: dropout must be in [0, 1], got {dropout}")
        self.gate_dim = gate_dim
        self.prompt_dim = prompt_dim
        self.gate_conv = CentralDifferenceConv2d(gate_dim, prompt_dim, theta=theta)
        self.prompt_conv = CentralDifferenceConv2d(prompt_dim, prompt_dim, theta=theta)
        self.eca = BigMoeECA(eca_kernel_size)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = CentralDifferenceConv2d(2 * prompt_dim, prompt_dim, theta=theta)

    def reset_parameters(self) -> None:
        for module in (self.gate_conv, self.prompt_conv, self.eca, self.out_conv):
            module.reset_parameters()

    def forward(self, gate_map: torch.Tensor, prompt_map: torch.Tensor) -> torch.Tensor:
        """(b, gate_dim, g, g), (b, prompt_dim, g, g) -> next prompt (b, prompt_dim, g, g)."""
        if gate_map.shape[0] != prompt_map.shape[0] or gate_map.shape[2:] != prompt_map.shape[2:]:
            raise ValueError(
                f"BigMoeConvPromptBypass: gate_map {tuple(gate_map.shape)} and prompt_map "
                f"{tuple(prompt_map.shape)} differ in batch or grid")
        for name, t, conv in (("gate_map", gate_map, self.gate_conv), ("prompt_map", prompt_map, self.prompt_conv)):
            if t.dim() != 4 or t.shape[1] != conv.in_channels:
                raise ValueError(f"BigMoeConvPromptBypass: {name} must be (b, {conv.in_channels}, g, g), "
                                 f"got {tuple(t.shape)}")
        # [p; g] = QuickGELU of both CDCs, run as one convolution of [prompt; gate] with a block-diagonal kernel
        both = _small_map_conv2d(torch.cat([prompt_map, gate_map], dim=1), self._joint_kernel(),
                                 self.gate_conv.padding)
        h = self.dropout(self.eca(quick_gelu(both)))
        return quick_gelu(self.out_conv(h))

    def _joint_kernel(self) -> torch.Tensor:
        """(2 pd, pd + gd, k, k): the folded prompt kernel on the prompt channels, the gate kernel on the gate ones."""
        weights = (self.prompt_conv.weight, self.gate_conv.weight)
        if _needs_grad(*weights):
            return self._build_joint_kernel()
        return _cached_from_weights(self, "_joint_cache", weights, self._build_joint_kernel)

    def _build_joint_kernel(self) -> torch.Tensor:
        prompt_kernel, gate_kernel = self.prompt_conv.folded_weight(), self.gate_conv.folded_weight()
        pd, gd = prompt_kernel.shape[1], gate_kernel.shape[1]
        return torch.cat([F.pad(prompt_kernel, (0, 0, 0, 0, 0, gd)), F.pad(gate_kernel, (0, 0, 0, 0, pd, 0))])


class BigMoePromptGenerator(nn.Module):
    """The initial prompt ``P_0`` from the images and the missing-modality code (spec §3).

    ``P_c = QuickGELU(CDC(images))`` over the channel-concatenated modalities at full
    resolution; ``P_m`` = one of ``2**m`` learnable image-sized modality prompts picked by
    the per-sample missing-modality code; ``P_t`` = one shared learnable prompt;
    ``P_0 = patch_proj([P_c; P_m; P_t])`` (kernel = stride = patch size), a (b, pd, g, g) map.
    """

    def __init__(
        self,
        *,
        image_size: int = 224,
        patch_size: int = 16,
        num_modalities: int = 3,
        num_channels: int = 3,
        prompt_dim: int = 64,  # ref
        theta: float = 0.7,  # ref
    ):
        super().__init__()
        if image_size <= 0 or patch_size <= 0 or image_size % patch_size:
            raise ValueError(
                f"BigMoePromptGenerator: image_size ({image_size}) must be a positive multiple of "
                f"patch_size ({patch_size})")
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_modalities = num_modalities
        self.num_channels = num_channels
        self.prompt_dim = prompt_dim
        c = num_channels
        self.image_cdc = CentralDifferenceConv2d(num_modalities * c, c, theta=theta)
        self.modality_prompts = nn.Parameter(torch.zeros(2 ** num_modalities, c, image_size, image_size))
        self.task_prompt = nn.Parameter(torch.zeros(1, c, image_size, image_size))
        self.patch_proj = nn.Conv2d(3 * c, prompt_dim, kernel_size=patch_size, stride=patch_size)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    def reset_parameters(self) -> None:
        self.image_cdc.reset_parameters()
        nn.init.zeros_(self.modality_prompts)
        nn.init.zeros_(self.task_prompt)
        self.patch_proj.reset_parameters()

    def forward(self, images: torch.Tensor, modality_code: torch.Tensor) -> torch.Tensor:
        """``images`` (b, m*c, H, W), ``modality_code`` (b,) long in [0, 2**m) -> (b, pd, g, g)."""
        expected = (self.num_modalities * self.num_channels, self.image_size, self.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"BigMoePromptGenerator: images must be (b, {expected}), got {tuple(images.shape)}")
        b = images.shape[0]
        if modality_code.shape != (b,):
            raise ValueError(
                f"BigMoePromptGenerator: modality_code must be ({b},), got {tuple(modality_code.shape)}")
        p_c = quick_gelu(self.image_cdc(images))
        learned = (self.modality_prompts, self.task_prompt, self.patch_proj.weight, self.patch_proj.bias)
        if _needs_grad(*learned):
            p_m = self.modality_prompts.index_select(0, modality_code.long())
            p_t = self.task_prompt.expand(b, -1, -1, -1)
            return self.patch_proj(torch.cat([p_c, p_m.to(p_c.dtype), p_t.to(p_c.dtype)], dim=1))
        # inference: the projection is linear, so the prompts' share (one map per code, bias included) is cached
        # and only the image channels are projected per call
        image_kernel, table = _cached_from_weights(self, "_prompt_table_cache", learned, self._build_prompt_table)
        out = F.conv2d(p_c, image_kernel.to(p_c.dtype), stride=self.patch_size)
        return out + table.index_select(0, modality_code.long()).to(out.dtype)

    def _build_prompt_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(image part of the projection kernel, (2**m, pd, g, g) projection of [0; P_m[code]; P_t] + bias)."""
        c, weight = self.num_channels, self.patch_proj.weight
        table = F.conv2d(self.modality_prompts, weight[:, c:2 * c], stride=self.patch_size)
        table = table + F.conv2d(self.task_prompt, weight[:, 2 * c:], self.patch_proj.bias, stride=self.patch_size)
        return weight[:, :c].contiguous(), table

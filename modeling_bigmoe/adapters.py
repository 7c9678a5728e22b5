"""PEFT-style injection of the BIG-MoE adapters into a CLIP vision tower, trainable marking, adapter files.

BIG-MoE: "Bypass Isolated Gating MoE for Generalized Multimodal Face Anti-Spoofing"
(Ma, Yu, Lin, Xie, Shen; ICASSP 2025, arXiv 2412.18065).

PEFT 0.21 cannot register new tuner types, so this file mirrors its structure: a wrapper
(:class:`BigMoeBlockAdapter`) replaces each adapted ``CLIPEncoderLayer`` in the tower's layer list
and holds the original as ``base_layer`` next to the ``moe_adapter`` (IGMA) and the ``cpb``
(prompt bypass). The model runs its own loop over the layers and threads the prompt tokens
explicitly; no state is hidden in modules.

Dead modules are not built. The head reads only CLS, and an IGMA writes only patch tokens, so
the IGMA of the *last backbone layer* can never reach the loss; and a CPB's prompt is read only
by the next adapted block's IGMA, so the CPB of the last built IGMA is dead too. With the
reference 12 adapted layers this builds IGMA in layers 0-10 and CPB in layers 0-9.

Adapter files are keyed by layer index (``blocks.{i}.moe_adapter...``), independent of CLIP's
module paths, which changed in transformers 5.6.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.activations import QuickGELUActivation
from transformers.modeling_layers import GradientCheckpointingLayer

from .clip_utils import clip_layer_parts, get_clip_encoder_layers, run_clip_attention
from .layers_cdc import BigMoeConvPromptBypass, BigMoePromptGenerator, map_to_tokens, tokens_to_map
from .layers_peer import BigMoeIsolatedGateAdapter, quick_gelu, serial_small_ops

__all__ = [
    "BigMoeRouting",
    "BigMoeBlockAdapter",
    "BIGMOE_ADAPTER_TYPES",
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_WEIGHTS_NAME",
    "clip_mlp_forward",
    "clip_block_forward",
    "plan_bigmoe_adapters",
    "inject_bigmoe_adapters",
    "mark_bigmoe_trainable",
    "trainable_parameter_summary",
    "bigmoe_adapter_state_dict",
    "save_bigmoe_adapters",
    "load_bigmoe_adapters",
]

ADAPTER_CONFIG_NAME = "bigmoe_adapter_config.json"
ADAPTER_WEIGHTS_NAME = "bigmoe_adapter.safetensors"
ADAPTER_FORMAT_VERSION = 1


@dataclass
class BigMoeRouting:
    """PEER routing of one adapted block.

    Attributes:
        layer_idx: backbone layer index.
        indices: (b, N, heads, experts_per_head) chosen expert ids, in ``[0, moe_num_experts)``.
        weights: (b, N, heads, experts_per_head) routing weights; each head sums to 1.
    """

    layer_idx: int
    indices: torch.Tensor
    weights: torch.Tensor


def clip_mlp_forward(mlp: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """CLIP's MLP ``fc2(act(fc1(h)))``; with CLIP's QuickGELU the activation is :func:`quick_gelu`, which saves only
    its input for backward (the frozen blocks' largest activation), same values as ``mlp(h)``."""
    if isinstance(getattr(mlp, "activation_fn", None), QuickGELUActivation) and hasattr(mlp, "fc1"):
        return mlp.fc2(quick_gelu(mlp.fc1(hidden_states)))
    return mlp(hidden_states)


def clip_block_forward(
    base_layer: nn.Module,
    hidden_states: torch.Tensor,
    *,
    block_wiring: str = "preln",
    patch_adapter=None,
    output_attentions: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One CLIP encoder layer with an optional parallel patch adapter; returns ``(hidden, attn_weights)``.

    ``patch_adapter(h_patches, target=None)`` maps the post-LN2 patch tokens ``h[:, 1:]`` (b, m*N, d) to a delta of
    the same shape and returns it; given ``target`` (the output's patch rows) it adds the delta into it in place.

    ``"preln"``: ``x <- x + Attn(LN1 x)``; ``h = LN2 x``; ``x <- x + MLP(h) + [0_cls; Z]``, ``Z = adapter(h_patches)``.

    ``"reference"`` (our reading of the reference code, spec §6): ``x = LN1(x)`` (the stream is replaced),
    ``x = x + Attn(x)`` (residual on the LN output), ``h = LN2(x)``, ``a = x + [x_cls; Z]`` (the reference
    adapter returns ``x + Z`` with CLS passed through), ``x = x + MLP(h) + a``: patches are counted twice and
    CLS three times. Without an adapter ``Z = 0``.
    """
    layer_norm1, self_attn, layer_norm2, mlp = clip_layer_parts(base_layer)
    if block_wiring == "preln":
        attn_out, attn_weights = run_clip_attention(self_attn, layer_norm1(hidden_states))
        x = hidden_states + attn_out
        h = layer_norm2(x)
        out = x + clip_mlp_forward(mlp, h)
        if patch_adapter is not None:
            # in place on the patch rows (no copy of the stream); the sum's backward needs none of its inputs
            patch_adapter(h[:, 1:], out[:, 1:])
        return out, (attn_weights if output_attentions else None)
    if block_wiring == "reference":
        x = layer_norm1(hidden_states)
        attn_out, attn_weights = run_clip_attention(self_attn, x)
        x = x + attn_out
        h = layer_norm2(x)
        z = patch_adapter(h[:, 1:]) if patch_adapter is not None else torch.zeros_like(x[:, 1:])
        adapted = x + torch.cat([x[:, :1], z], dim=1)
        return x + clip_mlp_forward(mlp, h) + adapted, (attn_weights if output_attentions else None)
    raise ValueError(f"clip_block_forward: block_wiring must be 'preln' or 'reference', got {block_wiring!r}")


class BigMoeBlockAdapter(GradientCheckpointingLayer):
    """A CLIP encoder layer (``base_layer``) with its IGMA (``moe_adapter``) and, if alive, its CPB (``cpb``).

    ``forward(hidden_states, prompt_tokens)`` returns ``(hidden_states, next_prompt, attn_weights, routing)``;
    ``next_prompt`` is ``None`` when the block has no CPB, ``attn_weights`` and ``routing`` are ``None``
    unless asked for.
    """

    def __init__(self, base_layer: nn.Module, config, layer_idx: int, *, build_cpb: bool):
        super().__init__()
        hidden = config.vision_config.hidden_size
        self.base_layer = base_layer
        self.layer_idx = layer_idx
        self.block_wiring = config.block_wiring
        self.legacy_transpose = config.legacy_transpose
        self.prompt_residual = config.prompt_residual
        self.grid = config.grid_size
        self.moe_adapter = BigMoeIsolatedGateAdapter(
            hidden,
            num_modalities=config.num_modalities,
            bottleneck_dim=config.moe_bottleneck_dim,
            prompt_dim=config.cpb_prompt_dim,
            num_experts=config.moe_num_experts,
            heads=config.moe_heads,
            experts_per_head=config.moe_experts_per_head,
            product_key_topk=config.moe_product_key_topk,
            key_dim=config.moe_key_dim,
            moe_dropout=config.moe_dropout,
            dropout=config.adapter_dropout,
        )
        self.cpb = (
            BigMoeConvPromptBypass(
                gate_dim=config.gate_dim,
                prompt_dim=config.cpb_prompt_dim,
                theta=config.cdc_theta,
                eca_kernel_size=config.eca_kernel_size,
                dropout=config.cpb_dropout,
            )
            if build_cpb
            else None
        )

    def forward(self, hidden_states: torch.Tensor, prompt_tokens: torch.Tensor, output_attentions: bool = False,
                output_routing: bool = False):
        """``hidden_states`` (b, 1+m*N, d), ``prompt_tokens`` (b, N, pd) -> (hidden, next_prompt, attn, routing)."""
        produced = {}

        def igma(patches: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
            result = self.moe_adapter(patches, prompt_tokens, return_routing=output_routing, accumulate_into=target)
            produced["gate"] = result[1]
            if output_routing:
                produced["routing"] = BigMoeRouting(self.layer_idx, result[2], result[3])
            return result[0]

        hidden_states, attn_weights = clip_block_forward(
            self.base_layer, hidden_states, block_wiring=self.block_wiring, patch_adapter=igma,
            output_attentions=output_attentions)
        next_prompt = None
        if self.cpb is not None:
            with serial_small_ops():
                gate_map = tokens_to_map(produced["gate"], self.grid, legacy_transpose=self.legacy_transpose)
                prompt_map = tokens_to_map(prompt_tokens, self.grid, legacy_transpose=self.legacy_transpose)
                next_prompt = map_to_tokens(self.cpb(gate_map, prompt_map))
                if self.prompt_residual:
                    next_prompt = next_prompt + prompt_tokens
        return hidden_states, next_prompt, attn_weights, produced.get("routing")


BIGMOE_ADAPTER_TYPES = (BigMoeIsolatedGateAdapter, BigMoeConvPromptBypass, BigMoePromptGenerator)


def plan_bigmoe_adapters(config) -> tuple[list[int], list[int]]:
    """``(igma_layers, cpb_layers)``: the layers whose IGMA / CPB output can reach the loss (see module doc)."""
    n_layers = config.vision_config.num_hidden_layers
    igma_layers = [i for i in config.resolved_adapter_layers if i < n_layers - 1]
    return igma_layers, igma_layers[:-1]


def inject_bigmoe_adapters(vision_tower: nn.Module, config) -> list[str]:
    """Replace each planned CLIP layer by a :class:`BigMoeBlockAdapter`; returns the targeted names ``layers.{i}``."""
    layers = get_clip_encoder_layers(vision_tower)
    if len(layers) != config.vision_config.num_hidden_layers:
        raise ValueError(f"inject_bigmoe_adapters: the tower has {len(layers)} layers, config.vision_config says "
                         f"{config.vision_config.num_hidden_layers}")
    igma_layers, cpb_layers = plan_bigmoe_adapters(config)
    targeted = []
    for i in igma_layers:
        if isinstance(layers[i], BigMoeBlockAdapter):
            raise ValueError(f"inject_bigmoe_adapters: layer {i} already holds a BigMoeBlockAdapter")
        layers[i] = BigMoeBlockAdapter(layers[i], config, i, build_cpb=i in cpb_layers)
        targeted.append(f"layers.{i}")
    if len(targeted) != len(igma_layers):
        raise ValueError(f"inject_bigmoe_adapters: wrapped {len(targeted)} layers, planned {len(igma_layers)}")
    return targeted


def mark_bigmoe_trainable(model: nn.Module, extra: list[nn.Module | nn.Parameter]) -> None:
    """Freeze everything, then unfreeze every adapter-type module (``isinstance``) and the ``extra`` items."""
    model.requires_grad_(False)
    for module in model.modules():
        if isinstance(module, BIGMOE_ADAPTER_TYPES):
            module.requires_grad_(True)
    for item in extra:
        item.requires_grad_(True)


def trainable_parameter_summary(model: nn.Module) -> tuple[int, int, str]:
    """``(trainable, total, line)`` with ``line`` formatted as PEFT's ``print_trainable_parameters``."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    line = (f"trainable params: {trainable:,d} || all params: {total:,d} || "
            f"trainable%: {100 * trainable / max(total, 1):.4f}")
    return trainable, total, line


def bigmoe_adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Tensors of every module returned by ``model.bigmoe_adapter_modules()``, keyed ``{prefix}.{name}``."""
    state = {}
    for prefix, module in model.bigmoe_adapter_modules().items():
        if isinstance(module, nn.Parameter):
            state[prefix] = module.detach()
            continue
        for name, tensor in module.state_dict().items():
            state[f"{prefix}.{name}"] = tensor.detach()
    return state


def _atomic_write(path: str, writer) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    os.close(fd)
    try:
        writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_bigmoe_adapters(model: nn.Module, save_directory: str | os.PathLike) -> list[str]:
    """Write ``bigmoe_adapter_config.json`` and ``bigmoe_adapter.safetensors`` (metadata ``format=pt``).

    Saves the adapters, prompt generator, embeddings, head and trainable backbone layers only; the frozen
    CLIP weights come from ``config.base_model_name_or_path``. Returns the two paths.
    """
    save_directory = os.fspath(save_directory)
    os.makedirs(save_directory, exist_ok=True)
    state = {k: v.contiguous().cpu() for k, v in bigmoe_adapter_state_dict(model).items()}
    config = model.config
    meta = {
        "format": "bigmoe-adapter",
        "format_version": ADAPTER_FORMAT_VERSION,
        "base_model_name_or_path": config.base_model_name_or_path,
        "num_tensors": len(state),
        "num_parameters": int(sum(v.numel() for v in state.values())),
        "config": config.to_dict(),
    }
    weights_path = os.path.join(save_directory, ADAPTER_WEIGHTS_NAME)
    config_path = os.path.join(save_directory, ADAPTER_CONFIG_NAME)
    _atomic_write(weights_path, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))

    def write_json(tmp):
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(meta, handle, indent=2, sort_keys=True, default=str)
            handle.write("\n")

    _atomic_write(config_path, write_json)
    return [config_path, weights_path]


def load_bigmoe_adapters(model: nn.Module, load_directory: str | os.PathLike) -> nn.Module:
    """Copy adapter tensors saved by :func:`save_bigmoe_adapters` into ``model`` (in place); returns ``model``.

    Raises ``FileNotFoundError`` if a file is missing and ``ValueError`` on any missing/unexpected key or
    shape mismatch (naming the keys and shapes).
    """
    load_directory = os.fspath(load_directory)
    config_path = os.path.join(load_directory, ADAPTER_CONFIG_NAME)
    weights_path = os.path.join(load_directory, ADAPTER_WEIGHTS_NAME)
    for path in (config_path, weights_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"load_bigmoe_adapters: {path} not found")
    with open(config_path, encoding="utf-8") as handle:
        meta = json.load(handle)
    if meta.get("format") != "bigmoe-adapter":
        raise ValueError(f"load_bigmoe_adapters: {config_path} has format {meta.get('format')!r}, "
                         "expected 'bigmoe-adapter'")
    loaded = load_file(weights_path)
    target = bigmoe_adapter_state_dict(model)
    missing = sorted(set(target) - set(loaded))
    unexpected = sorted(set(loaded) - set(target))
    if missing or unexpected:
        raise ValueError(f"load_bigmoe_adapters: {weights_path} does not match the model: "
                         f"missing keys {missing[:8]} ({len(missing)}), unexpected keys {unexpected[:8]} "
                         f"({len(unexpected)})")
    bad = [(k, tuple(loaded[k].shape), tuple(v.shape)) for k, v in target.items() if loaded[k].shape != v.shape]
    if bad:
        raise ValueError(f"load_bigmoe_adapters: shape mismatch (key, file, model): {bad[:8]}")
    with torch.no_grad():
        for key, tensor in target.items():
            tensor.copy_(loaded[key].to(device=tensor.device, dtype=tensor.dtype))
    return model

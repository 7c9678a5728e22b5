"""What BIG-MoE, MMDA and La-SoftMoE CLIP share on the model side.

Shipped as Hub remote code next to each model's ``modeling_*.py`` (transformers copies relative imports with
it), so this module imports nothing but torch, transformers and the standard library.

* :class:`FaceAntiSpoofingPreTrainedMixin`: the weight-initialisation visit, the trainable-parameter summary and a
  ``from_pretrained`` that loads safetensors only by default and re-applies the config-driven freezing.
* Modality inputs (keyword arguments ``pixel_values``, ``depth_pixel_values``, ``ir_pixel_values``, public column
  order rgb, depth, ir): :func:`check_modality_inputs`, :func:`modality_presence`, :func:`merge_modality_mask`,
  :func:`stack_modalities`.
* The two CLIP-text models: :func:`check_binary_labels`, :func:`pad_token_ids`, :func:`frozen_text_cache_key`,
  :func:`from_full_clip`, :func:`load_full_clip_state_dict`, :func:`copy_clip_state_dict`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init

__all__ = [
    "MODALITY_ARGS",
    "MODALITY_NAMES",
    "FaceAntiSpoofingPreTrainedMixin",
    "check_binary_labels",
    "check_modality_inputs",
    "copy_clip_state_dict",
    "from_full_clip",
    "frozen_text_cache_key",
    "load_full_clip_state_dict",
    "merge_modality_mask",
    "modality_presence",
    "pad_token_ids",
    "pytorch_default_init",
    "stack_modalities",
]

# the public modality order of every model's keyword arguments and ``modality_mask`` columns
MODALITY_NAMES = ("rgb", "depth", "ir")
MODALITY_ARGS = ("pixel_values", "depth_pixel_values", "ir_pixel_values")
_SAFETENSORS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
_PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


class FaceAntiSpoofingPreTrainedMixin:
    """Shared by ``BigMoePreTrainedModel``, ``MmdaPreTrainedModel`` and ``LaSoftMoePreTrainedModel``.

    Put it before ``PreTrainedModel`` in the bases. The class using it sets ``config_class``,
    ``base_model_prefix`` and ``_no_split_modules``, defines ``_init_weights`` and ``mark_trainable``, and may
    override the two hooks of :meth:`initialize_weights`: :meth:`_is_own_init_module` and
    :meth:`_wrapped_base_layer`. Inputs are images (keyword ``pixel_values`` first); gradient checkpointing and
    SDPA attention are supported.
    """

    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    # ------------------------------------------------------------------ initialisation
    def _is_own_init_module(self, module: nn.Module) -> bool:
        """Whether ``module`` and all it holds get *our* ``_init_weights``, even inside a pretrained sub-model
        (the adapters injected into CLIP's tower). Default: no module besides the model's own."""
        return False

    def _wrapped_base_layer(self, module: nn.Module) -> nn.Module | None:
        """For a wrapper injected into a pretrained sub-model (LoRA) whose own tensors are ours but whose wrapped
        layer keeps the surrounding init: that wrapped layer; ``None`` for any other module (default)."""
        return None

    @torch.no_grad()
    def initialize_weights(self):
        """Like ``PreTrainedModel.initialize_weights`` (children before parents; a pretrained sub-model such as the
        CLIP tower gets its own init), but the modules picked by :meth:`_is_own_init_module` and the wrappers of
        :meth:`_wrapped_base_layer` get *our* ``_init_weights``, and modules without direct parameters are not
        skipped. Tensors already loaded from a checkpoint are left alone (the ``transformers.initialization``
        helpers skip them)."""

        def own(module: nn.Module, is_custom_code: bool = False) -> None:
            if getattr(module, "_is_hf_initialized", False):
                return
            self._init_weights(module)
            module._is_hf_initialized = True

        is_custom = bool(getattr(self, "is_custom_code", lambda: False)())

        def visit(module: nn.Module, fn) -> None:
            for child in module.children():
                base_layer = self._wrapped_base_layer(child)
                if base_layer is not None:
                    own(child)
                    visit(base_layer, fn)
                    fn(base_layer, is_custom)
                elif self._is_own_init_module(child):
                    visit(child, own)
                elif isinstance(child, PreTrainedModel):
                    visit(child, child._initialize_weights)
                else:
                    visit(child, fn)
            fn(module, is_custom)

        visit(self, own)

    # ------------------------------------------------------------------ trainable parameters
    def trainable_parameter_summary(self) -> tuple[int, int, str]:
        """``(trainable, total, text)`` with PEFT's ``print_trainable_parameters`` format."""
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        pct = 100.0 * trainable / total if total else 0.0
        return trainable, total, f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {pct:.4f}"

    def print_trainable_parameters(self) -> None:
        """Print ``trainable params: ... || all params: ... || trainable%: ...``."""
        print(self.trainable_parameter_summary()[2])

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """``PreTrainedModel.from_pretrained`` reading safetensors only by default, then the config-driven freezing
        (loading resets ``requires_grad``).

        ``use_safetensors`` defaults to ``True``: a checkpoint holding only ``pytorch_model.bin`` (a pickle, which can
        run code when loaded) is refused with ``FileNotFoundError``. Pass ``use_safetensors=False`` explicitly to
        load pickle weights you trust.
        """
        defaulted = "use_safetensors" not in kwargs
        kwargs.setdefault("use_safetensors", True)
        try:
            result = super().from_pretrained(*args, **kwargs)
        except OSError as err:
            if not defaulted:
                raise
            source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
            hint = _pickle_only_hint(cls.__name__, source, kwargs.get("subfolder") or "", str(err))
            if hint is None:
                raise
            raise FileNotFoundError(hint) from err
        model = result[0] if isinstance(result, tuple) else result
        model.mark_trainable()
        return result


def pytorch_default_init(module: nn.Module) -> None:
    """PyTorch's default Linear / Conv init (Kaiming-uniform a=sqrt(5), bias U(+-1/sqrt(fan_in))) through the
    ``transformers.initialization`` helpers (which skip tensors loaded from a checkpoint)."""
    init.kaiming_uniform_(module.weight, a=5 ** 0.5)
    if getattr(module, "bias", None) is not None:
        fan_in = module.weight[0].numel()
        bound = 1.0 / fan_in ** 0.5 if fan_in > 0 else 0.0
        init.uniform_(module.bias, -bound, bound)


def _pickle_only_hint(owner: str, source, subfolder: str, message: str) -> str | None:
    """The message for a refused pickle-only checkpoint, or ``None`` when the error is about something else."""
    if source is not None and os.path.isdir(os.fspath(source)):
        folder = os.path.join(os.fspath(source), subfolder)
        if any(os.path.isfile(os.path.join(folder, n)) for n in _SAFETENSORS_WEIGHTS):
            return None
        pickled = [n for n in _PICKLE_WEIGHTS if os.path.isfile(os.path.join(folder, n))]
        if not pickled:
            return None
        return (f"{owner}.from_pretrained: {folder} holds {pickled[0]}, a pickle file, and no model.safetensors; "
                "pickle weights are not loaded by default (unpickling can run code). Convert them to safetensors, "
                "or pass use_safetensors=False if you trust the file")
    if "safetensors" not in message:
        return None
    return (f"{owner}.from_pretrained: {message} Only safetensors weights are loaded by default; pass "
            "use_safetensors=False to load pickle weights (pytorch_model.bin) you trust")


# --------------------------------------------------------------------------- modality inputs
def check_modality_inputs(owner: str, given: dict[str, torch.Tensor | None], expected: tuple[int, int, int],
                          modality_mask=None, *, required: tuple[str, str] | None = None,
                          finite_args: Sequence[str] | None = None) -> int:
    """Validate the modality tensors and ``modality_mask``; returns the batch size.

    Args:
        owner: the class named in the messages.
        given: argument name -> tensor (b, c, H, W) or ``None``, in the order of the ``modality_mask`` columns.
        expected: ``(c, H, W)`` every given tensor must have.
        modality_mask: ``None`` or a (b, len(given)) tensor of 0/1 (or bools).
        required: ``(argument, reason)``: that argument must be given (checked right after "all missing").
        finite_args: the arguments checked for NaN/inf (default: all given).

    Raises ``ValueError`` naming the argument and the shapes / values seen.
    """
    shapes = {arg: (None if t is None else tuple(t.shape)) for arg, t in given.items()}
    present_args = [arg for arg, t in given.items() if t is not None]
    if not present_args:
        raise ValueError(f"{owner}: all modalities are missing ({', '.join(list(given)[:-1])} and "
                         f"{list(given)[-1]} are all None)")
    if required is not None and given.get(required[0]) is None:
        raise ValueError(f"{owner}: {required[1]}; got {shapes}")
    for arg in present_args:
        tensor = given[arg]
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise ValueError(f"{owner}: {arg} must be a float tensor, got {type(tensor).__name__} "
                             f"{getattr(tensor, 'dtype', '')}")
        if tensor.dim() != 4 or tuple(tensor.shape[1:]) != tuple(expected):
            raise ValueError(f"{owner}: {arg} must have shape (batch, {expected[0]}, {expected[1]}, "
                             f"{expected[2]}), got {tuple(tensor.shape)}")
    batch_sizes = {given[arg].shape[0] for arg in present_args}
    if len(batch_sizes) != 1:
        raise ValueError(f"{owner}: batch sizes differ between modalities: {shapes}")
    b = batch_sizes.pop()
    for arg in present_args:
        if finite_args is not None and arg not in finite_args:
            continue
        # a finite sum implies finite elements (NaN/inf propagate); only a non-finite sum needs the full check
        if bool(torch.isfinite(given[arg].sum())):
            continue
        finite = torch.isfinite(given[arg])
        if not bool(finite.all()):
            raise ValueError(f"{owner}: {arg} (shape {tuple(given[arg].shape)}) holds "
                             f"{int((~finite).sum())} NaN/inf values")
    if modality_mask is not None:
        columns = len(given)
        if not isinstance(modality_mask, torch.Tensor) or tuple(modality_mask.shape) != (b, columns):
            raise ValueError(f"{owner}: modality_mask must have shape ({b}, {columns}) (columns "
                             f"{', '.join(MODALITY_NAMES[:columns])}), got "
                             f"{tuple(getattr(modality_mask, 'shape', ()))}; inputs {shapes}")
        values = modality_mask.detach().to("cpu")
        if not bool(((values == 0) | (values == 1)).all()):
            raise ValueError(f"{owner}: modality_mask must hold only 0/1 (or bools), got {values.tolist()}")
    return b


def modality_presence(tensors: Sequence[torch.Tensor | None], batch_size: int) -> torch.Tensor:
    """(batch_size, len(tensors)) bool on the CPU: column j is True where ``tensors[j]`` is given."""
    return torch.tensor([t is not None for t in tensors], dtype=torch.bool).expand(batch_size, len(tensors)).clone()


def merge_modality_mask(owner: str, present: torch.Tensor, mask: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
    """The presence to use given a validated ``modality_mask`` (same columns as ``present``, named ``names``).

    Raises ``ValueError`` when the mask marks a modality present whose tensor is None, or a sample with every
    modality missing. Returns ``mask`` as a CPU bool tensor.
    """
    mask = mask.detach().to("cpu").bool()
    claimed = mask & ~present
    if bool(claimed.any()):
        cols = [names[j] for j in range(len(names)) if bool(claimed[:, j].any())]
        raise ValueError(f"{owner}: modality_mask marks {cols} present but the tensors are None")
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"{owner}: modality_mask marks all modalities missing for samples {empty}")
    return mask


def stack_modalities(tensors: Sequence[torch.Tensor | None], present: torch.Tensor, fill: float,
                     reference: torch.Tensor) -> torch.Tensor:
    """(m, b, c, H, W): ``tensors[j]`` where ``present[:, j]``, else ``fill`` (out of place).

    ``reference`` (one of the given tensors) sets the device, dtype and shape of the filled modalities.
    """
    present = present.to(reference.device)
    value = torch.tensor(fill, device=reference.device, dtype=reference.dtype)
    return torch.stack([
        torch.where(present[:, j, None, None, None], t, value) if t is not None else value.expand_as(reference)
        for j, t in enumerate(tensors)])


# --------------------------------------------------------------------------- the CLIP-text models
def check_binary_labels(owner: str, labels, batch_size: int) -> None:
    """``labels`` must be an integer tensor of shape (batch_size,) holding 0 (spoof) or 1 (live); ``ValueError``."""
    if not isinstance(labels, torch.Tensor) or labels.shape != (batch_size,) or labels.is_floating_point():
        raise ValueError(f"{owner}: labels must be an integer tensor of shape ({batch_size},), got "
                         f"{getattr(labels, 'dtype', type(labels).__name__)} "
                         f"{tuple(getattr(labels, 'shape', ()))}")
    if batch_size and (int(labels.min()) < 0 or int(labels.max()) > 1):
        raise ValueError(f"{owner}: labels must be 0 (spoof) or 1 (live), got {labels.tolist()}")


def pad_token_ids(seqs: Sequence[Sequence[int]], eos_token_id) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` (len(seqs), longest) long on the CPU, padded with the end token.

    CLIP pools the text at the first end token (or, for legacy configs, at the largest id), so padding with the
    end token (0 when ``eos_token_id`` is not an int) never moves the pooled position.
    """
    pad = eos_token_id if isinstance(eos_token_id, int) else 0
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids, mask


def frozen_text_cache_key(device: torch.device, text_model: nn.Module, ids_key, params: Sequence[nn.Parameter]):
    """Key of a cached frozen text-tower output: device, mode, inference mode, the token ids' key and each
    weight's identity, version counter and dtype (so loading or editing the weights invalidates it)."""
    return (str(device), text_model.training, torch.is_inference_mode_enabled(), ids_key,
            tuple((id(p), p._version, p.dtype) for p in params))


def load_full_clip_state_dict(name_or_path: str) -> dict[str, torch.Tensor]:
    """The state dict of a full ``CLIPModel`` checkpoint (image + text towers), read from safetensors only.

    Raises ``ValueError`` naming the missing / mismatched keys when the checkpoint is not a full CLIP.
    """
    from transformers import CLIPModel

    source, info = CLIPModel.from_pretrained(name_or_path, use_safetensors=True, output_loading_info=True)
    if info["missing_keys"] or info["mismatched_keys"]:
        raise ValueError(f"from_clip: {name_or_path} is not a full CLIP (image + text) checkpoint: missing "
                         f"{sorted(info['missing_keys'])[:8]}, mismatched {list(info['mismatched_keys'])[:8]}")
    return source.state_dict()


def from_full_clip(cls, name_or_path: str | os.PathLike, tokenizer, config_overrides: dict, tokenize: str):
    """``cls.from_clip`` of the CLIP-text models: the config from the checkpoint's ``CLIPConfig`` plus
    ``config_overrides``, its text tokenised by ``config.<tokenize>(tokenizer)`` (default tokenizer: the
    checkpoint's ``CLIPTokenizer``), the model built and the CLIP weights copied in, then the freezing applied."""
    from transformers import CLIPConfig, CLIPTokenizer

    name_or_path = os.fspath(name_or_path)
    if "clip_config" in config_overrides:
        raise ValueError("from_clip: clip_config comes from the CLIP checkpoint; do not pass it")
    clip_config = CLIPConfig.from_pretrained(name_or_path)
    if tokenizer is None:
        tokenizer = CLIPTokenizer.from_pretrained(name_or_path)
    config = cls.config_class(clip_config=clip_config.to_dict(), base_model_name_or_path=name_or_path,
                              **config_overrides)
    getattr(config, tokenize)(tokenizer)
    model = cls(config)
    model.load_clip_state_dict(load_full_clip_state_dict(name_or_path))
    model.mark_trainable()
    return model


@torch.no_grad()
def copy_clip_state_dict(clip: nn.Module, state_dict: dict[str, torch.Tensor], remap: Callable[[str], str],
                         own_marker: str) -> None:
    """Copy a ``CLIPModel`` state dict into ``clip`` (the model's CLIP with injected layers), in place.

    A key absent from ``clip`` is looked up again as ``remap(key)`` (where a wrapper moved the layer). Raises
    ``ValueError`` naming the keys when a CLIP tensor has no place (or another shape) or one of ``clip``'s tensors
    outside the injected ones (names containing ``own_marker``) and ``position_ids`` stays unset.
    """
    ours = clip.state_dict()
    filled, unplaced = set(), []
    for key, value in state_dict.items():
        target = key if key in ours else remap(key)
        if target not in ours or ours[target].shape != value.shape:
            unplaced.append(f"{key} {tuple(value.shape)}")
            continue
        ours[target].copy_(value)
        filled.add(target)
    unset = sorted(k for k in ours if k not in filled and own_marker not in k and not k.endswith("position_ids"))
    if unplaced or unset:
        raise ValueError(f"load_clip_state_dict: CLIP keys without a place {unplaced[:8]}, "
                         f"our CLIP keys left unset {unset[:8]}")

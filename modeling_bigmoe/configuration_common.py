"""Field validation shared by ``BigMoeConfig``, ``MmdaConfig`` and ``LaSoftMoeConfig``.

Shipped as Hub remote code next to each ``configuration_*.py`` (transformers copies relative imports with it),
so this module imports nothing but the standard library. Every check raises ``ValueError`` with a message
``"{owner}.{field} must ..., got {value!r}"`` naming the config class and the field.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

__all__ = [
    "SPOOF_LIVE_LABELS",
    "ClipTowersConfigMixin",
    "FaceAntiSpoofingConfigMixin",
    "check_fields",
    "check_image_grid",
    "check_layer_indices",
    "check_token_ids",
    "check_two_labels",
    "coerce_sub_config",
    "is_int",
    "is_number",
    "set_default_labels",
]

# class 0 spoof, class 1 live, in every model of the package
SPOOF_LIVE_LABELS = {0: "spoof", 1: "live"}


class FaceAntiSpoofingConfigMixin:
    """Shared by the three configs (put it before ``PreTrainedConfig`` in the bases); the config defines
    ``validate_architecture``."""

    def _finish_init(self, kwargs: dict) -> None:
        """The end of ``__init__``: ``PreTrainedConfig.__init__(**kwargs)`` with the spoof / live label defaults
        (:func:`set_default_labels`), then ``validate_architecture()``."""
        super().__init__(**set_default_labels(kwargs))
        self.validate_architecture()


class ClipTowersConfigMixin(FaceAntiSpoofingConfigMixin):
    """For the configs holding a full CLIP (``clip_config``: image and text towers)."""

    @property
    def vision_config(self):
        """The image tower's ``CLIPVisionConfig`` (``clip_config.vision_config``), for code shared with BIG-MoE."""
        return self.clip_config.vision_config

    @property
    def text_context_length(self) -> int:
        """Longest token sequence the text tower takes (``text_config.max_position_embeddings``, 77 for CLIP)."""
        return int(self.clip_config.text_config.max_position_embeddings)


def is_int(value) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A finite ``int`` or ``float`` that is not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def coerce_sub_config(field: str, value, config_class, default: Mapping):
    """``value`` as a ``config_class``: ``None`` -> ``config_class(**default)``, a dict -> ``config_class(**dict)``
    (its ``model_type`` dropped), an instance as is; anything else raises ``ValueError`` naming ``field``
    (e.g. ``"BigMoeConfig.vision_config"``)."""
    if value is None:
        return config_class(**default)
    if isinstance(value, dict):
        return config_class(**{k: v for k, v in value.items() if k != "model_type"})
    if not isinstance(value, config_class):
        raise ValueError(  # noqa: TRY004 (bad input is a ValueError throughout the package)
            f"{field} must be a {config_class.__name__} or a dict, got {type(value).__name__}")
    return value


def set_default_labels(kwargs: dict) -> dict:
    """Without an ``id2label`` in ``kwargs``: set the spoof / live labels (and drop ``num_labels``), in place."""
    if kwargs.get("id2label") is None:
        kwargs["id2label"] = dict(SPOOF_LIVE_LABELS)
        kwargs["label2id"] = {name: i for i, name in SPOOF_LIVE_LABELS.items()}
        kwargs.pop("num_labels", None)
    return kwargs


def check_fields(config, owner: str, *, bools: Iterable[str] = (), positive_ints: Iterable[str] = (),
                 non_negative_ints: Iterable[str] = (), probabilities: Iterable[str] = (),
                 positive_numbers: Iterable[str] = (), non_negative_numbers: Iterable[str] = (),
                 finite_numbers: Iterable[str] = (), choices: Mapping[str, tuple] | None = None) -> None:
    """Check the named attributes of ``config`` by kind; ``owner`` (the config class name) starts the messages.

    Kinds: ``bools`` (exactly ``bool``), ``positive_ints`` / ``non_negative_ints`` (``int``, not ``bool``),
    ``probabilities`` (finite number in [0, 1]), ``positive_numbers`` / ``non_negative_numbers`` /
    ``finite_numbers`` (finite ``int`` or ``float``, not ``bool``) and ``choices`` (field -> allowed values).
    """
    for name, choice in (choices or {}).items():
        if getattr(config, name) not in choice:
            raise ValueError(f"{owner}.{name} must be one of {choice}, got {getattr(config, name)!r}")
    rules = (
        (bools, lambda v: isinstance(v, bool), "a bool"),
        (positive_ints, lambda v: is_int(v) and v > 0, "a positive int"),
        (non_negative_ints, lambda v: is_int(v) and v >= 0, "an int >= 0"),
        (probabilities, lambda v: is_number(v) and 0.0 <= v <= 1.0, "a number in [0, 1]"),
        (positive_numbers, lambda v: is_number(v) and v > 0, "a positive finite number"),
        (non_negative_numbers, lambda v: is_number(v) and v >= 0, "a finite number >= 0"),
        (finite_numbers, is_number, "a finite number"),
    )
    for names, ok, what in rules:
        for name in names:
            value = getattr(config, name)
            if not ok(value):
                raise ValueError(f"{owner}.{name} must be {what}, got {value!r}")


def check_image_grid(prefix: str, vision_config) -> None:
    """``image_size`` and ``patch_size`` of a CLIP vision config are positive ints, the first a multiple of the
    second; ``prefix`` names the vision config (e.g. ``"BigMoeConfig.vision_config"``)."""
    for name in ("image_size", "patch_size"):
        value = getattr(vision_config, name)
        if not is_int(value) or value <= 0:
            raise ValueError(f"{prefix}.{name} must be a positive int, got {value!r}")
    if vision_config.image_size % vision_config.patch_size:
        raise ValueError(f"{prefix}.image_size ({vision_config.image_size}) must be a multiple of "
                         f"patch_size ({vision_config.patch_size})")


def check_layer_indices(field: str, layers, num_layers: int) -> None:
    """``layers`` is ``None`` or distinct ints in ``[0, num_layers)``; ``field`` names it in the message."""
    if layers is None:
        return
    bad = [i for i in layers if not is_int(i) or not 0 <= i < num_layers]
    if bad or len(set(layers)) != len(layers):
        raise ValueError(f"{field} must be distinct ints in [0, {num_layers}), got {layers!r}")


def check_two_labels(owner: str, id2label) -> None:
    """The models are binary: ``id2label`` must have 2 labels (spoof, live)."""
    if id2label is not None and len(id2label) != 2:
        raise ValueError(f"{owner}.id2label must have 2 labels (spoof, live), got {id2label!r}")


def check_token_ids(where: str, seq, text_config, context: int, text: str | None = None) -> None:
    """One CLIP token-id sequence (start and end tokens, unpadded) of a stored template / prompt.

    ``where`` names it (field and index), ``text`` is its sentence (quoted at the end of the message). It must be a
    non-empty list of ints, at most ``context`` long, inside ``[0, text_config.vocab_size)`` and hold the end token
    ``text_config.eos_token_id`` (where CLIP pools the text; legacy configs with ``eos_token_id`` 2 pool at the
    largest id and are not checked).
    """
    vocab, eos = int(text_config.vocab_size), text_config.eos_token_id
    of = "" if text is None else f" (text {text!r})"
    if not isinstance(seq, (list, tuple)) or not seq or not all(is_int(t) for t in seq):
        raise ValueError(f"{where} must be a non-empty list of ints, got {seq!r}{of}")
    if len(seq) > context:
        raise ValueError(f"{where} has {len(seq)} tokens, more than the text tower's context of {context} "
                         f"(clip_config.text_config.max_position_embeddings){of}")
    if min(seq) < 0 or max(seq) >= vocab:
        raise ValueError(f"{where} holds ids outside [0, {vocab}) (clip_config.text_config.vocab_size): "
                         f"{list(seq)!r}{of}")
    if is_int(eos) and eos != 2 and eos not in seq:
        raise ValueError(f"{where} lacks the end token {eos} (clip_config.text_config.eos_token_id), "
                         f"where CLIP pools the text: {list(seq)!r}{of}")

"""Text templates for MMDA's class subspaces: 24 spoof sentences (class 0) and 23 live (class 1).

MMDA (arXiv 2505.09484) encodes a set of template sentences per class with CLIP's text tower;
RS2 aligns each image with the nearest template of each class. The reference's own lists are
not reproduced here: these lists have the same sizes and style and contain the six templates
per class of FLIP (Srivatsan, Naseer, Nandakumar; "FLIP: Cross-domain Face Anti-spoofing with
Language Guidance", ICCV 2023) verbatim; the other sentences are our own wording.

They are plain lists so that a model config can store (and a user can edit) them.
"""

from __future__ import annotations

__all__ = [
    "FLIP_SPOOF_TEMPLATES", "FLIP_LIVE_TEMPLATES", "SPOOF_TEMPLATES", "LIVE_TEMPLATES", "default_templates",
]

# FLIP's six templates per class, verbatim
FLIP_SPOOF_TEMPLATES = [
    "This is an example of a spoof face",
    "This is an example of an attack face",
    "This is not a real face",
    "This is how a spoof face looks like",
    "a photo of a spoof face",
    "a printout shown to be a spoof face",
]

FLIP_LIVE_TEMPLATES = [
    "This is an example of a real face",
    "This is a bonafide face",
    "This is a real face",
    "This is how a real face looks like",
    "a photo of a real face",
    "This is not a spoof face",
]

SPOOF_TEMPLATES = FLIP_SPOOF_TEMPLATES + [
    "This is a photo of a spoof face",
    "This is a photo of an attack face",
    "This is a photo of a printed adversarial image face",
    "This is a photo of a fake face",
    "This is a photo of a face replayed on a screen",
    "This is a photo of a face covered by a 3D mask",
    "This is a photo of a paper mask face",
    "This is a photo of a printed photo of a face",
    "This is a photo of a face shown on a phone screen",
    "This is a photo of a counterfeit face",
    "This is a photo of a forged face",
    "This is a photo of a presentation attack face",
    "This is a photo of a recaptured face",
    "This is a photo of a cut-out photo face",
    "This is a photo of a silicone mask face",
    "This is a spoof face",
    "This is an attack face",
    "This is a fake face",
]

LIVE_TEMPLATES = FLIP_LIVE_TEMPLATES + [
    "This is a photo of a real face",
    "This is a photo of an authentic face",
    "This is a photo of a genuine face",
    "This is a photo of a live face",
    "This is a photo of a bonafide face",
    "This is a photo of a living person's face",
    "This is a photo of a natural face",
    "This is a photo of a real human face",
    "This is a photo of a face captured directly by the camera",
    "This is a photo of a face with real skin",
    "This is a photo of an unaltered face",
    "This is a photo of a face that is not an attack",
    "This is a photo of a true face",
    "This is an authentic face",
    "This is a genuine face",
    "This is a live face",
    "This is a photo of a genuine live person",
]


def default_templates() -> tuple[list[str], list[str]]:
    """Fresh copies of ``(SPOOF_TEMPLATES, LIVE_TEMPLATES)`` (24 and 23 sentences)."""
    return list(SPOOF_TEMPLATES), list(LIVE_TEMPLATES)

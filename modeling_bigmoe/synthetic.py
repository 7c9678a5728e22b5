"""Embedded synthetic multimodal face anti-spoofing benchmark (RGB + depth + NIR), four C/P/S/W-like domains.

A procedural, physically motivated generator (numpy + Pillow, no downloads): parametric heads rendered under
visible and active-NIR light, presentation attacks as physical transformations (prints, cut / wrapped prints,
screen replays, rigid / silicone / paper-craft / mannequin masks, funny-eye and paper glasses), live confounders
(eyeglasses, beards, expressions, melanin spread) and per-domain sensor models (colour cast, resolution, noise,
JPEG, projector dots, depth technology and normalisation, face-region-only preprocessing). Each domain also has
an *attack-session confound* (attack videos captured at a slightly different distance / exposure / NIR gain,
with signs that differ between domains), a deliberate domain-generalisation trap that
``attack_session_confound`` scales (0 = off, 1 = the profile's offsets).

Public API:

* :class:`DomainProfile` (+ :class:`AttackSession`), :data:`DOMAIN_PROFILES` (``"C"``, ``"P"``, ``"S"``, ``"W"``).
* :func:`generate_domain`: numpy arrays for one domain, byte-identical for identical arguments.
* :func:`load_synthetic_benchmark`: a cached ``datasets.DatasetDict`` (train / validation / test, all domains,
  subject-disjoint splits) following the package's data contract.
* :func:`write_contact_sheet` and ``python -m modeling_bigmoe.synthetic --contact-sheet out.png``.

Measured difficulty of the default benchmark (4 domains x 600 rows, 3 frames per video, 64 px, confound on;
``benchmarks/bench_synthetic.py --difficulty``): logistic regression (C=0.05) on each modality average-pooled to
16x16, standardised; intra = a domain's train split -> its test split, LODO = the other three domains' train
splits -> the target's test split; AUC % (C / P / S / W intra / LODO; the last pair is the mean):

    seed 0  RGB  77.1/66.4  74.3/63.4  93.2/81.9   85.6/76.6   mean 82.6/72.1
            ALL  91.8/93.0  78.8/67.9  99.6/99.5   89.7/77.7   mean 90.0/84.5
    seed 1  RGB  91.9/82.5  73.4/76.4  88.4/76.8   91.9/89.7   mean 86.4/81.3
            ALL  91.1/86.0  81.8/73.0  99.8/97.9   94.4/86.4   mean 91.8/85.8

Each test split holds only ~120 rows (40 videos) per domain, so single cells move by 5-10 points between seeds
and even the RGB means by ~4-9; ALL-modality means (intra ~90-92, LODO ~85-86) are steadier. All modalities beat
RGB only, cross-domain is harder than in-domain, P (unseen partial / mannequin attacks) is the hardest target.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import synthetic_render as _R

__all__ = [
    "ATTACK_TYPES",
    "DATA_VERSION",
    "DOMAIN_PROFILES",
    "AttackSession",
    "DomainProfile",
    "generate_domain",
    "load_synthetic_benchmark",
    "split_by_subject",
    "write_contact_sheet",
]

DATA_VERSION = "synthetic-v3.0"
"""Bumped whenever the generator's output changes; part of every cache key."""

ATTACK_TYPES: tuple[str, ...] = _R.ATTACK_TYPES
"""All presentation-attack species (``attack_type`` values of spoof rows); bona fide rows use ``"live"``."""

_CHUNK = (
    64  # frames rendered per work item (bounded memory, thread parallelism); part of the determinism contract
)


def _default_workers() -> int:
    """Threads used by ``generate_domain``: ``$BIGMOE_SYNTH_THREADS`` or min(4, CPUs available)."""
    env = os.environ.get("BIGMOE_SYNTH_THREADS")
    if env:
        return max(1, int(env))
    try:
        n_cpu = len(os.sched_getaffinity(0))
    except AttributeError:
        n_cpu = os.cpu_count() or 1
    return max(1, min(4, n_cpu))


_MIN_SIZE = 16


@dataclass(frozen=True)
class AttackSession:
    """Capture-condition offsets of attack sessions relative to bona fide sessions (a session confound).

    Args:
        dist_cm (float): added to the camera-subject distance of attack frames (cm).
        rgb_gain (float): multiplies the visible ambient and key light of attack frames (> 0).
        ir_gain (float): multiplies the NIR sensor gain of attack frames (> 0).
        ir_amb (float): added to the ambient NIR of attack frames (>= 0).
    """

    dist_cm: float = 0.0
    rgb_gain: float = 1.0
    ir_gain: float = 1.0
    ir_amb: float = 0.0

    def scaled(self, s: float) -> AttackSession:
        """Offsets scaled by ``s`` (0 = no confound, 1 = unchanged, 2 = twice as strong)."""
        return AttackSession(
            dist_cm=self.dist_cm * s,
            rgb_gain=1 + (self.rgb_gain - 1) * s,
            ir_gain=1 + (self.ir_gain - 1) * s,
            ir_amb=self.ir_amb * s,
        )


_DEFAULT_ATTACKS = {"print": 0.5, "replay": 0.5}


@dataclass(frozen=True)
class DomainProfile:
    """Sensor, capture-condition, population and attack-mix parameters of one synthetic domain.

    Ranges ``(lo, hi)`` are sampled uniformly per video. Values are guesses inspired by the real datasets,
    nothing was fitted (see the design notes). Build a variant with ``dataclasses.replace(DOMAIN_PROFILES["W"],
    name="W2", ir_noise=0.08)``; call :meth:`validate` (the generator does) to check it.

    Args:
        name (str): domain name; used in ``domain`` / ``video_id`` / ``subject_id`` values and in the seed.
        attacks (dict[str, float]): relative frequency of each attack species (keys from ``ATTACK_TYPES``).
        live_frac (float): share of bona fide videos in [0, 1].
        attack_session (AttackSession): capture-session confound of attack videos.
        pose_deg (tuple): max |yaw|, |pitch|, |roll| in degrees (yaw, pitch <= 30).
        dist_cm (tuple): camera-face distance range (cm). bg_cm (tuple): background distance range (cm).
        melanin_beta (tuple): Beta(a, b) of the melanin index (population skin-tone spread).
        hair_p (tuple): probabilities of the 6 hair colours (black, dark brown, brown, blond, grey, red).
        p_glasses (float): share of subjects-sessions with eyeglasses (live confounder).
        light_spread_deg (float): cone of key-light directions. ambient, key (tuple): light levels.
        cct (tuple): colour temperature range in [0, 1] (0 warm tungsten, 1 cool daylight).
        ir_ambient (tuple): ambient NIR. ir_skin_scale (float): NIR skin albedo factor (< 1 for 940 nm).
        bright_pupil (float): NIR pupil albedo (coaxial illuminator -> bright). ir_ref_cm (float): distance at
            which the NIR illuminator gives unit irradiance.
        rgb_cast (tuple): white-balance gains; cast_jitter (float): their per-video std. exposure (tuple).
        vignette (float): RGB vignetting in [0, 1]. rgb_res (float): native resolution as a fraction of the
            output size in (0, 1]. rgb_blur (float): optics blur (px at 64 px). rgb_shot, rgb_read (float):
            Poisson-Gaussian noise. rgb_gamma (float), rgb_sat (float). jpeg_rgb: JPEG quality range or None.
        ir_gain, ir_dots (projector-pattern strength), ir_vignette, ir_res, ir_noise, ir_gamma, jpeg_ir: NIR
            sensor (same meanings as for RGB).
        d_res (float): depth native resolution fraction. d_noise (float): depth noise std at 50 cm (cm, grows
            with z^2). d_quant (float): depth quantisation step (cm). d_max_cm (float): max valid range.
        d_dark_thr (float): NIR albedo below which depth is invalid. d_edge_cm (float): depth-step threshold
            for edge dropouts. d_drop (float): random blob dropout fraction. d_screen_holes (float): fraction
            of a replay screen with invalid depth. d_norm (str): "minmax" (per-sample over the face region,
            span >= ``d_min_span_cm``) or "fixed" (working range ``d_range_cm``). jpeg_d: JPEG range or None.
        bg_removed (bool): dataset preprocessing keeps only the face region (all modalities).
        bend_p, glossy_p (float): probabilities of bent / glossy prints. art (float): print / replay
            artefact strength (>= 0; halftone, gamut compression, moire, glare).
    """

    name: str = "custom"
    attacks: dict = field(default_factory=lambda: dict(_DEFAULT_ATTACKS))
    live_frac: float = 0.35
    attack_session: AttackSession = field(default_factory=AttackSession)
    # population / pose / capture
    pose_deg: tuple = (20.0, 12.0, 8.0)
    dist_cm: tuple = (40.0, 70.0)
    bg_cm: tuple = (120.0, 300.0)
    melanin_beta: tuple = (1.5, 2.5)
    hair_p: tuple = (0.35, 0.3, 0.15, 0.1, 0.05, 0.05)
    p_glasses: float = 0.12
    # lighting
    light_spread_deg: float = 50.0
    ambient: tuple = (0.15, 0.45)
    key: tuple = (0.5, 1.1)
    cct: tuple = (0.2, 0.9)
    ir_ambient: tuple = (0.0, 0.05)
    ir_skin_scale: float = 1.0
    bright_pupil: float = 0.05
    ir_ref_cm: float = 50.0
    # RGB sensor
    rgb_cast: tuple = (1.0, 1.0, 1.0)
    cast_jitter: float = 0.04
    exposure: tuple = (0.8, 1.3)
    vignette: float = 0.2
    rgb_res: float = 1.0
    rgb_blur: float = 0.4
    rgb_shot: float = 0.004
    rgb_read: float = 0.01
    rgb_gamma: float = 2.2
    rgb_sat: float = 1.0
    jpeg_rgb: tuple | None = (80, 96)
    # NIR sensor
    ir_gain: float = 0.9
    ir_dots: float = 0.0
    ir_vignette: float = 0.3
    ir_res: float = 1.0
    ir_noise: float = 0.03
    ir_gamma: float = 1.6
    jpeg_ir: tuple | None = (85, 96)
    # depth sensor
    d_res: float = 0.7
    d_noise: float = 0.25
    d_quant: float = 0.1
    d_max_cm: float = 150.0
    d_dark_thr: float = 0.12
    d_edge_cm: float = 2.0
    d_drop: float = 0.02
    d_screen_holes: float = 0.3
    d_norm: str = "minmax"
    d_min_span_cm: float = 8.0
    d_range_cm: tuple = (30.0, 90.0)
    jpeg_d: tuple | None = (85, 96)
    bg_removed: bool = False
    # attack instruments
    bend_p: float = 0.3
    glossy_p: float = 0.3
    art: float = 1.0

    # ------------------------------------------------------------------ validation
    def validate(self) -> DomainProfile:
        """Check every field; raise ``ValueError`` naming the field and the value seen. Returns ``self``."""

        def bad(fname, msg, value):
            raise ValueError(f"DomainProfile {self.name!r}: field {fname!r} {msg}, got {value!r}")

        def num(fname, v):
            try:
                x = float(v)
            except (TypeError, ValueError):
                bad(fname, "must be a number", v)
            if not np.isfinite(x):
                bad(fname, "must be finite", v)
            return x

        def frac(fname):
            v = num(fname, getattr(self, fname))
            if not 0.0 <= v <= 1.0:
                bad(fname, "must be a fraction in [0, 1]", v)

        def nonneg(fname):
            if num(fname, getattr(self, fname)) < 0:
                bad(fname, "must be >= 0", getattr(self, fname))

        def pos(fname):
            if num(fname, getattr(self, fname)) <= 0:
                bad(fname, "must be > 0", getattr(self, fname))

        def rng2(fname, lo_min=None, hi_max=None, strict=False, value=None):
            v = getattr(self, fname) if value is None else value
            if not isinstance(v, (tuple, list)) or len(v) != 2:
                bad(fname, "must be a (low, high) pair", v)
            lo, hi = num(fname, v[0]), num(fname, v[1])
            if lo > hi or (strict and lo == hi):
                bad(fname, "must have low " + ("<" if strict else "<=") + " high", v)
            if lo_min is not None and lo < lo_min:
                bad(fname, f"must be >= {lo_min}", v)
            if hi_max is not None and hi > hi_max:
                bad(fname, f"must be <= {hi_max}", v)

        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            bad("name", "must be a non-empty string without '/'", self.name)
        if not isinstance(self.attacks, dict):
            bad("attacks", "must be a dict {attack_type: weight}", self.attacks)
        for k, w in self.attacks.items():
            if k not in ATTACK_TYPES:
                bad(
                    "attacks",
                    f"has unknown attack type {k!r} (known: {', '.join(ATTACK_TYPES)})",
                    self.attacks,
                )
            if num("attacks", w) < 0:
                bad("attacks", f"weight of {k!r} must be >= 0", self.attacks)
        frac("live_frac")
        if self.live_frac < 1 and sum(float(w) for w in self.attacks.values()) <= 0:
            bad("attacks", "must have a positive total weight when live_frac < 1", self.attacks)
        a = self.attack_session
        if not isinstance(a, AttackSession):
            bad("attack_session", "must be an AttackSession", a)
        num("attack_session.dist_cm", a.dist_cm)
        for f in ("rgb_gain", "ir_gain"):
            if num(f"attack_session.{f}", getattr(a, f)) <= 0:
                bad(f"attack_session.{f}", "must be > 0", getattr(a, f))
        if num("attack_session.ir_amb", a.ir_amb) < 0:
            bad("attack_session.ir_amb", "must be >= 0", a.ir_amb)
        if not isinstance(self.pose_deg, (tuple, list)) or len(self.pose_deg) != 3:
            bad("pose_deg", "must be (yaw, pitch, roll) in degrees", self.pose_deg)
        for i, v in enumerate(self.pose_deg):
            if not 0 <= num("pose_deg", v) <= (30 if i < 2 else 45):
                bad("pose_deg", "must hold 0 <= yaw, pitch <= 30 and 0 <= roll <= 45", self.pose_deg)
        rng2("dist_cm", lo_min=15)
        rng2("bg_cm", lo_min=0)
        if self.bg_cm[0] <= self.dist_cm[1] + 10:
            bad("bg_cm", f"must start > dist_cm high + 10 = {self.dist_cm[1] + 10}", self.bg_cm)
        if (
            not isinstance(self.melanin_beta, (tuple, list))
            or len(self.melanin_beta) != 2
            or any(num("melanin_beta", v) <= 0 for v in self.melanin_beta)
        ):
            bad("melanin_beta", "must hold two Beta parameters > 0", self.melanin_beta)
        if not isinstance(self.hair_p, (tuple, list)) or len(self.hair_p) != 6:
            bad("hair_p", "must hold 6 probabilities", self.hair_p)
        if any(num("hair_p", v) < 0 or v > 1 for v in self.hair_p) or sum(self.hair_p) <= 0:
            bad("hair_p", "must hold fractions in [0, 1] with a positive sum", self.hair_p)
        for f in (
            "p_glasses",
            "bright_pupil",
            "vignette",
            "ir_vignette",
            "d_dark_thr",
            "d_drop",
            "d_screen_holes",
            "bend_p",
            "glossy_p",
        ):
            frac(f)
        for f in ("rgb_res", "ir_res", "d_res"):
            v = num(f, getattr(self, f))
            if not 0.05 <= v <= 1.0:
                bad(f, "must be a resolution fraction in [0.05, 1]", v)
        num("light_spread_deg", self.light_spread_deg)
        if not 0 <= self.light_spread_deg <= 90:
            bad("light_spread_deg", "must be in [0, 90]", self.light_spread_deg)
        rng2("ambient", lo_min=0)
        rng2("key", lo_min=0)
        rng2("cct", lo_min=0, hi_max=1)
        rng2("ir_ambient", lo_min=0)
        rng2("exposure", lo_min=0)
        for f in (
            "ir_skin_scale",
            "ir_ref_cm",
            "rgb_gamma",
            "ir_gamma",
            "ir_gain",
            "d_quant",
            "d_max_cm",
            "d_edge_cm",
            "d_min_span_cm",
        ):
            pos(f)
        for f in (
            "cast_jitter",
            "rgb_blur",
            "rgb_shot",
            "rgb_read",
            "rgb_sat",
            "ir_dots",
            "ir_noise",
            "d_noise",
            "art",
        ):
            nonneg(f)
        if (
            not isinstance(self.rgb_cast, (tuple, list))
            or len(self.rgb_cast) != 3
            or any(num("rgb_cast", v) <= 0 for v in self.rgb_cast)
        ):
            bad("rgb_cast", "must hold 3 positive white-balance gains", self.rgb_cast)
        for f in ("jpeg_rgb", "jpeg_ir", "jpeg_d"):
            v = getattr(self, f)
            if v is not None:
                rng2(f, lo_min=1, hi_max=100, strict=True)
        if self.d_norm not in ("minmax", "fixed"):
            bad("d_norm", "must be 'minmax' or 'fixed'", self.d_norm)
        rng2("d_range_cm", lo_min=0, strict=True)
        if not isinstance(self.bg_removed, (bool, np.bool_)):
            bad("bg_removed", "must be a bool", self.bg_removed)
        return self

    def to_dict(self) -> dict:
        """JSON-able dict of every field (used in cache keys and metadata)."""
        d = dataclasses.asdict(self)
        d["attacks"] = {k: float(v) for k, v in sorted(self.attacks.items())}
        return json.loads(json.dumps(d))

    def _render_dict(self, confound: float) -> dict:
        """The plain dict the numpy renderer reads, with the session confound scaled by ``confound``."""
        d = dataclasses.asdict(self)
        d["attack_session"] = dataclasses.asdict(self.attack_session.scaled(confound))
        d["hair_p"] = list(np.asarray(self.hair_p, float) / float(np.sum(self.hair_p)))
        for k in ("jpeg_rgb", "jpeg_ir", "jpeg_d"):
            d[k] = None if d[k] is None else (int(d[k][0]), int(d[k][1]))
        return d


_BASE = DomainProfile()
DOMAIN_PROFILES: dict[str, DomainProfile] = {
    # CeFA-like: wide ethnic mix, RealSense-ish, print / replay / 3D masks
    "C": dataclasses.replace(
        _BASE,
        name="C",
        melanin_beta=(1.2, 1.2),
        cct=(0.1, 0.9),
        rgb_cast=(1.0, 1.0, 0.95),
        light_spread_deg=60.0,
        attack_session=AttackSession(dist_cm=4.0, rgb_gain=0.9, ir_gain=1.2, ir_amb=0.02),
        attacks={"print": 0.2, "print_wrap": 0.1, "replay": 0.3, "mask_rigid": 0.2, "mask_silicone": 0.2},
    ),
    # PADISI-like: studio capture, active-stereo IR with projector dots, many PAI species incl. partial
    "P": dataclasses.replace(
        _BASE,
        name="P",
        melanin_beta=(1.5, 3.0),
        ambient=(0.35, 0.55),
        key=(0.4, 0.7),
        light_spread_deg=25.0,
        cct=(0.6, 0.8),
        rgb_cast=(1.02, 1.0, 0.93),
        rgb_res=1.0,
        rgb_blur=0.3,
        jpeg_rgb=None,
        jpeg_ir=None,
        jpeg_d=None,
        ir_dots=0.2,
        ir_gain=1.0,
        d_res=0.55,
        d_noise=0.6,
        d_quant=0.1,
        d_edge_cm=1.5,
        d_norm="fixed",
        d_range_cm=(35.0, 85.0),
        bright_pupil=0.05,
        d_screen_holes=0.7,
        attack_session=AttackSession(dist_cm=-5.0, rgb_gain=1.1, ir_gain=0.85, ir_amb=0.0),
        attacks={
            "print": 0.1,
            "print_wrap": 0.05,
            "replay": 0.15,
            "mask_rigid": 0.1,
            "mask_silicone": 0.15,
            "mask_mannequin": 0.1,
            "partial_funny": 0.15,
            "partial_paperglasses": 0.2,
        },
    ),
    # SURF-like: print-only attacks (flat / bent / cut), low-quality JPEG, background removed
    "S": dataclasses.replace(
        _BASE,
        name="S",
        melanin_beta=(4.0, 3.0),
        hair_p=(0.7, 0.25, 0.05, 0.0, 0.0, 0.0),
        cct=(0.3, 0.6),
        rgb_res=0.55,
        rgb_blur=0.8,
        rgb_read=0.02,
        jpeg_rgb=(55, 80),
        jpeg_ir=(60, 85),
        jpeg_d=(60, 85),
        ir_gain=0.7,
        ir_noise=0.05,
        ir_res=0.8,
        d_res=0.5,
        d_quant=0.5,
        d_drop=0.05,
        bg_removed=True,
        bright_pupil=0.5,
        bend_p=0.5,
        dist_cm=(35.0, 60.0),
        p_glasses=0.2,
        attack_session=AttackSession(dist_cm=-3.0, rgb_gain=1.15, ir_gain=1.25, ir_amb=0.03),
        attacks={"print": 0.4, "print_cut": 0.6},
    ),
    # WMCA-like: SR300-ish colour cast, fixed-range depth, many PAIs incl. paper masks, funny eyes
    "W": dataclasses.replace(
        _BASE,
        name="W",
        melanin_beta=(1.5, 4.0),
        cct=(0.7, 1.0),
        rgb_cast=(0.9, 1.04, 1.06),
        ambient=(0.3, 0.5),
        key=(0.3, 0.8),
        light_spread_deg=35.0,
        rgb_sat=0.85,
        rgb_gamma=2.0,
        ir_gain=0.75,
        ir_gamma=1.3,
        ir_skin_scale=0.85,
        d_res=0.8,
        d_noise=0.15,
        d_quant=0.05,
        d_norm="fixed",
        d_range_cm=(30.0, 80.0),
        jpeg_rgb=None,
        jpeg_ir=None,
        jpeg_d=None,
        exposure=(0.6, 1.0),
        attack_session=AttackSession(dist_cm=6.0, rgb_gain=0.85, ir_gain=0.8, ir_amb=0.0),
        attacks={
            "print": 0.2,
            "replay": 0.2,
            "mask_paper": 0.15,
            "mask_rigid": 0.1,
            "mask_silicone": 0.1,
            "mask_mannequin": 0.05,
            "partial_funny": 0.1,
            "partial_paperglasses": 0.1,
        },
    ),
}
"""The four built-in domains, loosely inspired by CeFA (C), PADISI (P), CASIA-SURF (S) and WMCA (W)."""


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------


def _resolve_profile(profile_or_name, argname="profile_or_name") -> DomainProfile:
    if isinstance(profile_or_name, DomainProfile):
        return profile_or_name.validate()
    if isinstance(profile_or_name, str):
        if profile_or_name not in DOMAIN_PROFILES:
            raise ValueError(
                f"{argname}: unknown domain name {profile_or_name!r}; known: {sorted(DOMAIN_PROFILES)} "
                "(or pass a DomainProfile)"
            )
        return DOMAIN_PROFILES[profile_or_name].validate()
    raise ValueError(
        f"{argname}: expected a domain name or a DomainProfile, got {type(profile_or_name).__name__}"
    )


def _check_int(name, v, lo):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {v!r}")
    if v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    return int(v)


def _check_confound(v):
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"attack_session_confound must be a number or bool, got {v!r}") from None
    if not (np.isfinite(x) and x >= 0):
        raise ValueError(f"attack_session_confound must be finite and >= 0, got {v!r}")
    return x


def _quota(n: int, probs: np.ndarray) -> np.ndarray:
    """Largest-remainder integer allocation of ``n`` items over ``probs`` (sums to n)."""
    raw = probs * n
    cnt = np.floor(raw).astype(np.int64)
    rest = n - int(cnt.sum())
    if rest > 0:
        order = np.argsort(-(raw - cnt), kind="stable")
        cnt[order[:rest]] += 1
    return cnt


def _name_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")


# ---------------------------------------------------------------------------------------------------------------
# generation
# ---------------------------------------------------------------------------------------------------------------


def generate_domain(
    profile_or_name,
    n: int,
    *,
    size: int = 64,
    seed: int = 0,
    frames_per_video: int = 1,
    attack_session_confound: float = 1.0,
    videos_per_subject: int = 4,
    num_workers: int | None = None,
    progress_callback=None,
) -> dict:
    """Render ``n`` RGB / depth / NIR triplets of one domain; byte-identical output for identical arguments.

    Videos (``frames_per_video`` consecutive rows; the last one may be shorter) share subject, attack instrument,
    scene and lighting; frames differ by camera shake, distance jitter and sensor noise. Attack types are
    allocated to videos by largest remainder over ``live_frac`` / ``attacks`` (so small ``n`` still honours the
    mix), in a seeded random order. Subjects (about ``videos_per_subject`` videos each, at least 3 subjects) are
    dealt a balanced share of live and attack videos; a subject is the identity shown live, printed, replayed or
    moulded into a mask (mask wearers and cut-print holders are anonymous attackers).

    Args:
        profile_or_name: a ``DomainProfile`` or a key of ``DOMAIN_PROFILES``.
        n (int): number of frames (rows), >= 1.
        size (int): image side in pixels, >= 16 (64 and 112 are the usual choices).
        seed (int): base seed (combined with the domain name).
        frames_per_video (int): frames per video, >= 1.
        attack_session_confound (float): scales the profile's attack-session offsets (0 = off, 1 = as defined).
        videos_per_subject (int): average videos per subject, >= 1.
        num_workers (int): rendering threads (default ``$BIGMOE_SYNTH_THREADS`` or min(4, CPUs)); the output does
            not depend on it.
        progress_callback: optional ``callable(frames_done_in_this_call)``.

    Returns:
        dict with ``rgb`` uint8 (n,S,S,3), ``depth`` uint8 (n,S,S), ``ir`` uint8 (n,S,S), ``label`` int64 (n,)
        (1 live, 0 spoof), ``attack_type`` / ``subject_id`` / ``video_id`` / ``domain`` (lists of str),
        ``gt_depth`` float32 (n,S,S) (pseudo-depth target: relative face depth for live rows, zeros for spoofs).
    """
    prof = _resolve_profile(profile_or_name)
    n = _check_int("n", n, 1)
    size = _check_int("size", size, _MIN_SIZE)
    seed = _check_int("seed", seed, 0)
    fpv = _check_int("frames_per_video", frames_per_video, 1)
    vps = _check_int("videos_per_subject", videos_per_subject, 1)
    if num_workers is not None:
        num_workers = _check_int("num_workers", num_workers, 1)
    dom = prof._render_dict(_check_confound(attack_session_confound))
    S = size

    ss = np.random.SeedSequence([seed, _name_key(prof.name)])
    ss_layout, ss_subj, ss_render = ss.spawn(3)
    layout = np.random.default_rng(ss_layout)

    # videos, their kinds and subjects
    n_videos = -(-n // fpv)
    counts = np.full(n_videos, fpv, np.int64)
    counts[-1] = n - fpv * (n_videos - 1)
    kinds = ["live"] + [k for k in ATTACK_TYPES if float(prof.attacks.get(k, 0.0)) > 0]
    w = np.array([float(prof.attacks[k]) for k in kinds[1:]], float)
    probs = np.concatenate([[prof.live_frac], (1 - prof.live_frac) * (w / w.sum() if w.size else w)])
    vkind = np.repeat(np.arange(len(kinds)), _quota(n_videos, probs / probs.sum()))
    vkind = vkind[layout.permutation(n_videos)]
    n_subj = max(3, int(round(n_videos / vps)))
    subj_perm = layout.permutation(n_subj)
    vsubj = np.empty(n_videos, np.int64)
    by_kind = np.argsort(vkind, kind="stable")  # live first, then attack kinds: deal them round-robin
    vsubj[by_kind] = subj_perm[np.arange(n_videos) % n_subj]
    table = _R.sample_identity(np.random.default_rng(ss_subj), n_subj, dom)

    rgb = np.zeros((n, S, S, 3), np.uint8)
    dep = np.zeros((n, S, S), np.uint8)
    ir = np.zeros((n, S, S), np.uint8)
    gt = np.zeros((n, S, S), np.float32)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    # work items: (kind, chunk of videos, own seed) -- results do not depend on the order or thread they run in
    items = []
    per_chunk = max(1, _CHUNK // fpv)
    for j, kind_seq in enumerate(ss_render.spawn(len(kinds))):
        vids = np.nonzero(vkind == j)[0]
        chunks = [vids[c : c + per_chunk] for c in range(0, len(vids), per_chunk)]
        items += [(kinds[j], vv, cs) for vv, cs in zip(chunks, kind_seq.spawn(len(chunks)))]

    def render(item):
        kd, vv, cs = item
        scene_rng, frame_rng = (np.random.default_rng(s) for s in cs.spawn(2))
        rows = np.concatenate([np.arange(starts[v], starts[v] + counts[v]) for v in vv])
        sidx = vsubj[np.repeat(vv, counts[vv])]
        subj = {k: table[k][sidx] for k in _R.INTRINSIC_KEYS}
        r, d, i_, g = _R.render_group(
            _R.VideoRNG(scene_rng, counts[vv]), frame_rng, kd, len(rows), dom, S, subj
        )
        rgb[rows], dep[rows], ir[rows], gt[rows] = r, d, i_, g
        return len(rows)

    workers = min(len(items), _default_workers() if num_workers is None else num_workers)
    if workers <= 1:
        done = map(render, items)
        for k in done:
            if progress_callback is not None:
                progress_callback(k)
    else:
        with ThreadPoolExecutor(max_workers=workers) as ex:  # numpy / Pillow release the GIL
            for k in ex.map(render, items):
                if progress_callback is not None:
                    progress_callback(k)

    vid_of_row = np.repeat(np.arange(n_videos), counts)
    kind_of_row = vkind[vid_of_row]
    name = prof.name
    return dict(
        rgb=rgb,
        depth=dep,
        ir=ir,
        label=(kind_of_row == 0).astype(np.int64),
        attack_type=[kinds[k] for k in kind_of_row],
        subject_id=[f"{name}/s{vsubj[v]:05d}" for v in vid_of_row],
        video_id=[f"{name}/{v:06d}" for v in vid_of_row],
        domain=[name] * n,
        gt_depth=gt,
    )


def split_by_subject(
    subject_ids: Sequence[str], fractions: Sequence[float] = (0.6, 0.2, 0.2), *, seed: int = 0
) -> np.ndarray:
    """Assign every row to split 0 / 1 / 2 (train / validation / test) by subject, so no subject is shared.

    Subjects are shuffled with ``seed`` and cut by ``fractions`` (largest remainder; every split with a positive
    fraction gets at least one subject when there are enough subjects). Returns an int array (len(subject_ids),).
    """
    fr = _check_fractions(fractions)
    uniq = sorted(set(subject_ids))
    order = np.random.default_rng(np.random.SeedSequence([seed, 7919])).permutation(len(uniq))
    cnt = _quota(len(uniq), fr)
    positive = np.nonzero(fr > 0)[0]
    if len(uniq) >= len(positive):  # no empty split: move one subject from the largest
        for k in positive:
            if cnt[k] == 0:
                cnt[int(np.argmax(cnt))] -= 1
                cnt[k] = 1
    split_of_subject = np.repeat(np.arange(3), cnt)[np.argsort(order)]
    lookup = dict(zip(uniq, split_of_subject))
    return np.array([lookup[s] for s in subject_ids], np.int64)


def _check_fractions(fractions):
    try:
        fr = np.asarray([float(v) for v in fractions], float)
    except (TypeError, ValueError):
        raise ValueError(f"split_fractions must be 3 numbers, got {fractions!r}") from None
    if (
        fr.shape != (3,)
        or np.any(~np.isfinite(fr))
        or np.any(fr < 0)
        or np.any(fr > 1)
        or abs(fr.sum() - 1) > 1e-6
        or fr[0] <= 0
    ):
        raise ValueError(
            f"split_fractions must be 3 fractions in [0, 1] summing to 1 with train > 0, got {fractions!r}"
        )
    return fr


# ---------------------------------------------------------------------------------------------------------------
# datasets.DatasetDict + cache
# ---------------------------------------------------------------------------------------------------------------


def _features():
    import datasets

    return datasets.Features(
        {
            "rgb": datasets.Image(),
            "depth": datasets.Image(),
            "ir": datasets.Image(),
            "label": datasets.ClassLabel(names=["spoof", "live"]),
            "domain": datasets.Value("string"),
            "attack_type": datasets.Value("string"),
            "subject_id": datasets.Value("string"),
            "video_id": datasets.Value("string"),
        }
    )


def _png(a: np.ndarray) -> dict:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", compress_level=1)
    return {"bytes": buf.getvalue(), "path": None}


def _default_cache_root() -> Path:
    env = os.environ.get("BIGMOE_CACHE")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "modeling_bigmoe"
    return base / "synthetic"


_META = "synthetic_meta.json"


def load_synthetic_benchmark(
    domains: Iterable = ("C", "P", "S", "W"),
    *,
    samples_per_domain: int = 600,
    size: int = 64,
    seed: int = 0,
    frames_per_video: int = 3,
    split_fractions: Sequence[float] = (0.6, 0.2, 0.2),
    attack_session_confound: float = 1.0,
    cache_dir=None,
    force: bool = False,
    progress: bool = True,
):
    """Build (or load from the disk cache) the synthetic benchmark as a ``datasets.DatasetDict``.

    Splits ``train`` / ``validation`` / ``test`` each hold rows of every domain (``domain`` column) with features
    ``rgb`` (RGB image), ``depth`` / ``ir`` (L images), ``label`` (ClassLabel spoof=0 / live=1), ``domain``,
    ``attack_type``, ``subject_id``, ``video_id`` (strings). Splits are subject-disjoint inside every domain.
    Defaults (4 x 600 rows at 64 px, 3 frames per video) keep leave-one-domain-out training of tiny models on
    CPU within minutes.

    The cache lives in ``<cache_dir>/<key>`` where ``cache_dir`` defaults to ``$BIGMOE_CACHE/synthetic`` or
    ``~/.cache/modeling_bigmoe/synthetic`` and ``key`` hashes every argument, every profile field and
    ``DATA_VERSION``. It is generated into a temporary folder beside it and moved in place with ``os.replace``,
    so an interrupted run leaves nothing half-written. ``force=True`` regenerates.

    Args:
        domains: names of ``DOMAIN_PROFILES`` and / or ``DomainProfile`` objects (unique names).
        samples_per_domain (int): rows per domain, >= 1.
        size (int): image side, >= 16.
        seed (int): base seed.
        frames_per_video (int): frames per video, >= 1.
        split_fractions: (train, validation, test) share of each domain's subjects.
        attack_session_confound (float or bool): session-confound strength (0 / False = off).
        cache_dir: root folder of the cache (str or Path), or None for the default.
        force (bool): regenerate even when cached.
        progress (bool): show a tqdm progress bar while generating.
    """
    import datasets

    if isinstance(domains, (str, DomainProfile)):
        domains = (domains,)
    profiles = [_resolve_profile(d, "domains") for d in domains]
    if not profiles:
        raise ValueError("domains must name at least one domain, got an empty sequence")
    names = [p.name for p in profiles]
    if len(set(names)) != len(names):
        raise ValueError(f"domains must have unique names, got {names}")
    n = _check_int("samples_per_domain", samples_per_domain, 1)
    size = _check_int("size", size, _MIN_SIZE)
    seed = _check_int("seed", seed, 0)
    fpv = _check_int("frames_per_video", frames_per_video, 1)
    fr = _check_fractions(split_fractions)
    conf = _check_confound(attack_session_confound)

    params = dict(
        data_version=DATA_VERSION,
        domains=[p.to_dict() for p in profiles],
        samples_per_domain=n,
        size=size,
        seed=seed,
        frames_per_video=fpv,
        split_fractions=[float(v) for v in fr],
        attack_session_confound=conf,
    )
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:20]
    root = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_root()
    final = root / key
    if not force and (final / _META).is_file():
        return datasets.load_from_disk(str(final))

    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        split_rows = {0: [], 1: [], 2: []}
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n * len(profiles), desc="synthetic FAS", unit="triplet")
        try:
            for prof in profiles:
                if bar is not None:
                    bar.set_postfix(domain=prof.name)
                data = generate_domain(
                    prof,
                    n,
                    size=size,
                    seed=seed,
                    frames_per_video=fpv,
                    attack_session_confound=conf,
                    progress_callback=bar.update if bar is not None else None,
                )
                split = split_by_subject(data["subject_id"], fr, seed=seed)
                for i in range(n):
                    split_rows[int(split[i])].append(
                        dict(
                            rgb=_png(data["rgb"][i]),
                            depth=_png(data["depth"][i]),
                            ir=_png(data["ir"][i]),
                            label=int(data["label"][i]),
                            domain=data["domain"][i],
                            attack_type=data["attack_type"][i],
                            subject_id=data["subject_id"][i],
                            video_id=data["video_id"][i],
                        )
                    )
        finally:
            if bar is not None:
                bar.close()
        feats = _features()
        dd = datasets.DatasetDict(
            {
                name: datasets.Dataset.from_list(split_rows[k], features=feats)
                if split_rows[k]
                else datasets.Dataset.from_dict({c: [] for c in feats}, features=feats)
                for k, name in enumerate(("train", "validation", "test"))
            }
        )
        bars_on = datasets.is_progress_bar_enabled()
        if not progress and bars_on:
            datasets.disable_progress_bars()
        try:
            dd.save_to_disk(str(tmp), num_shards={k: 1 for k in dd})  # 1 shard: empty splits reload too
        finally:
            if not progress and bars_on:
                datasets.enable_progress_bars()
        (tmp / _META).write_text(json.dumps(params, indent=1, sort_keys=True))
        if (
            final.exists()
        ):  # force=True, or a concurrent writer finished first: swap atomically, then drop old
            old = root / f".old-{key}-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(final))


# ---------------------------------------------------------------------------------------------------------------
# contact sheet
# ---------------------------------------------------------------------------------------------------------------


def write_contact_sheet(
    path,
    *,
    size: int = 64,
    seed: int = 0,
    domains: Iterable = ("C", "P", "S", "W"),
    attack_types: Sequence[str] | None = None,
    scale: int = 2,
    attack_session_confound: float = 1.0,
) -> Path:
    """Write a labelled PNG grid: rows = live + attack types, columns = domains x (RGB | Depth | IR).

    Every attack type is drawn under every domain's sensor model (also species outside the domain's own mix;
    their row label is the species, the column header the domain). ``scale`` enlarges pixels (nearest).
    Returns the path written (atomically: temp file then ``os.replace``).
    """
    from PIL import Image, ImageDraw

    size = _check_int("size", size, _MIN_SIZE)
    scale = _check_int("scale", scale, 1)
    profiles = [
        _resolve_profile(d, "domains")
        for d in ((domains,) if isinstance(domains, (str, DomainProfile)) else domains)
    ]
    kinds = ["live"] + list(ATTACK_TYPES if attack_types is None else attack_types)
    for k in kinds[1:]:
        if k not in ATTACK_TYPES:
            raise ValueError(f"attack_types: unknown attack type {k!r}; known: {ATTACK_TYPES}")
    c = size * scale
    lab_w, head_h, gap = 150, 22, 6
    W = lab_w + len(profiles) * (3 * c + gap)
    H = head_h + len(kinds) * c
    sheet = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(sheet)
    for di, prof in enumerate(profiles):
        x0 = lab_w + di * (3 * c + gap)
        draw.text((x0 + 2, 4), f"domain {prof.name}: RGB | depth | IR", fill="black")
        for ki, kd in enumerate(kinds):
            p1 = (
                dataclasses.replace(prof, live_frac=1.0)
                if kd == "live"
                else dataclasses.replace(prof, live_frac=0.0, attacks={kd: 1.0})
            )
            out = generate_domain(
                p1, 1, size=size, seed=seed, attack_session_confound=attack_session_confound
            )
            tiles = [
                Image.fromarray(out["rgb"][0]),
                Image.fromarray(out["depth"][0]).convert("RGB"),
                Image.fromarray(out["ir"][0]).convert("RGB"),
            ]
            for t, im in enumerate(tiles):
                sheet.paste(im.resize((c, c), Image.NEAREST), (x0 + t * c, head_h + ki * c))
    for ki, kd in enumerate(kinds):
        draw.text((4, head_h + ki * c + c // 2 - 6), kd, fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        sheet.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def main(argv=None) -> int:
    """Command line: ``python -m modeling_bigmoe.synthetic --contact-sheet out.png [--size 64] [--seed 0]``."""
    ap = argparse.ArgumentParser(
        prog="python -m modeling_bigmoe.synthetic", description=__doc__.split("\n")[0]
    )
    ap.add_argument(
        "--contact-sheet", metavar="PNG", help="write a contact sheet of every domain and attack type"
    )
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--domains", default="C,P,S,W", help="comma-separated built-in domain names")
    ap.add_argument(
        "--build", action="store_true", help="build (or load) the default benchmark into the cache"
    )
    ap.add_argument("--samples-per-domain", type=int, default=600)
    args = ap.parse_args(argv)
    doms = [d for d in args.domains.split(",") if d]
    if not args.contact_sheet and not args.build:
        ap.error("nothing to do: pass --contact-sheet PNG and/or --build")
    if args.contact_sheet:
        p = write_contact_sheet(
            args.contact_sheet, size=args.size, seed=args.seed, domains=doms, scale=args.scale
        )
        print(f"wrote {p}")
    if args.build:
        dd = load_synthetic_benchmark(
            doms, samples_per_domain=args.samples_per_domain, size=args.size, seed=args.seed
        )
        print(dd)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

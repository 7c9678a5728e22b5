"""Training-time augmentation for aligned RGB / Depth / IR face tensors.

The MMDA / BIG-MoE harness (method-bigmoe.md §5) augments with one shared random horizontal flip per
sample plus per-image Gaussian noise, brightness, per-channel add and gamma. `FasAugmentation` does this
on batched tensors, vectorised, seeded, out of place.

Where it sits in the pipeline (see :mod:`modeling_bigmoe.image_processing_bigmoe`): decode -> resize ->
rescale to 0..1 -> **augmentation** -> normalisation -> fill of missing modalities. The collator calls
the image processor with ``do_normalize=False``, applies this augmentation, then
``processor.normalize_modalities``. Augmentation therefore sees 0..1 images and never sees the fill value.

Per sample ``i`` and modality ``m`` (an "image"), in this order:

1. flip: with probability ``flip_p`` sample ``i`` is mirrored left-right, the same decision for all of
   its modalities (they are pixel-aligned);
2. brightness: ``x <- x * f``, ``f ~ U(1 - brightness, 1 + brightness)`` per image;
3. channel add: ``x_c <- x_c + a_c``, ``a_c ~ U(-channel_add, channel_add)`` per image and channel; for
   modalities listed in ``gray_modalities`` (depth and IR, single-channel images repeated to three) one
   offset is shared by the three channels so they stay equal;
4. clamp to [0, 1], then gamma: ``x <- x ** g``, ``g ~ U(1 - gamma, 1 + gamma)`` per image;
5. noise: ``x <- x + N(0, noise_std^2)`` per pixel (shared across the channels of gray modalities);
6. clamp to [0, 1] if ``clamp``.

A zero strength disables a step (and draws no random numbers for it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

# Keys accepted for each modality, in the order random numbers are drawn.
_MODALITY_ALIASES = (
    ("pixel_values", "rgb"),
    ("depth_pixel_values", "depth"),
    ("ir_pixel_values", "ir"),
)


class FasAugmentation:
    """Seeded, vectorised photometric + flip augmentation for a dict of modality tensors.

    Args:
        flip_p (`float`, defaults to 0.5): probability of the shared horizontal flip per sample.
        noise_std (`float`, defaults to 0.02): standard deviation of the additive Gaussian pixel noise
            (0..1 scale).
        brightness (`float`, defaults to 0.2): multiplicative factor range ``1 ± brightness`` per image.
        channel_add (`float`, defaults to 0.05): additive per-channel offset range ``± channel_add``.
        gamma (`float`, defaults to 0.2): gamma exponent range ``1 ± gamma`` per image (must be < 1).
        seed (`int`, optional): seed of the private generator; same seed and same calls give the same
            outputs. ``None`` uses torch's global generator (so ``torch.manual_seed`` controls it). In a
            DataLoader worker the private generator is re-seeded once with ``seed + worker_id`` so that
            workers do not repeat each other.
        gray_modalities (`tuple[str]`, defaults to ``("depth", "ir")``): modalities whose three channels
            are copies of one; their channel offset and noise are shared across channels.
        clamp (`bool`, defaults to True): clamp the result to [0, 1].

    Call it on a mapping with any of ``pixel_values``/``rgb``, ``depth_pixel_values``/``depth``,
    ``ir_pixel_values``/``ir`` as ``(b, 3, H, W)`` float tensors on the 0..1 scale (``None`` values and
    other keys pass through unchanged). Returns a new dict; the inputs are never modified.
    """

    def __init__(
        self,
        flip_p: float = 0.5,
        noise_std: float = 0.02,
        brightness: float = 0.2,
        channel_add: float = 0.05,
        gamma: float = 0.2,
        seed: int | None = None,
        *,
        gray_modalities: Sequence[str] = ("depth", "ir"),
        clamp: bool = True,
    ):
        checks = {
            "flip_p": (flip_p, 0.0, 1.0),
            "noise_std": (noise_std, 0.0, float("inf")),
            "brightness": (brightness, 0.0, 1.0),
            "channel_add": (channel_add, 0.0, 1.0),
            "gamma": (gamma, 0.0, 0.999),
        }
        for name, (value, lo, hi) in checks.items():
            if not (lo <= float(value) <= hi):
                raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
        unknown = set(gray_modalities) - {"rgb", "depth", "ir"}
        if unknown:
            raise ValueError(f"gray_modalities must be among ('rgb', 'depth', 'ir'), got {sorted(unknown)}")
        self.flip_p = float(flip_p)
        self.noise_std = float(noise_std)
        self.brightness = float(brightness)
        self.channel_add = float(channel_add)
        self.gamma = float(gamma)
        self.seed = seed
        self.gray_modalities = tuple(gray_modalities)
        self.clamp = bool(clamp)
        self._worker_seeded = False
        self.generator = self._make_generator(seed)

    @staticmethod
    def _make_generator(seed: int | None) -> torch.Generator | None:
        if seed is None:
            return None
        gen = torch.Generator()
        gen.manual_seed(int(seed))
        return gen

    def reseed(self, seed: int) -> None:
        """Restart the private generator from ``seed``."""
        self.seed = seed
        self.generator = self._make_generator(seed)

    def __repr__(self) -> str:
        return (
            f"FasAugmentation(flip_p={self.flip_p}, noise_std={self.noise_std}, "
            f"brightness={self.brightness}, "
            f"channel_add={self.channel_add}, gamma={self.gamma}, seed={self.seed})"
        )

    def _maybe_worker_reseed(self) -> None:
        if self._worker_seeded or self.seed is None:
            return
        info = torch.utils.data.get_worker_info()
        if info is not None:
            self.generator = self._make_generator(int(self.seed) + int(info.id))
        self._worker_seeded = True

    def _rand(self, *shape) -> torch.Tensor:
        return torch.rand(*shape, generator=self.generator)

    def _randn(self, *shape) -> torch.Tensor:
        return torch.randn(*shape, generator=self.generator)

    def __call__(self, inputs: Mapping[str, torch.Tensor | None]) -> dict:
        """Augment every modality tensor in ``inputs``; see the class docstring."""
        if not isinstance(inputs, Mapping):
            raise ValueError(f"inputs must be a dict of modality tensors, got {type(inputs).__name__}")
        self._maybe_worker_reseed()
        found = []
        for key_pair in _MODALITY_ALIASES:
            for key in key_pair:
                if inputs.get(key) is not None:
                    found.append((key, key_pair[1]))
        if not found:
            raise ValueError(
                "inputs hold no modality tensor: expected any of "
                + ", ".join(k for pair in _MODALITY_ALIASES for k in pair)
            )
        batch = None
        for key, _ in found:
            x = inputs[key]
            if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(f"inputs[{key!r}] must be a (b, 3, H, W) tensor, got {shape}")
            if not x.is_floating_point():
                raise ValueError(f"inputs[{key!r}] must be a float tensor on the 0..1 scale, got {x.dtype}")
            if batch is None:
                batch = x.shape[0]
            elif x.shape[0] != batch:
                raise ValueError(
                    f"batch sizes differ: inputs[{key!r}] has {x.shape[0]} samples, expected {batch}"
                )

        flip = self._rand(batch) < self.flip_p if self.flip_p > 0 else torch.zeros(batch, dtype=torch.bool)
        out = dict(inputs)
        for key, modality in found:
            out[key] = self._augment_one(inputs[key], flip, gray=modality in self.gray_modalities)
        return out

    def _augment_one(self, x: torch.Tensor, flip: torch.Tensor, gray: bool) -> torch.Tensor:
        b, c, h, w = x.shape
        dev, dt = x.device, x.dtype
        y = torch.where(flip.to(dev).view(b, 1, 1, 1), x.flip(-1), x)  # new tensor, input untouched
        if self.brightness > 0:
            f = 1.0 + self.brightness * (2.0 * self._rand(b, 1, 1, 1) - 1.0)
            y = y * f.to(device=dev, dtype=dt)
        if self.channel_add > 0:
            a = self.channel_add * (2.0 * self._rand(b, 1 if gray else c, 1, 1) - 1.0)
            y = y + a.to(device=dev, dtype=dt)
        if self.gamma > 0:
            g = 1.0 + self.gamma * (2.0 * self._rand(b, 1, 1, 1) - 1.0)
            y = y.clamp(0.0, 1.0) ** g.to(device=dev, dtype=dt)
        if self.noise_std > 0:
            n = self.noise_std * self._randn(b, 1 if gray else c, h, w)
            y = y + n.to(device=dev, dtype=dt)
        if self.clamp:
            y = y.clamp(0.0, 1.0)
        return y


__all__ = ["FasAugmentation"]

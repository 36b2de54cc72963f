"""Augmentation recipes: what each view of an image goes through.

A :class:`Recipe` is plain data. The DALI loader (:mod:`ssrr.pipelines.loader`) and the torchvision reference
(:mod:`ssrr.pipelines.reference`) both read it, so the two implement the same recipe by construction.

The relational / SimCLR recipe (method.md), per view and independently:

1. random resized crop to the output side: area fraction U(0.08, 1), aspect ratio log-uniform in (3/4, 4/3),
   bilinear (torchvision's sampling: up to 10 tries, then the centre-crop fallback);
2. horizontal flip with p = 0.5;
3. with p = 0.8 colour jitter: brightness, contrast and saturation factors U(0.2, 1.8), hue shift
   U(-0.2, 0.2) of the hue circle (+-72 degrees);
4. grayscale with p = 0.2;
5. to float, normalised with the dataset's mean and std.
"""

from __future__ import annotations

from dataclasses import dataclass

from ssrr.errors import SsrrError

NAMES = ("relational", "simclr", "eval", "crop_flip", "flip", "rotation")
CROPS = ("resized", "pad", "none")


@dataclass(frozen=True)
class Recipe:
    """What each of the ``views`` views of an image goes through.

    Attributes:
        name: "relational" | "simclr" | "eval" | "crop_flip" | "flip" | "rotation".
        views: V views per image (K for relational, 2 for SimCLR, 1 for eval / crop_flip / flip, 4 for rotation).
            Every view is drawn independently, except for ``rotate`` recipes where view r is view 0 turned by
            r * 90 degrees (counter-clockwise, ``torch.rot90(x, r, dims=(-2, -1))``).
        crop: "resized" (random resized crop), "pad" (pad ``padding`` zeros each side, random crop of the
            original size), or "none".
        crop_scale: area fraction range of the random resized crop.
        crop_ratio: aspect ratio (width / height) range of the random resized crop, sampled log-uniformly.
        padding: zero padding of the "pad" crop, pixels on each side.
        flip_p: probability of a horizontal flip.
        jitter_p: probability of applying the colour jitter (brightness, contrast, saturation, hue together).
        brightness, contrast, saturation: factors are drawn from U(max(0, 1 - x), 1 + x).
        hue: the hue shift is drawn from U(-hue, hue), in fractions of the hue circle (at most 0.5).
        grayscale_p: probability of converting the view to grayscale (after the jitter).
        rotate: the views are the rotations 0, 90, 180, 270 degrees of one augmented image.
    """

    name: str
    views: int
    crop: str = "none"
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    padding: int = 0
    flip_p: float = 0.0
    jitter_p: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    grayscale_p: float = 0.0
    rotate: bool = False

    def __post_init__(self) -> None:
        if self.name not in NAMES:
            raise SsrrError(f"unknown recipe '{self.name}' (known: {', '.join(NAMES)})")
        if self.views < 1:
            raise SsrrError(f"recipe {self.name}: views must be at least 1, got {self.views}")
        if self.crop not in CROPS:
            raise SsrrError(f"recipe {self.name}: crop must be one of {', '.join(CROPS)}, got '{self.crop}'")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise SsrrError(f"recipe {self.name}: crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        lo, hi = self.crop_ratio
        if not 0 < lo <= hi:
            raise SsrrError(f"recipe {self.name}: crop_ratio must satisfy 0 < low <= high, got {self.crop_ratio}")
        if self.padding < 0 or (self.crop == "pad") != (self.padding > 0):
            raise SsrrError(f"recipe {self.name}: padding {self.padding} needs crop='pad' (and crop='pad' needs it)")
        for field in ("flip_p", "jitter_p", "grayscale_p"):
            value = getattr(self, field)
            if not 0.0 <= value <= 1.0:
                raise SsrrError(f"recipe {self.name}: {field} must be a probability, got {value}")
        for field in ("brightness", "contrast", "saturation"):
            if getattr(self, field) < 0:
                raise SsrrError(f"recipe {self.name}: {field} must be non-negative")
        if not 0.0 <= self.hue <= 0.5:
            raise SsrrError(f"recipe {self.name}: hue must be in [0, 0.5], got {self.hue}")
        if self.rotate and self.views > 4:
            raise SsrrError(f"recipe {self.name}: at most 4 rotation views, got {self.views}")

    @property
    def colour(self) -> bool:
        """Whether the recipe changes colours (jitter or grayscale)."""
        jitter = self.jitter_p > 0 and (self.brightness or self.contrast or self.saturation or self.hue)
        return bool(jitter) or self.grayscale_p > 0

    def factor_range(self, strength: float) -> tuple[float, float]:
        """torchvision's range of a multiplicative jitter factor of the given strength."""
        return max(0.0, 1.0 - strength), 1.0 + strength


def _simclr_like(name: str, views: int, crop_min: float = 0.08) -> Recipe:
    return Recipe(
        name=name,
        views=views,
        crop="resized",
        crop_scale=(crop_min, 1.0),
        crop_ratio=(3 / 4, 4 / 3),
        flip_p=0.5,
        jitter_p=0.8,
        brightness=0.8,
        contrast=0.8,
        saturation=0.8,
        hue=0.2,
        grayscale_p=0.2,
    )


def relational(k: int, crop_min: float = 0.08) -> Recipe:
    """The full SimCLR-style recipe of method.md with K views per image (K >= 2); `crop_min` is the smallest area
    fraction of the random resized crop (the paper's 0.08; the fast preset's is in docs/fast.md)."""
    if k < 2:
        raise SsrrError(f"relational reasoning needs at least 2 views per image (K >= 2), got K={k}")
    return _simclr_like("relational", k, crop_min)


def simclr() -> Recipe:
    """The same recipe as :func:`relational`, 2 views."""
    return _simclr_like("simclr", 2)


def evaluation() -> Recipe:
    """Normalise only (optionally resized to the loader's ``image_size``), 1 view."""
    return Recipe(name="eval", views=1)


def pad_for(image_size: tuple[int, int] | None) -> int:
    """The authors' random-crop padding: an eighth of the image side (4 for 32 px, 8 for 64, 12 for 96);
    4 when the size is unknown."""
    if image_size is None:
        return 4
    return max(1, min(image_size) // 8)


def crop_flip(padding: int = 4) -> Recipe:
    """Zero-pad ``padding`` pixels each side, random crop of the original size, horizontal flip; 1 view."""
    if padding < 1:
        raise SsrrError(f"crop_flip: padding must be at least 1, got {padding}")
    return Recipe(name="crop_flip", views=1, crop="pad", padding=padding, flip_p=0.5)


def flip() -> Recipe:
    """Horizontal flip only, 1 view (Deep InfoMax's augmentation)."""
    return Recipe(name="flip", views=1, flip_p=0.5)


def rotation(padding: int = 4) -> Recipe:
    """crop_flip, then the 4 rotations: view r is the augmented image turned r * 90 degrees (label = r)."""
    if padding < 1:
        raise SsrrError(f"rotation: padding must be at least 1, got {padding}")
    return Recipe(name="rotation", views=4, crop="pad", padding=padding, flip_p=0.5, rotate=True)

"""Per-view random parameters, drawn in numpy with torchvision's sampling rules.

The DALI graph (:mod:`ssrr.pipelines.graph`) receives these through one ``fn.external_source`` per pipeline
run. Drawing them here rather than with DALI's random operators has three reasons: the crop window follows
torchvision's ``RandomResizedCrop.get_params`` exactly (integer window, up to 10 tries, centre fallback); the
K views can be processed as one K-frame sequence per image with per-frame arguments (one operator call per
image instead of one per view, the main speed-up on the CPU); and the stream is reproducible from
``np.random.Generator`` seeded by (seed, epoch, rank).

Gating is arithmetic: a view that skips the jitter gets the identity values (factor 1, hue shift 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from ssrr.pipelines.recipes import Recipe

# ITU-R 601-2 luma, the weights of PIL's convert("L") (grayscale, saturation and the contrast centre).
LUMA = (0.299, 0.587, 0.114)


def resized_crop_windows(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    attempts: int = 10,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """torchvision's ``RandomResizedCrop.get_params``, vectorised: (top, left, h, w) int64 arrays of ``shape``.

    Each window takes the first of ``attempts`` (area, log-ratio) draws whose rounded size fits the image; when
    none fits, the centre crop with the aspect ratio clamped to ``ratio`` (torchvision's fallback).
    """
    area = float(height * width)
    draws = (*shape, attempts)
    target = area * rng.uniform(scale[0], scale[1], draws)
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), draws))
    w = np.rint(np.sqrt(target * aspect))
    h = np.rint(np.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.argmax(axis=-1)[..., None]
    found = fits.any(axis=-1)
    w = np.take_along_axis(w, first, axis=-1)[..., 0].astype(np.int64)
    h = np.take_along_axis(h, first, axis=-1)[..., 0].astype(np.int64)
    top = np.floor(rng.random(shape) * (height - h + 1)).astype(np.int64)
    left = np.floor(rng.random(shape) * (width - w + 1)).astype(np.int64)
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fh, fw = height, round(height * max(ratio))
    else:
        fw, fh = width, height
    w = np.where(found, w, fw)
    h = np.where(found, h, fh)
    top = np.where(found, top, (height - fh) // 2)
    left = np.where(found, left, (width - fw) // 2)
    return top, left, h, w


@dataclass
class ViewParams:
    """The random parameters of one pipeline run: B images x V views (arrays are (B, V) unless noted)."""

    top: np.ndarray  # crop window, source pixels (resized crop) or offset into the padded image (pad crop)
    left: np.ndarray
    height: np.ndarray
    width: np.ndarray
    flip: np.ndarray  # bool
    brightness: np.ndarray  # float32 factors, 1 where the jitter is not applied
    contrast: np.ndarray
    saturation: np.ndarray  # the jitter's saturation factor times (1 - grayscale); 0 for a grayscale view
    saturation_factor: np.ndarray  # the jitter's saturation factor alone (1 where not applied)
    hue_degrees: np.ndarray  # float32, 0 where not applied
    grayscale: np.ndarray  # bool
    jittered: np.ndarray  # bool

    def colour_matrix(self) -> np.ndarray:
        """(B, V, 3, 3) float32: the linear colour map after brightness and contrast, applied to RGB column
        vectors: grayscale (if drawn) @ hue rotation @ saturation.

        - saturation s: ``s * I + (1 - s) * 1 y^T``, a blend with the luma image, exactly PIL's;
        - hue shift h: a rotation by h about the gray axis (1, 1, 1) of RGB space. PIL's HSV hue shift is not
          linear; this rotation is the closest simple linear form found (mean error 3.3 uint8 levels on
          CIFAR-10 test images with h ~ U(-72, 72) degrees, against 6.1 for DALI's hsv, a YIQ rotation, and 6.5
          for no hue change at all);
        - grayscale: ``1 y^T`` (PIL's convert("L"), 3 channels).
        """
        luma = np.asarray(LUMA)
        to_gray = np.outer(np.ones(3), luma)
        s = self.saturation_factor.astype(np.float64)[..., None, None]
        saturate = s * np.eye(3) + (1 - s) * to_gray
        theta = np.radians(self.hue_degrees.astype(np.float64))[..., None, None]
        axis = np.ones(3) / np.sqrt(3.0)
        cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        rotate = np.eye(3) + np.sin(theta) * cross + (1 - np.cos(theta)) * (cross @ cross)
        matrix = rotate @ saturate
        matrix = np.where(self.grayscale[..., None, None], to_gray @ matrix, matrix)
        return matrix.astype(np.float32)

    def roi(self) -> tuple[np.ndarray, np.ndarray]:
        """DALI resize ROI (B, V, 2) float32 start and end, (y, x); a flip swaps the x ends."""
        x0 = self.left.astype(np.float32)
        x1 = (self.left + self.width).astype(np.float32)
        y0 = self.top.astype(np.float32)
        y1 = (self.top + self.height).astype(np.float32)
        start = np.stack([y0, np.where(self.flip, x1, x0)], axis=-1)
        end = np.stack([y1, np.where(self.flip, x0, x1)], axis=-1)
        return start, end


def draw(rng: np.random.Generator, recipe: Recipe, batch: int, height: int, width: int) -> ViewParams:
    """Draw the parameters of ``batch`` images for ``recipe`` on ``height`` x ``width`` sources.

    ``rotate`` recipes draw one crop / flip per image (their views share it). Draw order is fixed, so a
    generator state gives one parameter set.
    """
    views = 1 if recipe.rotate else recipe.views
    shape = (batch, views)
    if recipe.crop == "resized":
        top, left, h, w = resized_crop_windows(rng, shape, height, width, recipe.crop_scale, recipe.crop_ratio)
    elif recipe.crop == "pad":
        span = 2 * recipe.padding + 1
        top = rng.integers(0, span, shape)
        left = rng.integers(0, span, shape)
        h = np.full(shape, height)
        w = np.full(shape, width)
    else:
        top = np.zeros(shape, np.int64)
        left = np.zeros(shape, np.int64)
        h = np.full(shape, height)
        w = np.full(shape, width)
    flip = rng.random(shape) < recipe.flip_p
    jittered = rng.random(shape) < recipe.jitter_p
    ones = np.ones(shape)
    factors = []
    for strength in (recipe.brightness, recipe.contrast, recipe.saturation):
        lo, hi = recipe.factor_range(strength)
        factors.append(np.where(jittered, rng.uniform(lo, hi, shape), ones))
    hue = np.where(jittered, rng.uniform(-recipe.hue, recipe.hue, shape), 0.0) * 360.0
    grayscale = rng.random(shape) < recipe.grayscale_p
    brightness, contrast, saturation = factors
    return ViewParams(
        top=top,
        left=left,
        height=h,
        width=w,
        flip=flip,
        brightness=brightness.astype(np.float32),
        contrast=contrast.astype(np.float32),
        saturation=(saturation * ~grayscale).astype(np.float32),
        saturation_factor=saturation.astype(np.float32),
        hue_degrees=hue.astype(np.float32),
        grayscale=grayscale,
        jittered=jittered,
    )

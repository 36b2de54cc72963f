"""Augmentations applied in torch to views the DALI pipeline has already normalised: the parts of the authors'
supervised STL-10 transform the DALI recipes do not have.

The authors train the supervised STL-10 baseline with: horizontal flip (p 0.5); with p 0.5 a random affine
(rotation U(-18, 18) degrees, translation up to 10% of each side rounded to whole pixels, scale U(0.9, 1.1),
shear along x U(-10, 10) degrees, bilinear, black fill); normalisation; with p 0.5 random erasing of a
square of 0.111 of the image area (value 0, after normalisation). The flip and normalisation are the DALI
`flip` recipe; `affine_erase` does the rest on the normalised batch: an image picked for the affine is taken
back to pixel units (x * std + mean), warped with black fill, and normalised again, exactly the authors'
order (torchvision blends the fill at the borders non-linearly, so the warp cannot run on normalised values
with a normalised fill). The warp is torchvision's tensor `affine`; the parameters are drawn here, from a
seeded generator, with torchvision's sampling rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF


@dataclass(frozen=True)
class AffineErase:
    """The parameters of the authors' supervised STL-10 transform (their `finetune` train transform)."""

    affine_p: float = 0.5
    degrees: float = 18.0
    translate: float = 0.1  # fraction of the width (x) and height (y)
    scale: tuple[float, float] = (0.9, 1.1)
    shear: float = 10.0  # degrees, along x only
    erase_p: float = 0.5
    erase_area: float = 0.111  # fraction of the image area, a square (STL-10's value)


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def random_affine(
    images: Tensor, mean: tuple[float, ...], std: tuple[float, ...], spec: AffineErase, generator: torch.Generator
) -> Tensor:
    """Each normalised image (N, C, H, W) warped with probability `spec.affine_p` by a random affine with
    black fill in pixel units (a new tensor)."""
    out = images.clone()
    height, width = images.shape[-2:]
    m = torch.tensor(mean, device=images.device)[:, None, None]
    s = torch.tensor(std, device=images.device)[:, None, None]
    for n in range(len(images)):
        if float(torch.rand((), generator=generator)) >= spec.affine_p:
            continue
        angle = _uniform(-spec.degrees, spec.degrees, generator)
        tx = round(_uniform(-spec.translate * width, spec.translate * width, generator))
        ty = round(_uniform(-spec.translate * height, spec.translate * height, generator))
        scale = _uniform(spec.scale[0], spec.scale[1], generator)
        shear = _uniform(-spec.shear, spec.shear, generator)
        pixels = images[n].float() * s + m
        warped = TF.affine(pixels, angle, [tx, ty], scale, [shear, 0.0], InterpolationMode.BILINEAR, [0.0] * len(mean))
        out[n] = ((warped - m) / s).to(images.dtype)
    return out


def random_erase(images: Tensor, spec: AffineErase, generator: torch.Generator) -> Tensor:
    """Each image (N, C, H, W) has, with probability `spec.erase_p`, a square of `spec.erase_area` of its
    area, at a uniform position, set to 0 (in place; returned)."""
    height, width = images.shape[-2:]
    side = round(math.sqrt(height * width * spec.erase_area))
    if not (side < height and side < width):
        return images
    for n in range(len(images)):
        if float(torch.rand((), generator=generator)) >= spec.erase_p:
            continue
        top = int(torch.randint(0, height - side + 1, (), generator=generator))
        left = int(torch.randint(0, width - side + 1, (), generator=generator))
        images[n, :, top : top + side, left : left + side] = 0
    return images


def affine_erase(
    images: Tensor, mean: tuple[float, ...], std: tuple[float, ...], generator: torch.Generator, spec: AffineErase
) -> Tensor:
    """The affine (black fill in pixel units) then the erasing, on a batch normalised with `mean` and `std`."""
    return random_erase(random_affine(images, mean, std, spec, generator), spec, generator)

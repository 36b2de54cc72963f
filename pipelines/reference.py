"""The plain torchvision implementation of the recipes: the reference for tests and the benchmark baseline.

This is the public implementation's way: the shard's images are held in memory as uint8 arrays, and a
DataLoader's workers apply the torchvision transform K times per image to a PIL image, on the CPU::

    RandomResizedCrop(size, scale=(0.08, 1)) -> RandomHorizontalFlip() ->
    RandomApply([ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8) -> RandomGrayscale(0.2) -> ToTensor() -> Normalize()

:func:`reference_loader` yields the same :class:`~ssrr.pipelines.loader.Batch` layout as the DALI loader
(view-major rows, channels_last), so the two can be compared and timed side by side.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from ssrr.pipelines.loader import Batch
from ssrr.pipelines.recipes import Recipe
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from ssrr.data import formats
from ssrr.data.writer import iter_samples
from ssrr.errors import SsrrError


def build_transform(
    recipe: Recipe, mean: tuple[float, ...], std: tuple[float, ...], source: tuple[int, int], size: tuple[int, int]
) -> Callable[[Image.Image], torch.Tensor]:
    """The torchvision transform of one view of ``recipe`` (without the rotations)."""
    steps: list = []
    if recipe.crop == "resized":
        steps.append(
            T.RandomResizedCrop(
                size, scale=recipe.crop_scale, ratio=recipe.crop_ratio, interpolation=T.InterpolationMode.BILINEAR
            )
        )
    else:
        if size != source:
            steps.append(T.Resize(size, interpolation=T.InterpolationMode.BILINEAR, antialias=True))
        if recipe.crop == "pad":
            steps.append(T.RandomCrop(size, padding=recipe.padding, fill=0, padding_mode="constant"))
    if recipe.flip_p > 0:
        steps.append(T.RandomHorizontalFlip(recipe.flip_p))
    if recipe.jitter_p > 0:
        jitter = T.ColorJitter(recipe.brightness, recipe.contrast, recipe.saturation, recipe.hue)
        steps.append(T.RandomApply([jitter], p=recipe.jitter_p))
    if recipe.grayscale_p > 0:
        steps.append(T.RandomGrayscale(recipe.grayscale_p))
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


def build_transform_v2(
    recipe: Recipe, mean: tuple[float, ...], std: tuple[float, ...], source: tuple[int, int], size: tuple[int, int]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The same recipe in torchvision.transforms.v2 on uint8 (3, H, W) tensors: what a user who wants speed
    without DALI would write. One call draws one set of random parameters, so each view is its own call (a
    batched call would give every view the same crop and jitter)."""
    from torchvision.transforms import v2

    bilinear = v2.InterpolationMode.BILINEAR
    steps: list = []
    if recipe.crop == "resized":
        steps.append(
            v2.RandomResizedCrop(size, scale=recipe.crop_scale, ratio=recipe.crop_ratio, interpolation=bilinear)
        )
    else:
        if size != source:
            steps.append(v2.Resize(size, interpolation=bilinear, antialias=True))
        if recipe.crop == "pad":
            steps.append(v2.RandomCrop(size, padding=recipe.padding, fill=0, padding_mode="constant"))
    if recipe.flip_p > 0:
        steps.append(v2.RandomHorizontalFlip(recipe.flip_p))
    if recipe.jitter_p > 0:
        jitter = v2.ColorJitter(recipe.brightness, recipe.contrast, recipe.saturation, recipe.hue)
        steps.append(v2.RandomApply([jitter], p=recipe.jitter_p))
    if recipe.grayscale_p > 0:
        steps.append(v2.RandomGrayscale(recipe.grayscale_p))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


BACKENDS = {"pil": build_transform, "tv2": build_transform_v2}


class ReferenceViews(Dataset):
    """A split's images in memory; item i is (views (V, 3, H, W) float, labels (3,) int64 fine/coarse/index).

    Samples are in stored order (the shards' order), like the DALI loader without shuffling. `backend`: `pil`
    (the public implementation: torchvision transforms on PIL images) or `tv2` (transforms.v2 on uint8 tensors).
    """

    def __init__(
        self,
        shard_dir: Path | str,
        split: str,
        recipe: Recipe,
        *,
        image_size: int | tuple[int, int] | None = None,
        backend: str = "pil",
    ) -> None:
        if backend not in BACKENDS:
            raise SsrrError(f"reference backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.backend = backend
        self.shard_dir = Path(shard_dir)
        self.manifest = formats.load_manifest(self.shard_dir)
        self.recipe = recipe
        images, labels = [], []
        for _, image, label in iter_samples(self.shard_dir, split):
            images.append(image)
            labels.append(label)
        if not images:
            raise SsrrError(f"{self.shard_dir} ({split}): no samples")
        self.images = np.stack(images)
        self.labels = np.asarray(labels, dtype=np.int64)
        source = tuple(self.manifest.image_size)
        if image_size is None:
            size = source
        elif isinstance(image_size, int):
            size = (image_size, image_size)
        else:
            size = tuple(image_size)
        self.image_size: tuple[int, int] = (int(size[0]), int(size[1]))
        self.transform = BACKENDS[backend](
            recipe, self.manifest.mean, self.manifest.std, (int(source[0]), int(source[1])), self.image_size
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image: Image.Image | torch.Tensor
        if self.backend == "pil":
            image = Image.fromarray(self.images[i])
        else:
            image = torch.from_numpy(self.images[i]).permute(2, 0, 1)  # uint8 (3, H, W)
        if self.recipe.rotate:
            view = self.transform(image)
            views = torch.stack([torch.rot90(view, r, dims=(-2, -1)) for r in range(self.recipe.views)])
        else:
            views = torch.stack([self.transform(image) for _ in range(self.recipe.views)])
        return views, torch.from_numpy(self.labels[i])


def to_batch(views: torch.Tensor, labels: torch.Tensor) -> Batch:
    """(M, V, 3, H, W) + (M, 3) -> a view-major, channels_last :class:`Batch` (one copy)."""
    m, v, c, h, w = views.shape
    out = torch.empty((v, m, h, w, c), dtype=views.dtype)
    out.copy_(views.permute(1, 0, 3, 4, 2))
    return Batch(
        views=out.view(v * m, h, w, c).permute(0, 3, 1, 2),
        fine=labels[:, 0],
        coarse=labels[:, 1],
        index=labels[:, 2],
        valid=torch.ones(m, dtype=torch.bool),
    )


def reference_loader(
    shard_dir: Path | str,
    recipe: Recipe,
    *,
    split: str = "train",
    batch_size: int = 64,
    workers: int = 2,
    shuffle: bool = True,
    seed: int = 0,
    image_size: int | tuple[int, int] | None = None,
    drop_last: bool | None = None,
    dataset: ReferenceViews | None = None,
) -> Iterator[Batch]:
    """Batches of the torchvision reference, in the :class:`Batch` layout (view-major, channels_last).

    A DataLoader with ``workers`` worker processes, batch ``batch_size``; ``drop_last`` defaults to
    ``shuffle``. Pass ``dataset`` to reuse images already loaded.
    """
    data = dataset if dataset is not None else ReferenceViews(shard_dir, split, recipe, image_size=image_size)
    generator = torch.Generator()
    generator.manual_seed(seed)
    loader = DataLoader(
        data,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        generator=generator,
        drop_last=shuffle if drop_last is None else drop_last,
    )
    for views, labels in loader:
        yield to_batch(views, labels)


def replay(
    image: np.ndarray,
    recipe: Recipe,
    params,
    m: int,
    size: tuple[int, int],
) -> np.ndarray:
    """The views of image ``m`` with the loader's own parameters (a :class:`~ssrr.pipelines.sampling.ViewParams`),
    applied with torchvision's functional ops in the loader's fixed order; uint8 (V, H, W, 3).

    Used to compare the DALI graph with torchvision on identical random draws (the statistical tests compare
    the full random recipes).
    """
    from torchvision.transforms import functional as F

    source = Image.fromarray(image)
    out = []
    count = 1 if recipe.rotate else recipe.views
    for v in range(count):
        top, left = int(params.top[m, v]), int(params.left[m, v])
        height, width = int(params.height[m, v]), int(params.width[m, v])
        if recipe.crop == "resized":
            view = F.resized_crop(source, top, left, height, width, list(size), T.InterpolationMode.BILINEAR)
        else:
            view = source if size == tuple(image.shape[:2]) else F.resize(source, list(size), antialias=True)
            if recipe.crop == "pad":
                view = F.crop(F.pad(view, recipe.padding, fill=0), top, left, size[0], size[1])
        if params.flip[m, v]:
            view = F.hflip(view)
        if params.jittered[m, v]:  # like ColorJitter, a jitter of strength 0 is not applied at all
            if recipe.brightness:
                view = F.adjust_brightness(view, float(params.brightness[m, v]))
            if recipe.contrast:
                view = F.adjust_contrast(view, float(params.contrast[m, v]))
            if recipe.saturation:
                view = F.adjust_saturation(view, float(params.saturation_factor[m, v]))
            if recipe.hue:
                view = F.adjust_hue(view, float(params.hue_degrees[m, v]) / 360.0)
        if params.grayscale[m, v]:
            view = F.rgb_to_grayscale(view, num_output_channels=3)
        out.append(np.asarray(view))
    views = np.stack(out)
    if recipe.rotate:
        views = np.stack([np.rot90(views[0], r, axes=(0, 1)) for r in range(recipe.views)])
    return views

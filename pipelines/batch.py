"""What a loader yields: a :class:`Batch` of M images with V views each, as torch tensors on the device."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    """M images, V views each.

    Attributes:
        views: (V*M, 3, H, W), channels_last memory, normalised; row v*M + m is view v of image m.
        fine: (M,) int64 fine label, -1 where none.
        coarse: (M,) int64 coarse label, -1 where none.
        index: (M,) int64 sample index within the split; a combined split (``train+unlabeled``) numbers its
            second split's samples after the first's, so indices stay unique.
        valid: (M,) bool, False for padding rows (only non-training loaders pad).
    """

    views: torch.Tensor
    fine: torch.Tensor
    coarse: torch.Tensor
    index: torch.Tensor
    valid: torch.Tensor

    @property
    def num_views(self) -> int:
        return self.views.shape[0] // self.fine.shape[0]

    def view(self, v: int) -> torch.Tensor:
        """The M rows of view v."""
        m = self.fine.shape[0]
        return self.views[v * m : (v + 1) * m]

"""Fine-tuning's batching: padding dropped, a label subset re-batched into full batches, views kept aligned."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from ssrr.eval.finetune import training_batches


class FakeLoader:
    """Batches of M images with V views each (view-major rows), indices 0..n-1, the last batch padded."""

    def __init__(self, n: int, m: int, views: int) -> None:
        self.n, self.m, self.views = n, m, views

    def epoch(self, epoch: int):  # type: ignore[no-untyped-def]
        for start in range(0, self.n, self.m):
            index = torch.arange(start, start + self.m)
            valid = index < self.n
            index = torch.where(valid, index, torch.zeros_like(index))
            # pixel value = sample index * 10 + view, so rows can be traced
            pixels = (index[None, :] * 10 + torch.arange(self.views)[:, None]).flatten().float()
            yield SimpleNamespace(
                views=pixels[:, None, None, None].expand(-1, 3, 2, 2),
                fine=index % 5,
                coarse=torch.full_like(index, -1),
                index=index,
                valid=valid,
            )


def test_full_split_passes_through_with_padding_dropped() -> None:
    seen = [(x[:, 0, 0, 0], y) for x, y in training_batches(FakeLoader(10, 4, 1), 0, "fine", 4)]
    ids = torch.cat([x for x, _ in seen]).long() // 10
    assert sorted(ids.tolist()) == list(range(10))
    assert torch.equal(torch.cat([y for _, y in seen]), ids % 5)


def test_subset_is_rebatched_and_views_stay_with_their_labels() -> None:
    member = torch.zeros(50, dtype=torch.bool)
    member[torch.arange(0, 50, 3)] = True  # 17 samples
    batches = list(training_batches(FakeLoader(50, 8, 2), 0, "fine", 6, member))
    sizes = [len(y) for _, y in batches]
    assert all(s == 6 for s in sizes[:-1]) and sum(sizes) == 34  # 17 samples x 2 views
    pixels = torch.cat([x[:, 0, 0, 0] for x, _ in batches]).long()
    labels = torch.cat([y for _, y in batches])
    assert sorted(set((pixels // 10).tolist())) == list(range(0, 50, 3))
    assert torch.equal(labels, (pixels // 10) % 5)
    assert sorted((pixels % 10).tolist()) == [0] * 17 + [1] * 17

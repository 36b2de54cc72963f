"""Weighted k-NN accuracy: the usual self-supervised sanity metric (no training, a few seconds).

Each test representation votes with its nearest `neighbours` training representations by cosine similarity, each
neighbour's vote weighted by exp(similarity / temperature) (200 neighbours, temperature 0.1, as in instance
discrimination work); the class with the largest total wins. The pretraining loop calls `knn_probe` every
`--knn-every` epochs (through the protocol registry, `ssrr.eval.protocols`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ssrr.data.formats import load_manifest
from ssrr.eval.features import Features, extract_features, num_classes
from ssrr.eval.linear import classification_metrics, extract_pair
from ssrr.eval.protocols import EvalContext, Option, Protocol, register
from ssrr.precision import Execution
from ssrr.train.checkpoint import LoadedBackbone

NEIGHBOURS = 200
TEMPERATURE = 0.1


@torch.no_grad()
def knn_predict(
    gallery: torch.Tensor,
    gallery_labels: torch.Tensor,
    queries: torch.Tensor,
    classes: int,
    *,
    neighbours: int = NEIGHBOURS,
    temperature: float = TEMPERATURE,
    chunk: int = 1024,
) -> torch.Tensor:
    """Class scores (Q, classes) of cosine-weighted k-NN voting of `queries` against `gallery`."""
    gallery = F.normalize(gallery.float(), dim=1)
    gallery_labels = gallery_labels.to(gallery.device).long()
    neighbours = min(neighbours, len(gallery))
    scores = []
    for start in range(0, len(queries), chunk):
        q = F.normalize(queries[start : start + chunk].to(gallery.device).float(), dim=1)
        sim, idx = (q @ gallery.T).topk(neighbours, dim=1)
        weights = (sim / temperature).exp()
        votes = torch.zeros(len(q), classes, device=gallery.device)
        votes.scatter_add_(1, gallery_labels[idx], weights)
        scores.append(votes)
    return torch.cat(scores)


def knn_accuracy(
    train_features: Features,
    test_features: Features,
    neighbours: int = NEIGHBOURS,
    temperature: float = TEMPERATURE,
    *,
    labels: str = "fine",
) -> float:
    """Top-1 accuracy (percent) of weighted k-NN: test representations against the train gallery."""
    train_y = train_features.labels(labels)
    test_y = test_features.labels(labels).to(train_features.z.device)
    classes = int(max(int(train_y.max()), int(test_y.max()))) + 1
    scores = knn_predict(
        train_features.z, train_y, test_features.z, classes, neighbours=neighbours, temperature=temperature
    )
    return 100.0 * float((scores.argmax(1) == test_y).float().mean())


def knn_probe(
    backbone: nn.Module,
    shard_dir: Path | str,
    execution: Execution,
    split: str | None = None,
    *,
    bank: str = "train",
    neighbours: int = NEIGHBOURS,
    temperature: float = TEMPERATURE,
    batch: int = 256,
) -> float:
    """k-NN top-1 (percent) of a backbone: the `bank` split as gallery (the run's training split), `split` as
    queries (None: the dataset's labelled held-out split).

    Safe to call mid-training: the backbone is evaluated in eval mode without gradients and given back in
    the mode it came in."""
    held_out = split or load_manifest(shard_dir).held_out_split or "test"
    train = extract_features(backbone, shard_dir, bank, device=execution, batch=batch)
    test = extract_features(backbone, shard_dir, held_out, device=execution, batch=batch)
    return knn_accuracy(train, test, neighbours, temperature)


def knn_eval(
    loaded: LoadedBackbone,
    shard_dir: Path | str,
    *,
    labels: str = "fine",
    neighbours: int = NEIGHBOURS,
    temperature: float = TEMPERATURE,
    seed: int = 1,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    out: str | Path | None = None,
    image_size: str | tuple[int, int] = "auto",
    feature_batch: int = 256,
    write: bool = True,
    split: str | None = None,
) -> dict[str, Any]:
    """`ssrr eval knn`: weighted k-NN top-1 and top-5 of one backbone on one dataset, written as a result.
    The queries are `split`, by default the dataset's labelled held-out split (checked before any work)."""
    ctx = EvalContext.open(
        loaded, shard_dir, labels=labels, seed=seed, device=device, precision=precision, split=split,
        image_size=image_size, out=out,
    )  # fmt: skip
    train, test, size, extract_s = extract_pair(
        loaded, shard_dir, device=ctx.execution, image_size=ctx.image_size, train_split=ctx.train_split,
        split=ctx.split, feature_batch=feature_batch,
    )  # fmt: skip
    classes = num_classes(ctx.manifest, labels)
    scores = knn_predict(train.z, train.labels(labels), test.z, classes, neighbours=neighbours, temperature=temperature)
    metrics = classification_metrics(scores, test.labels(labels), ctx.names)
    result = ctx.result("knn")
    result.update(
        top1=metrics["top1"],
        top5=metrics["top5"],
        per_class=metrics["per_class"],
        k=neighbours,  # the key earlier results carry
        neighbours=neighbours,
        temperature=temperature,
        image_size=list(size) if size else list(ctx.manifest.image_size),
        train_samples=len(train),
        test_samples=len(test),
        extract_s=round(extract_s, 3),
        wall_s=ctx.wall(),
    )
    return ctx.finish(ctx.stem("knn"), result) if write else result


register(
    Protocol(
        "knn",
        knn_eval,
        """Weighted k-NN accuracy (200 neighbours, temperature 0.1): test split against the train gallery.

    Example: ssrr eval knn runs/relational-resnet32-cifar10-s1 --dataset cifar10 --json
    """,
        options=(
            Option("neighbours", int, NEIGHBOURS, "Neighbours voting.", hidden=("--k",)),
            Option("temperature", float, TEMPERATURE, "Vote weight exp(cosine / temperature)."),
        ),
        probe=knn_probe,
    )
)

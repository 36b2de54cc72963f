"""Weighted k-NN accuracy: the usual self-supervised sanity metric (no training, a few seconds).

Each test representation votes with its k nearest training representations by cosine similarity, each
neighbour's vote weighted by exp(similarity / temperature) (k=200, temperature 0.1, as in instance
discrimination work); the class with the largest total wins. The pretraining loop calls `knn_probe` every
`--knn-every` epochs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ssrr.data.formats import load_manifest
from ssrr.eval.common import base_result, check_labels, output_dir, resolve_execution, result_stem, write_result
from ssrr.eval.features import Features, class_names, extract_features, num_classes
from ssrr.eval.linear import extract_pair
from ssrr.precision import Execution, as_execution
from ssrr.train.checkpoint import LoadedBackbone

K = 200
TEMPERATURE = 0.1


@torch.no_grad()
def knn_predict(
    gallery: torch.Tensor,
    gallery_labels: torch.Tensor,
    queries: torch.Tensor,
    classes: int,
    *,
    k: int = K,
    temperature: float = TEMPERATURE,
    chunk: int = 1024,
) -> torch.Tensor:
    """Class scores (Q, classes) of cosine-weighted k-NN voting of `queries` against `gallery`."""
    gallery = F.normalize(gallery.float(), dim=1)
    gallery_labels = gallery_labels.to(gallery.device).long()
    k = min(k, len(gallery))
    scores = []
    for start in range(0, len(queries), chunk):
        q = F.normalize(queries[start : start + chunk].to(gallery.device).float(), dim=1)
        sim, idx = (q @ gallery.T).topk(k, dim=1)
        weights = (sim / temperature).exp()
        votes = torch.zeros(len(q), classes, device=gallery.device)
        votes.scatter_add_(1, gallery_labels[idx], weights)
        scores.append(votes)
    return torch.cat(scores)


def knn_accuracy(
    train_features: Features,
    test_features: Features,
    k: int = K,
    temperature: float = TEMPERATURE,
    *,
    labels: str = "fine",
) -> float:
    """Top-1 accuracy (percent) of weighted k-NN: test representations against the train gallery."""
    train_y = train_features.labels(labels)
    test_y = test_features.labels(labels).to(train_features.z.device)
    classes = int(max(int(train_y.max()), int(test_y.max()))) + 1
    scores = knn_predict(train_features.z, train_y, test_features.z, classes, k=k, temperature=temperature)
    return 100.0 * float((scores.argmax(1) == test_y).float().mean())


def knn_probe(
    backbone: nn.Module,
    shard_dir: Path | str,
    device: torch.device | str = "cpu",
    *,
    k: int = K,
    temperature: float = TEMPERATURE,
    batch: int = 256,
    execution: Execution | None = None,
    test_split: str = "test",
) -> float:
    """k-NN top-1 (percent) of a backbone: train split as gallery, `test_split` as queries.

    Safe to call mid-training: the backbone is evaluated in eval mode without gradients and given back in
    the mode it came in. `execution` (the run's precision) replaces `device` when given.
    """
    where = execution or as_execution(device)
    train = extract_features(backbone, shard_dir, "train", device=where, batch=batch)
    test = extract_features(backbone, shard_dir, test_split, device=where, batch=batch)
    return knn_accuracy(train, test, k, temperature)


def knn_eval(
    loaded: LoadedBackbone,
    shard_dir: Path | str,
    *,
    labels: str = "fine",
    k: int = K,
    temperature: float = TEMPERATURE,
    seed: int = 1,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    out: str | Path | None = None,
    image_size: str | tuple[int, int] = "auto",
    feature_batch: int = 256,
    write: bool = True,
) -> dict[str, Any]:
    """`ssrr eval knn`: weighted k-NN top-1 and top-5 of one backbone on one dataset, written as a result."""
    started = time.perf_counter()
    check_labels(labels)
    execution = resolve_execution(device, precision)
    device = execution.device
    manifest = load_manifest(shard_dir)
    classes = num_classes(manifest, labels)
    train, test, size, extract_s = extract_pair(
        loaded, shard_dir, device=execution, image_size=image_size, feature_batch=feature_batch
    )
    test_y = test.labels(labels)
    scores = knn_predict(train.z, train.labels(labels), test.z, classes, k=k, temperature=temperature)
    from ssrr.eval.linear import classification_metrics

    metrics = classification_metrics(scores, test_y, class_names(manifest, labels))
    result = base_result("knn", loaded, manifest.name, labels, seed, execution)
    result.update(
        top1=metrics["top1"],
        top5=metrics["top5"],
        per_class=metrics["per_class"],
        k=k,
        temperature=temperature,
        image_size=list(size) if size else list(manifest.image_size),
        train_samples=len(train),
        test_samples=len(test),
        extract_s=round(extract_s, 3),
    )
    result["wall_s"] = round(time.perf_counter() - started, 3)
    if not write:
        return result
    out_dir = output_dir(loaded, out)
    return write_result(out_dir, result_stem("knn", manifest.name, labels, seed), result)

"""Image retrieval in representation space: cosine nearest neighbours of queries in a gallery.

Queries are the dataset's labelled held-out split (test; val for tiny-ImageNet; `--split`) and the gallery the
train split by default (`--gallery` naming the query split searches it itself, each query then excluded from
its own results). Reported: precision@k (k = 1, 5, 10: the
fraction of the top k that share the query's class), mean average precision over the full ranking of the
gallery (overall and by class), and a PNG grid of some queries (red frame, as in the paper's poster) with
their top 10 (green frame: same class, grey: another class), drawn from the raw pixels of the shards.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ssrr.data.writer import iter_samples
from ssrr.errors import SsrrError
from ssrr.eval.features import Features, eval_image_size, extract_features
from ssrr.eval.protocols import EvalContext, Option, Protocol, register
from ssrr.files import replacing
from ssrr.train.checkpoint import LoadedBackbone

KS = (1, 5, 10)
TOP = 10
TILE = 64  # pixels per image in the grid
PAD = 4  # frame width (pixels)
GAP = 6  # white space between the query column and its neighbours
RED, GREEN, GREY = (220, 30, 30), (40, 170, 60), (150, 150, 150)


@torch.no_grad()
def nearest(
    gallery: torch.Tensor, queries: torch.Tensor, top: int, *, exclude: torch.Tensor | None = None, chunk: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities, gallery rows) of each query's `top` nearest gallery items by cosine similarity.

    `exclude` (Q,) names one gallery row per query to leave out (the query itself when searching its own split).
    """
    g = F.normalize(gallery.float(), dim=1)
    sims, rows = [], []
    for start in range(0, len(queries), chunk):
        q = F.normalize(queries[start : start + chunk].to(g.device).float(), dim=1)
        s = q @ g.T
        if exclude is not None:
            s.scatter_(1, exclude[start : start + chunk, None].to(g.device), float("-inf"))
        top_s, top_i = s.topk(min(top, len(g)), dim=1)
        sims.append(top_s)
        rows.append(top_i)
    return torch.cat(sims), torch.cat(rows)


@torch.no_grad()
def retrieval_metrics(
    gallery: torch.Tensor,
    gallery_labels: torch.Tensor,
    queries: torch.Tensor,
    query_labels: torch.Tensor,
    *,
    ks: tuple[int, ...] = KS,
    exclude: torch.Tensor | None = None,
    chunk: int = 256,
) -> dict[str, Any]:
    """precision@k (percent) and average precision per query over the full gallery ranking.

    AP of one query = mean over its relevant gallery items (same class) of the precision at that item's rank.
    """
    g = F.normalize(gallery.float(), dim=1)
    gl = gallery_labels.to(g.device).long()
    ql = query_labels.to(g.device).long()
    hits = {k: 0.0 for k in ks}
    ap = []
    for start in range(0, len(queries), chunk):
        q = F.normalize(queries[start : start + chunk].to(g.device).float(), dim=1)
        s = q @ g.T
        if exclude is not None:
            s.scatter_(1, exclude[start : start + chunk, None].to(g.device), float("-inf"))
        order = s.argsort(dim=1, descending=True)
        if exclude is not None:
            order = order[:, :-1]  # the excluded row sorts last
        relevant = (gl[order] == ql[start : start + chunk, None]).float()
        for k in ks:
            hits[k] += float(relevant[:, :k].sum()) / min(k, relevant.shape[1])
        ranks = torch.arange(1, relevant.shape[1] + 1, device=g.device, dtype=torch.float32)
        precision = relevant.cumsum(1) / ranks
        count = relevant.sum(1)
        ap.append(torch.where(count > 0, (precision * relevant).sum(1) / count.clamp(min=1), torch.zeros_like(count)))
    ap_all = torch.cat(ap).cpu()
    n = max(len(queries), 1)
    return {"precision_at": {str(k): 100.0 * hits[k] / n for k in ks}, "ap": ap_all}


def _frame(image: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    tile = np.asarray(Image.fromarray(image).resize((TILE, TILE), resample=Image.Resampling.NEAREST), np.uint8)
    framed = np.empty((TILE + 2 * PAD, TILE + 2 * PAD, 3), np.uint8)
    framed[:] = colour
    framed[PAD:-PAD, PAD:-PAD] = tile
    return framed


def grid_size(rows: int, top: int = TOP) -> tuple[int, int]:
    """(width, height) in pixels of a retrieval grid of `rows` queries and `top` neighbours each."""
    cell = TILE + 2 * PAD
    return ((top + 1) * cell + top * 2 + GAP, rows * cell + (rows - 1) * 2)


def retrieval_grid(
    query_images: list[np.ndarray],
    neighbour_images: list[list[np.ndarray]],
    same_class: list[list[bool]],
    path: Path,
) -> Path:
    """One row per query: the query in a red frame, then its neighbours (green: same class, grey: not)."""
    rows, top = len(query_images), max((len(n) for n in neighbour_images), default=0)
    width, height = grid_size(rows, top)
    canvas = np.full((height, width, 3), 255, np.uint8)
    cell = TILE + 2 * PAD
    for r, (query, neighbours) in enumerate(zip(query_images, neighbour_images, strict=True)):
        y = r * (cell + 2)
        canvas[y : y + cell, 0:cell] = _frame(query, RED)
        for c, (image, same) in enumerate(zip(neighbours, same_class[r], strict=True)):
            x = cell + GAP + c * (cell + 2)
            canvas[y : y + cell, x : x + cell] = _frame(image, GREEN if same else GREY)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        Image.fromarray(canvas).save(tmp, format="PNG")
    return path


def raw_images(shard_dir: Path | str, split: str, wanted: set[int]) -> dict[int, np.ndarray]:
    """Raw uint8 pixels (H, W, 3) of the samples of `split` whose index is in `wanted`."""
    found: dict[int, np.ndarray] = {}
    for _, image, (_, _, index) in iter_samples(shard_dir, split):
        if index in wanted:
            found[index] = image.copy()
            if len(found) == len(wanted):
                break
    return found


def pick_queries(labels: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """`count` query rows, seeded, spread over classes (one per class in turn)."""
    g = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    per_class = [
        rows[torch.randperm(len(rows), generator=g)]
        for c in labels.unique()
        if len(rows := (labels == c).nonzero().flatten())
    ]
    picked: list[int] = []
    depth = 0
    while len(picked) < count and any(depth < len(rows) for rows in per_class):
        picked += [int(rows[depth]) for rows in per_class if depth < len(rows)]
        depth += 1
    return torch.tensor(picked[:count], dtype=torch.long)


def retrieval_eval(
    loaded: LoadedBackbone,
    shard_dir: Path | str,
    *,
    labels: str = "fine",
    split: str | None = None,
    gallery: str | None = None,
    show: int = 8,
    max_queries: int = 0,
    seed: int = 1,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    out: str | Path | None = None,
    image_size: str | tuple[int, int] = "auto",
    feature_batch: int = 256,
    write: bool = True,
) -> dict[str, Any]:
    """`ssrr eval retrieval`: precision@k, mAP (overall and by class) and a grid PNG of `show` queries.

    The queries are `split` (None: the dataset's labelled held-out split), searched for in the split `gallery`;
    both are checked before any feature is computed. `max_queries` > 0 scores a seeded subset of that many
    queries (the full ranking of a 50,000-image gallery for every test image is the costly part on a CPU).
    """
    ctx = EvalContext.open(
        loaded, shard_dir, labels=labels, seed=seed, device=device, precision=precision, split=split,
        image_size=image_size, out=out, fit=gallery,
    )  # fmt: skip
    gallery = ctx.train_split
    size = eval_image_size(loaded, ctx.manifest, ctx.image_size)
    backbone = loaded.module.to(ctx.device)

    def extract(name: str) -> Features:
        return extract_features(backbone, shard_dir, name, device=ctx.execution, batch=feature_batch, image_size=size)

    queries = extract(ctx.split)
    searched = queries if gallery == ctx.split else extract(gallery)
    extract_s = time.perf_counter() - ctx.started
    result = ctx.result("retrieval")
    result.update(_score(ctx, queries, searched, gallery, max_queries))
    result.update(
        image_size=list(size) if size else list(ctx.manifest.image_size),
        extract_s=round(extract_s, 3),
        wall_s=ctx.wall(),
    )
    if not write:
        return result
    stem = ctx.stem("retrieval")
    files = []
    if show > 0:
        grid = ctx.out_dir / f"{stem}-grid.png"
        shown = pick_queries(queries.labels(labels), show, seed)
        files.append(_grid_png(shard_dir, queries, searched, (ctx.split, gallery), labels, shown, grid))
        result["shown_queries"] = queries.index.cpu()[shown].tolist()
    return ctx.finish(stem, result, files)


def _score(ctx: EvalContext, queries: Features, searched: Features, gallery: str, max_queries: int) -> dict[str, Any]:
    """The retrieval numbers of (a seeded subset of) the queries against the gallery `searched`."""
    same_split = gallery == ctx.split
    if same_split and len(searched) < 2:
        raise SsrrError(f"{ctx.shard_dir}: split '{ctx.split}' needs at least 2 samples to search itself")
    scored = torch.arange(len(queries))
    if 0 < max_queries < len(queries):
        draw = torch.Generator().manual_seed(ctx.seed)
        scored = torch.randperm(len(queries), generator=draw)[:max_queries].sort().values
    sub = queries.subset(scored)
    exclude = scored if same_split else None
    metrics = retrieval_metrics(searched.z, searched.labels(ctx.labels), sub.z, sub.labels(ctx.labels), exclude=exclude)
    ap = metrics["ap"]
    sub_labels = sub.labels(ctx.labels).cpu()
    names = ctx.names
    map_per_class = {
        names[c]: round(100.0 * float(ap[sub_labels == c].mean()), 4)
        for c in range(len(names))
        if bool((sub_labels == c).any())
    }
    return {
        "map": 100.0 * float(ap.mean()) if len(ap) else 0.0,
        "precision_at": metrics["precision_at"],
        "map_per_class": map_per_class,
        "query_split": ctx.split,
        "gallery_split": gallery,
        "queries": len(sub),
        "gallery": len(searched),
    }


register(
    Protocol(
        "retrieval",
        retrieval_eval,
        """Image retrieval by cosine similarity: precision@1/5/10, mAP (by class), a top-10 grid PNG.

    Example: ssrr eval retrieval runs/relational-resnet32-cifar10-s1 --dataset cifar10 --show 8
    """,
        options=(
            Option(
                "gallery",
                str,
                None,
                "Split searched (default: train, with the validation split carved from it unless that is the query "
                "split; the query split itself: each query left out).",
            ),
            Option("show", int, 8, "Queries drawn in the PNG grid (with their top 10)."),
            Option("max_queries", int, 0, "Score a seeded subset of this many queries (0: all)."),
        ),
        headline=("map", "precision_at"),
        split_help="Split of the queries.",
        split_flags=("--queries",),
    )
)


def _grid_png(
    shard_dir: Path | str,
    queries: Features,
    gallery: Features,
    splits: tuple[str, str],
    labels: str,
    shown: torch.Tensor,
    path: Path,
) -> Path:
    """The grid of the `shown` queries and their top-10 neighbours, read back as pixels from the shards."""
    query_split, gallery_split = splits
    same_split = query_split == gallery_split
    _, rows = nearest(gallery.z, queries.z[shown.to(queries.z.device)], TOP, exclude=shown if same_split else None)
    rows = rows.cpu()
    q_index = queries.index.cpu()[shown].tolist()
    g_index = gallery.index.cpu()[rows].tolist()
    neighbours = {i for r in g_index for i in r}
    pixels_q = raw_images(shard_dir, query_split, set(q_index) | (neighbours if same_split else set()))
    pixels_g = pixels_q if same_split else raw_images(shard_dir, gallery_split, neighbours)
    q_y, g_y = queries.labels(labels).cpu(), gallery.labels(labels).cpu()
    same = [[bool(g_y[j] == q_y[i]) for j in rows[r].tolist()] for r, i in enumerate(shown.tolist())]
    return retrieval_grid([pixels_q[i] for i in q_index], [[pixels_g[j] for j in r] for r in g_index], same, path)

"""A 2-D t-SNE map of test representations coloured by class (the poster's figure), t-SNE in torch.

t-SNE (van der Maaten & Hinton, 2008) with the exact O(N^2) gradient, fine for a few thousand points (a
seeded subsample, 2,000 by default):

1. P: for each point, a Gaussian over its 3 x perplexity nearest neighbours (beyond them the calibrated
   Gaussian is negligible; common implementations do the same) whose bandwidth is found by bisection so that
   its entropy is log(perplexity); symmetrised, P = (P + P^T) / 2N.
2. Q: a Student-t (one degree of freedom) kernel over all pairs of 2-D points, normalised.
3. Gradient descent on KL(P || Q): dY_i = 4 sum_j (p_ij - q_ij)(y_i - y_j) / (1 + |y_i - y_j|^2), with
   momentum (0.5, then 0.8), per-coordinate adaptive gains, and early exaggeration (P x 12 for the first 250
   iterations). Representations wider than 50 dimensions are first reduced to 50 by PCA.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from ssrr.eval.common import new_figure, save_figure
from ssrr.eval.features import eval_image_size, extract_features
from ssrr.eval.protocols import EvalContext, Option, Protocol, register
from ssrr.train.checkpoint import LoadedBackbone

POINTS = 2000
PERPLEXITY = 30.0
ITERATIONS = 1000
EXAGGERATION = 12.0
EXAGGERATION_ITERS = 250
PCA_DIMS = 50
FIGURE_SIZE_IN = (8.0, 8.0)  # 800 x 800 pixels


def conditional_affinities(x: torch.Tensor, perplexity: float, steps: int = 64) -> torch.Tensor:
    """P(j | i) (N, N): each row a Gaussian over the point's 3 x perplexity nearest neighbours, its entropy
    log(perplexity)."""
    n = len(x)
    k = max(1, min(n - 1, int(3 * perplexity) + 1))
    d2 = torch.cdist(x, x).square()
    d2.fill_diagonal_(math.inf)
    near, index = d2.topk(k, dim=1, largest=False)
    # Shift each row by its nearest neighbour's distance: the kernel is then <= 1 with one entry equal to 1,
    # which neither overflows nor underflows whatever the scale of the representations.
    near = (near - near[:, :1]).double()
    target = math.log(perplexity)
    lo = torch.full((n, 1), -30.0, dtype=near.dtype, device=x.device)  # bisection on log(precision)
    hi = torch.full((n, 1), 30.0, dtype=near.dtype, device=x.device)
    for _ in range(steps):
        mid = (lo + hi) / 2
        beta = mid.exp()
        kernel = torch.exp(-near * beta)
        total = kernel.sum(1, keepdim=True)
        entropy = total.log() + beta * (kernel * near).sum(1, keepdim=True) / total
        too_flat = entropy > target  # raise the precision
        lo = torch.where(too_flat, mid, lo)
        hi = torch.where(too_flat, hi, mid)
    kernel = torch.exp(-near * ((lo + hi) / 2).exp())
    conditional = torch.zeros(n, n, dtype=x.dtype, device=x.device)
    return conditional.scatter_(1, index, (kernel / kernel.sum(1, keepdim=True)).to(x.dtype))


def affinities(x: torch.Tensor, perplexity: float) -> torch.Tensor:
    """Symmetric joint probabilities P = (P(j|i) + P(i|j)) / 2N."""
    conditional = conditional_affinities(x, perplexity)
    return (conditional + conditional.T) / (2 * len(x))


def pca(x: torch.Tensor, dims: int) -> torch.Tensor:
    """The first `dims` principal components of x (centred)."""
    x = x - x.mean(0)
    if x.shape[1] <= dims:
        return x
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    return x @ v[:dims].T


def _student_t(y: torch.Tensor) -> torch.Tensor:
    """1 / (1 + |y_i - y_j|^2), zero on the diagonal, in a few in-place passes."""
    sq = (y * y).sum(1)
    num = torch.addmm(sq[None, :], y, y.T, alpha=-2.0).add_(sq[:, None]).clamp_(min=0.0)
    num = num.add_(1.0).reciprocal_()
    return num.fill_diagonal_(0.0)


def run_tsne(
    x: torch.Tensor,
    *,
    perplexity: float = PERPLEXITY,
    iterations: int = ITERATIONS,
    seed: int = 1,
    learning_rate: float | None = None,
) -> tuple[torch.Tensor, float]:
    """t-SNE of x (N, D) to (N, 2) float32 (seeded), and the final KL(P || Q). `learning_rate` None: max(N/12, 50)."""
    n = len(x)
    if n < 3:
        return torch.zeros(n, 2), 0.0
    x = pca(x.double(), PCA_DIMS).float()
    perplexity = min(perplexity, (n - 1) / 3)
    p = affinities(x, perplexity)
    lr = learning_rate or max(n / EXAGGERATION, 50.0)
    g = torch.Generator().manual_seed(seed)
    y = (torch.randn(n, 2, generator=g) * 1e-4).to(x.device)
    velocity = torch.zeros_like(y)
    gains = torch.ones_like(y)
    exaggerated = p * EXAGGERATION
    ones = torch.ones(n, 1, device=y.device)
    for it in range(iterations):
        early = it < EXAGGERATION_ITERS
        num = _student_t(y)
        w = (exaggerated if early else p) * num
        w.addcmul_(num, num, value=-1.0 / float(num.sum()))  # (p_ij - q_ij) * num_ij, q = num / sum(num)
        both = w @ torch.cat([y, ones], 1)  # [w @ y, row sums of w] in one pass over w
        grad = 4.0 * (both[:, 2:] * y - both[:, :2])
        same_sign = (grad > 0) == (velocity > 0)
        gains = torch.where(same_sign, gains * 0.8, gains + 0.2).clamp_(min=0.01)
        velocity = (0.5 if early else 0.8) * velocity - lr * gains * grad
        y = y + velocity
        y = y - y.mean(0)
    return y.cpu(), _kl(p, y)


def _kl(p: torch.Tensor, y: torch.Tensor) -> float:
    num = _student_t(y.double())
    q = (num / num.sum()).clamp_(min=1e-12)
    p = p.double()
    return float(torch.where(p > 0, p * (p / q).log(), torch.zeros_like(p)).sum())


def subsample(n: int, points: int, seed: int) -> torch.Tensor:
    """Sorted seeded subset of `points` rows out of n (all when points <= 0 or >= n)."""
    if points <= 0 or points >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:points].sort().values


def tsne_png(y: torch.Tensor, labels: torch.Tensor, names: list[str], path: Path, title: str) -> Path:
    """Scatter of the 2-D map coloured by class (a legend for up to 20 classes), 800 x 800 pixels."""
    import matplotlib

    fig = new_figure(*FIGURE_SIZE_IN)
    ax = fig.add_subplot()
    classes = len(names)
    cmap = matplotlib.colormaps["tab10" if classes <= 10 else "tab20" if classes <= 20 else "turbo"]
    labels = labels.cpu()
    pts = y.numpy()
    for c in range(classes):
        mask = (labels == c).numpy()
        if mask.any():
            colour = cmap(c if classes <= 20 else c / max(classes - 1, 1))
            ax.scatter(pts[mask, 0], pts[mask, 1], s=6, color=colour, label=names[c], linewidths=0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    if classes <= 20:
        ax.legend(loc="best", fontsize=7, markerscale=2, frameon=True)
    return save_figure(fig, path)


def tsne_eval(
    loaded: LoadedBackbone,
    shard_dir: Path | str,
    *,
    labels: str = "fine",
    split: str | None = None,
    points: int = POINTS,
    perplexity: float = PERPLEXITY,
    iterations: int = ITERATIONS,
    seed: int = 1,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    out: str | Path | None = None,
    image_size: str | tuple[int, int] = "auto",
    feature_batch: int = 256,
) -> dict[str, Any]:
    """`ssrr eval tsne`: a t-SNE PNG of `points` seeded representations of `split` (default: the dataset's
    labelled held-out split, checked before any feature is computed) coloured by class."""
    ctx = EvalContext.open(
        loaded, shard_dir, labels=labels, seed=seed, device=device, precision=precision, split=split,
        image_size=image_size, out=out, fits=False,
    )  # fmt: skip
    size = eval_image_size(loaded, ctx.manifest, ctx.image_size)
    features = extract_features(
        loaded.module.to(ctx.device), shard_dir, ctx.split, device=ctx.execution, batch=feature_batch, image_size=size
    )
    rows = subsample(len(features), points, seed)
    embed_started = time.perf_counter()
    y, kl = run_tsne(features.z[rows.to(features.z.device)], perplexity=perplexity, iterations=iterations, seed=seed)
    result = ctx.result("tsne")
    result.update(
        points=len(rows),
        perplexity=perplexity,
        iterations=iterations,
        kl=kl,
        embed_s=round(time.perf_counter() - embed_started, 3),
    )
    stem = ctx.stem("tsne")
    title = f"t-SNE of {len(rows)} {ctx.manifest.name} {ctx.split} representations [{loaded.source}]"
    png = tsne_png(y, features.labels(labels).cpu()[rows], ctx.names, ctx.out_dir / f"{stem}.png", title)
    return ctx.finish(stem, result, [png])


register(
    Protocol(
        "tsne",
        tsne_eval,
        """A t-SNE map of test representations coloured by class (PNG).

    Example: ssrr eval tsne runs/relational-resnet32-cifar10-s1 --dataset cifar10 --points 2000
    """,
        options=(
            Option("points", int, POINTS, "Seeded subsample of the split (0: all; exact t-SNE is O(N^2))."),
            Option("perplexity", float, PERPLEXITY, "t-SNE perplexity."),
            Option("iterations", int, ITERATIONS, "Gradient-descent iterations."),
        ),
        headline=("points", "kl", "embed_s"),
        progress="status",
        split_help="Split embedded.",
    )
)

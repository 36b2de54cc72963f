"""Relation heads r: score a pair of representations (z_i, z_j) with one logit (same image or not).

Every head takes `(feature_dim, aggregation="cat", ...)` and offers two ways to score pairs:

- `forward(pairs) -> (P,)` on explicitly aggregated pairs (`ssrr.relational.relation_pairs`), as the paper's
  Algorithm 1 and the authors' code do it;
- `pair_logits(z, left, right) -> (P,)`, the fast path used by training: `z` holds the K*M view
  representations once, `left`/`right` are row indices into it (`ssrr.relational.PairSchedule`), and the
  head computes whatever it can once per view before gathering pairs.

`RelationHead` with `cat`: the first Linear on [z_i ; z_j] equals W_a z_i + W_b z_j + b, so `project(z)` runs
one (K*M, D) x (D, 2*hidden) matmul and the pair pre-activations are two row gathers and an add; with `sum`
and `mean` the same holds with W_a = W_b = W (times 1/2 for mean). Only `max` aggregates pairs explicitly.
The BatchNorm then normalises over all P pair rows, exactly as on the explicit pairs. By default (`fused`)
the rest of the head (BatchNorm with its statistics in closed form, LeakyReLU, the last Linear) runs in
cache-sized blocks of pairs with hand-written gradients (`_FusedRelationScore`), never holding the
(P, hidden) pre-activations: 2.5-6x less time than plain autograd on the CPU, same values (the tests check
float64 agreement with the literal Algorithm 1 to ~1e-12).

Registry: `HEADS = {"relation": RelationHead, "dot": DotHead, "encoder-dot": EncoderDotHead}` (the paper's
head ablation: (c) the relation module, (a) the dot product, (b) a shared encoder and a dot product).

Length: over 400 lines because the three heads of the seed's ablation (relation, dot, encoder-dot) share
one interface and their fused, per-view projections; kept in one file so the fast and the literal paths are read
side by side.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssrr.errors import SsrrError

__all__ = ["AGGREGATIONS", "HEADS", "DotHead", "EncoderDotHead", "PairPlan", "RelationHead", "aggregate"]

AGGREGATIONS = ("cat", "sum", "mean", "max")


def _check_aggregation(aggregation: str) -> None:
    if aggregation not in AGGREGATIONS:
        raise SsrrError(f"unknown aggregation {aggregation!r} (known: {', '.join(AGGREGATIONS)})")


def aggregate(a: Tensor, b: Tensor, aggregation: str) -> Tensor:
    """The aggregation function a(z_i, z_j) row-wise: cat -> (P, 2D); sum, mean, max -> (P, D)."""
    _check_aggregation(aggregation)
    if aggregation == "cat":
        return torch.cat([a, b], dim=1)
    if aggregation == "sum":
        return a + b
    if aggregation == "mean":
        return (a + b) / 2.0
    return torch.maximum(a, b)


class PairPlan:
    """What the fused relation-head path needs about a fixed set of pairs (built once per pair schedule).

    left, right: (P,) row indices into the N per-view rows; count_left[u] / count_right[v]: how many pairs use
    row u on the left / row v on the right; `matrices()`: the (N, N) sparse (CSR) pair-count matrix S with
    S[u, v] = number of pairs (u, v), and its transpose; bag_index: (2P,) the interleaved (left[p], N + right[p])
    rows of the stacked table [left rows; right rows], for a sum embedding-bag of two rows per pair.
    """

    def __init__(self, left: Tensor, right: Tensor, n: int) -> None:
        self.left = left
        self.right = right
        self.n = n
        self.num_pairs = int(left.shape[0])
        dev = left.device
        self.count_left = torch.bincount(left, minlength=n).to(torch.float32)
        self.count_right = torch.bincount(right, minlength=n).to(torch.float32)
        self.bag_index = torch.stack([left, right + n], dim=1).reshape(-1).contiguous()
        ones = torch.ones(self.num_pairs, device=dev)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            coo = torch.sparse_coo_tensor(torch.stack([left, right]), ones, (n, n), check_invariants=True).coalesce()
            csr, csr_t = coo.to_sparse_csr(), coo.t().coalesce().to_sparse_csr()
        self._matrix = {torch.float32: (csr, csr_t)}
        self._offsets: dict[int, Tensor] = {}

    def matrices(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(S, S^T) as sparse CSR of `dtype`."""
        if dtype not in self._matrix:
            s, st = self._matrix[torch.float32]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                self._matrix[dtype] = (s.to(dtype), st.to(dtype))
        return self._matrix[dtype]

    def offsets(self, rows: int) -> Tensor:
        """Embedding-bag offsets 0, 2, 4, ... for a block of `rows` pairs."""
        if rows not in self._offsets:
            self._offsets[rows] = torch.arange(0, 2 * rows, 2, device=self.left.device)
        return self._offsets[rows]

    def pair_rows(self, table: Tensor, s: int, e: int) -> Tensor:
        """table[left[p]] + table[N + right[p]] for the pairs s..e-1 (a fresh (e - s, H) tensor): one sum
        embedding-bag of two rows per pair, faster than two gathers and an add."""
        return torch.embedding_bag(table, self.bag_index[2 * s : 2 * e], self.offsets(e - s), False, 0)[0]


@contextlib.contextmanager
def _intra_op_threads(threads: int | None, device: torch.device) -> Iterator[None]:
    """Cap torch's intra-op threads at `threads` on the CPU for the duration (None: leave them)."""
    before = torch.get_num_threads()
    if threads is None or device.type != "cpu" or threads >= before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _default_chunk_rows(device: torch.device) -> int:
    # On the CPU, work on cache-sized row blocks (no P x hidden buffers); on a GPU, one block.
    return 2048 if device.type == "cpu" else 1 << 62


class _FusedRelationScore(torch.autograd.Function):
    """logits[p] = linear2(leaky_relu(batch_norm(a[left[p]] + b[right[p]]))) without materialising the
    (P, hidden) pre-activations: the pairs are processed in blocks of `chunk` rows, forward and backward.

    BatchNorm with batch statistics: the mean and variance over the P pairs are exact closed forms in the
    per-view rows (weighted by how often each row is used, plus the cross term sum_u a_u * (S b)_u through the
    sparse pair-count matrix S); the BatchNorm affine map is folded into the per-view rows (a*scale + beta and
    b*scale) so a block's BatchNorm output is one gather-and-add; the backward reduces the per-pair gradients
    into per-row sums, so each direction makes a single pass over the pairs. Returns (logits, batch mean,
    batch biased variance); the last two are non-differentiable (for the running statistics).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        a: Tensor,
        b: Tensor,
        gamma: Tensor,
        beta: Tensor,
        w2: Tensor,
        b2: Tensor,
        plan: PairPlan,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        eps: float,
        slope: float,
        chunk: int,
        threads: int | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        dtype = a.dtype
        p_total = plan.num_pairs
        batch_stats = running_mean is None or running_var is None
        sb: Tensor | None = None
        if running_mean is None or running_var is None:
            c_left = plan.count_left.to(dtype)
            c_right = plan.count_right.to(dtype)
            mu_a = (c_left @ a) / p_total
            mu_b = (c_right @ b) / p_total
            a_c = a - mu_a
            b_c = b - mu_b
            s_mat, _ = plan.matrices(dtype)
            sb = torch.sparse.mm(s_mat, b_c)  # (S b_c)_u = sum of b_c over the right rows paired with u
            var = (c_left @ (a_c * a_c) + c_right @ (b_c * b_c) + 2.0 * (a_c * sb).sum(0)) / p_total
            var = var.clamp_min(0.0)
            mean = mu_a + mu_b
        else:
            mean, var = running_mean.to(dtype), running_var.to(dtype)
            a_c, b_c = a - mean, b
        rstd = torch.rsqrt(var + eps)
        scale = gamma * rstd
        # BatchNorm output of pair p = table[left[p]] + table[N + right[p]].
        table = torch.cat([torch.addcmul(beta, a_c, scale), b_c * scale], dim=0)
        w = w2.reshape(-1)
        out = torch.empty(p_total, dtype=dtype, device=a.device)
        rows = min(chunk, p_total)
        with _intra_op_threads(threads, a.device):
            for s in range(0, p_total, rows):
                e = min(p_total, s + rows)
                y = plan.pair_rows(table, s, e)
                F.leaky_relu_(y, slope)
                torch.mv(y, w, out=out[s:e])
        out.add_(b2)
        ctx.save_for_backward(a_c, b_c, sb, table, w2, rstd, scale)
        ctx.plan = plan
        ctx.batch_stats = batch_stats
        ctx.slope = slope
        ctx.rows = rows
        ctx.threads = threads
        ctx.mark_non_differentiable(mean, var)
        return out, mean.detach(), var.detach()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, g: Tensor, _gm: Tensor | None, _gv: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        a_c, b_c, sb, table, w2, rstd, scale = ctx.saved_tensors
        plan: PairPlan = ctx.plan
        left, right = plan.left, plan.right
        p_total, rows, slope = plan.num_pairs, ctx.rows, ctx.slope
        dtype, dev, hidden = a_c.dtype, a_c.device, a_c.shape[1]
        g = g.to(dtype).contiguous()
        w = w2.reshape(-1)
        g_a = torch.zeros_like(a_c)  # sum of dL/dY over the pairs that use row u on the left
        g_b = torch.zeros_like(b_c)
        dw = torch.zeros(hidden, dtype=dtype, device=dev)
        tbuf = torch.empty(rows, hidden, dtype=dtype, device=dev)
        with _intra_op_threads(ctx.threads, dev):
            for s in range(0, p_total, rows):
                e = min(p_total, s + rows)
                gc, t = g[s:e], tbuf[: e - s]
                h = plan.pair_rows(table, s, e)
                F.leaky_relu_(h, slope)  # the activations (same sign as the BatchNorm output)
                dw.addmv_(h.t(), gc)
                torch.outer(gc, w, out=t)
                torch.ops.aten.leaky_relu_backward.grad_input(t, h, slope, True, grad_input=t)  # dL/dY
                g_a.index_add_(0, left[s:e], t)
                g_b.index_add_(0, right[s:e], t)
        sum_dy = g_a.sum(0)  # sum over the pairs of dL/dY
        sum_dy_x = (a_c * g_a).sum(0) + (b_c * g_b).sum(0)  # sum of dL/dY * (X - mean)
        d_beta = sum_dy
        d_gamma = sum_dy_x * rstd
        if ctx.batch_stats:
            mean_dy = sum_dy / p_total
            mean_dy_xhat = d_gamma / p_total
            _, st_mat = plan.matrices(dtype)
            c_left = plan.count_left.to(dtype).unsqueeze(1)
            c_right = plan.count_right.to(dtype).unsqueeze(1)
            xhat_left = (c_left * a_c + sb) * rstd  # sum of xhat over the pairs that use row u on the left
            xhat_right = (c_right * b_c + torch.sparse.mm(st_mat, a_c)) * rstd
            d_a = scale * (g_a - c_left * mean_dy - xhat_left * mean_dy_xhat)
            d_b = scale * (g_b - c_right * mean_dy - xhat_right * mean_dy_xhat)
        else:
            d_a, d_b = scale * g_a, scale * g_b
        d_w2 = dw.reshape(w2.shape)
        d_b2 = g.sum().reshape(1)
        return d_a, d_b, d_gamma, d_beta, d_w2, d_b2, None, None, None, None, None, None, None


class RelationHead(nn.Module):
    """The relation module: Linear(in, hidden) -> BatchNorm1d(hidden) -> LeakyReLU -> Linear(hidden, 1), with
    in = 2D for `cat` and D for `sum`, `mean` and `max`. Default hidden 256 (the paper's).

    `fused` (default True): `pair_logits` with cat/sum/mean runs BatchNorm, LeakyReLU and the last Linear in
    blocks of `chunk_rows` pairs with hand-written gradients, never holding the (P, hidden) pre-activations
    (several times faster on the CPU, same values up to float rounding). The pair stage always computes in
    float32 (or float64 when given float64), also under autocast. `fused=False` is the plain autograd path.
    On the CPU the block loop runs on `cpu_threads` intra-op threads (default 1; None: torch's setting).
    """

    def __init__(self, feature_dim: int, aggregation: str = "cat", hidden: int = 256, fused: bool = True) -> None:
        super().__init__()
        _check_aggregation(aggregation)
        self.feature_dim = feature_dim
        self.aggregation = aggregation
        self.hidden = hidden
        self.fused = fused
        self.chunk_rows: int | None = None  # None: by device (2048 pairs on the CPU, all at once on a GPU)
        # Intra-op threads for the fused block loop on the CPU (None: torch's setting). Its many small,
        # memory-bound ops scale poorly: on the 2-core dev machine two threads gained ~20% when it was idle
        # and lost 4-15x when it was oversubscribed (OpenMP barriers wait for descheduled threads).
        self.cpu_threads: int | None = 1
        self.in_features = 2 * feature_dim if aggregation == "cat" else feature_dim
        self.linear1 = nn.Linear(self.in_features, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.act = nn.LeakyReLU()
        self.linear2 = nn.Linear(hidden, 1)

    def score(self, pre: Tensor) -> Tensor:
        """Pre-activations of the first Linear (P, hidden) -> logits (P,)."""
        return self.linear2(self.act(self.bn(pre))).squeeze(-1)

    def forward(self, pairs: Tensor) -> Tensor:
        """Explicitly aggregated pairs (P, in_features) -> logits (P,)."""
        return self.score(self.linear1(pairs))

    @property
    def has_projection(self) -> bool:
        """Whether the first Linear splits per view (cat, sum, mean); max needs explicit pairs."""
        return self.aggregation != "max"

    def project(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Per-view halves of the first Linear: z (N, D) -> (left (N, hidden), right (N, hidden)) such that the
        pre-activation of the pair (z[u], z[v]) is left[u] + right[v]. The bias is folded into `left`."""
        w, b = self.linear1.weight, self.linear1.bias
        if self.aggregation == "cat":
            d = self.feature_dim
            # One matmul for both halves: rows [W_a; W_b] (2*hidden, D), bias [b; 0].
            w2 = torch.cat([w[:, :d], w[:, d:]], dim=0)
            b2 = torch.cat([b, torch.zeros_like(b)])
            left, right = F.linear(z, w2, b2).split(self.hidden, dim=1)
            return left, right
        if self.aggregation in ("sum", "mean"):
            u = F.linear(z, w)
            if self.aggregation == "mean":
                u = u * 0.5
            return u + b, u
        raise SsrrError("the max aggregation has no per-view projection; aggregate the pairs explicitly")

    def pair_logits(self, z: Tensor, left: Tensor, right: Tensor, plan: PairPlan | None = None) -> Tensor:
        """Logits of the pairs (z[left[p]], z[right[p]]) -> (P,), computing the first Linear once per view.

        `plan`: the precomputed `PairPlan` of (left, right) (`PairSchedule.plan`); built here when omitted."""
        if not self.has_projection:
            return self(aggregate(z.index_select(0, left), z.index_select(0, right), self.aggregation))
        if not self.fused or isinstance(self.bn, nn.SyncBatchNorm):  # SyncBatchNorm: let it synchronise
            a, b = self.project(z)
            return self.score(a.index_select(0, left) + b.index_select(0, right))
        if plan is None:
            plan = PairPlan(left, right, z.shape[0])
        compute = torch.float64 if z.dtype == torch.float64 else torch.float32
        with torch.autocast(z.device.type, enabled=False):
            a, b = self.project(z.to(compute))
            return self._fused_score(a, b, plan)

    def _fused_score(self, a: Tensor, b: Tensor, plan: PairPlan) -> Tensor:
        bn = self.bn
        batch_stats = bn.training or bn.running_mean is None
        dtype = a.dtype
        chunk = self.chunk_rows or _default_chunk_rows(a.device)
        logits, mean, var = _FusedRelationScore.apply(
            a,
            b.to(dtype),
            bn.weight.to(dtype),
            bn.bias.to(dtype),
            self.linear2.weight.to(dtype),
            self.linear2.bias.to(dtype),
            plan,
            None if batch_stats else bn.running_mean,
            None if batch_stats else bn.running_var,
            bn.eps,
            self.act.negative_slope,
            chunk,
            self.cpu_threads,
        )
        if bn.training and bn.track_running_stats and bn.running_mean is not None:
            with torch.no_grad():
                tracked = bn.num_batches_tracked
                assert tracked is not None and bn.running_var is not None
                tracked.add_(1)
                momentum = bn.momentum if bn.momentum is not None else 1.0 / float(tracked)
                n = plan.num_pairs
                bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), momentum)
                unbiased = var * (n / max(n - 1, 1))
                bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), momentum)
        return logits


def _split_cat(pairs: Tensor) -> tuple[Tensor, Tensor]:
    d = pairs.shape[1] // 2
    return pairs[:, :d], pairs[:, d:]


class DotHead(nn.Module):
    """Head ablation (a): the logit is the dot product z_i . z_j of the two representations (no parameters).

    Only `cat` pairs make sense here (the two representations must stay apart); other aggregations raise."""

    def __init__(self, feature_dim: int, aggregation: str = "cat") -> None:
        super().__init__()
        _check_aggregation(aggregation)
        if aggregation != "cat":
            raise SsrrError(
                f"the dot head compares the two representations; use aggregation 'cat', not {aggregation!r}"
            )
        self.feature_dim = feature_dim
        self.aggregation = aggregation

    def forward(self, pairs: Tensor) -> Tensor:
        """`cat` pairs (P, 2D) -> logits (P,)."""
        a, b = _split_cat(pairs)
        return (a * b).sum(dim=1)

    def pair_logits(self, z: Tensor, left: Tensor, right: Tensor, plan: PairPlan | None = None) -> Tensor:
        """Logits (P,) of the pairs (z[left[p]], z[right[p]])."""
        return (z.index_select(0, left) * z.index_select(0, right)).sum(dim=1)


class EncoderDotHead(nn.Module):
    """Head ablation (b): a shared encoder e = Linear(D, hidden) -> BatchNorm1d -> LeakyReLU -> Linear(hidden, out)
    applied to each representation, then the logit e(z_i) . e(z_j).

    `pair_logits` encodes each of the K*M views once (BatchNorm statistics over the views) and gathers pairs;
    `forward` on explicit `cat` pairs encodes the left and right halves together (BatchNorm statistics over the
    2P rows), so the two agree exactly in eval mode and approximately in train mode. Only `cat` is accepted.
    """

    def __init__(self, feature_dim: int, aggregation: str = "cat", hidden: int = 256, out_dim: int = 64) -> None:
        super().__init__()
        _check_aggregation(aggregation)
        if aggregation != "cat":
            raise SsrrError(
                f"the encoder-dot head compares the two representations; use aggregation 'cat', not {aggregation!r}"
            )
        self.feature_dim = feature_dim
        self.aggregation = aggregation
        self.encoder = nn.Sequential(
            nn.Linear(feature_dim, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(), nn.Linear(hidden, out_dim)
        )

    def forward(self, pairs: Tensor) -> Tensor:
        """`cat` pairs (P, 2D) -> logits (P,)."""
        a, b = _split_cat(pairs)
        e = self.encoder(torch.cat([a, b], dim=0))
        ea, eb = e.split(a.shape[0], dim=0)
        return (ea * eb).sum(dim=1)

    def pair_logits(self, z: Tensor, left: Tensor, right: Tensor, plan: PairPlan | None = None) -> Tensor:
        """Logits (P,): each view encoded once, then the dot products of the pairs."""
        e = self.encoder(z)
        return (e.index_select(0, left) * e.index_select(0, right)).sum(dim=1)


HEADS: dict[str, type[nn.Module]] = {"relation": RelationHead, "dot": DotHead, "encoder-dot": EncoderDotHead}

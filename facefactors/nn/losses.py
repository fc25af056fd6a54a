"""Loss terms shared by several methods."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def full_precision(fn):
    """Run ``fn(x, ...)`` with autocast off and ``x`` in fp32 (codes from an autocast encoder may be
    bf16): the dependence measures below are small differences of large sums over the batch, which
    bf16 rounds away (under bf16 autocast the unbiased kernel term's gradient pointed 49 degrees off
    its fp32 direction; BENCHMARKS.md)."""
    @functools.wraps(fn)
    def wrapper(x: torch.Tensor, *args, **kwargs):
        with torch.autocast(x.device.type, enabled=False):
            return fn(x.float(), *args, **kwargs)
    return wrapper


@full_precision
def class_means(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean of ``x``'s rows (N, D) in each class of ``y`` (K, D; an absent class has mean 0) and
    the class sizes (K,)."""
    onehot = F.one_hot(y.long(), num_classes).to(x.dtype)
    n_k = onehot.sum(0)
    return (onehot.T @ x) / n_k.clamp_min(1.0)[:, None], n_k


def _classes_of_two_or_more(x: torch.Tensor, y: torch.Tensor, num_classes: int):
    """The rows of ``x`` whose class in ``y`` has at least two members in the batch (a singleton
    shows no spread), with their labels, one-hot labels (N, K), class sizes (K,) and class means
    (K, D; absent classes have size 0 and mean 0)."""
    y = y.long()
    counts = torch.bincount(y, minlength=num_classes)
    keep = counts[y] >= 2
    x, y = x[keep], y[keep]
    means, n_k = class_means(x, y, num_classes)
    return x, y, F.one_hot(y, num_classes).float(), n_k, means


@full_precision
def label_dependence(x: torch.Tensor, y: torch.Tensor, num_classes: int = 0, eps: float = 1e-5,
                     spread: float = 1.0) -> torch.Tensor:
    """How much labels ``y`` explain codes ``x`` (B, D) in this batch, averaged over dims (0 = nothing).

    Class labels (``num_classes`` > 0; y (B,)): the between-class share of each dim's variance
    (the correlation ratio eta^2) over the classes with at least two samples (a singleton's mean
    is itself), plus ``spread`` times the mean squared log ratio of each class's variance to the
    pooled one over the classes with at least four (0: the class means only).
    Continuous labels (``num_classes`` 0; y (B,) or (B, T)): the squared correlation of each dim
    with each target.
    """
    x = x.float()
    if num_classes <= 0:
        t = y.float().reshape(len(y), -1)
        xc, tc = x - x.mean(0), t - t.mean(0)
        cov = xc.T @ tc / len(x)                                            # (D, T)
        r2 = cov.pow(2) / (xc.pow(2).mean(0)[:, None] * tc.pow(2).mean(0)[None] + eps)
        return r2.mean()
    kept, _, onehot, n_k, means = _classes_of_two_or_more(x, y, num_classes)
    if len(kept) < 4 or (n_k >= 2).sum() < 2:
        return x.sum() * 0.0  # nothing to compare in this batch
    x = kept
    live = n_k > 0
    means = means[live]                                                     # (K', D)
    mu, var = x.mean(0), x.var(0, unbiased=False) + eps
    share = (n_k[live, None] * (means - mu).pow(2)).sum(0) / len(x) / var  # eta^2 per dim
    big = n_k[live] >= 4  # variances of two or three samples are too noisy to compare
    if spread == 0 or not big.any():
        return share.mean()
    sq = (onehot.T @ x.pow(2))[live][big] / n_k[live][big, None]
    var_k = (sq - means[big].pow(2)).clamp_min(0)
    within = (n_k[live][big, None] * var_k).sum(0) / n_k[live][big].sum()   # pooled within-class variance
    floor = 0.01 * within + eps
    ratio = torch.log((var_k + floor) / (within + floor))
    mismatch = (n_k[live][big, None] * ratio.pow(2)).sum(0) / n_k[live][big].sum()
    return share.mean() + spread * mismatch.mean()


KERNEL_SCALES = (0.25, 1.0, 4.0)


@full_precision
def code_kernel(x: torch.Tensor, scales: tuple[float, ...] = KERNEL_SCALES) -> torch.Tensor:
    """Gaussian kernel (B, B) of codes ``x`` (B, D): the mean of Gaussians at ``scales`` times the
    median squared distance between distinct codes (so it is blind to the codes' overall scale)."""
    x = x.float()
    n = len(x)
    d2 = torch.cdist(x, x).pow(2)
    off = ~torch.eye(n, dtype=torch.bool, device=x.device)
    med = d2.detach()[off].median().clamp_min(1e-8)
    return sum(torch.exp(-d2 / (s * med)) for s in scales) / len(scales)


@full_precision
def label_kernel_dependence(x: torch.Tensor, y: torch.Tensor, num_classes: int = 0,
                            scales: tuple[float, ...] = KERNEL_SCALES, unbiased: bool = False,
                            kernel: torch.Tensor | None = None) -> torch.Tensor:
    """Kernel alignment (CKA) of codes ``x`` (B, D) with labels ``y`` in this batch, in [0, 1] (0 = independent).

    ``label_dependence`` compares class means and variances per dim, which a nonlinear probe gets
    around; a Gaussian kernel on x sees any dependence. x's kernel averages Gaussians at
    ``scales`` times the median squared distance (so it is blind to the codes' overall scale);
    y's kernel is class identity (``num_classes`` > 0) or a Gaussian on the standardised targets.
    Both are centred, and the result is their normalized inner product (centred kernel alignment,
    a normalized HSIC).

    That plug-in estimate is biased upwards, most where few samples share a class: with 100
    classes in a batch of 32 and 64-d codes independent of the labels it reads about 0.84, and the
    bias depends on the codes' own structure, so its gradient moves codes the labels do not explain.
    ``unbiased`` uses the unbiased HSIC estimator (Song et al. 2012; zero diagonals) in the
    numerator and both normalisers instead: about 0 for independent codes (spread about 0.05 at
    batch 32), and it may go below 0.

    ``kernel``: x's kernel from ``code_kernel(x, scales)``, passed in to share it between several
    labels of the same codes.
    """
    x = x.float()
    n = len(x)
    if n < 4:
        return x.sum() * 0.0
    off = ~torch.eye(n, dtype=torch.bool, device=x.device)
    k = code_kernel(x, scales) if kernel is None else kernel
    if num_classes > 0:
        onehot = F.one_hot(y.long(), num_classes).float()
        ell = onehot @ onehot.T
    else:
        t = y.float().reshape(n, -1)
        t = (t - t.mean(0)) / (t.std(0) + 1e-6)
        dt = torch.cdist(t, t).pow(2)
        ell = torch.exp(-dt / dt[off].median().clamp_min(1e-8))
    if unbiased:
        if n < 5:
            return x.sum() * 0.0
        k, ell = k.masked_fill(~off, 0.0), ell.masked_fill(~off, 0.0)
        kl, kk, ll = _hsic_unbiased(k, ell), _hsic_unbiased(k, k), _hsic_unbiased(ell, ell)
        denom = (kk.clamp_min(0) * ll.clamp_min(0)).sqrt()
        return kl / denom if denom.item() > 1e-12 else x.sum() * 0.0

    def centre(m: torch.Tensor) -> torch.Tensor:
        return m - m.mean(0, keepdim=True) - m.mean(1, keepdim=True) + m.mean()
    kc, lc = centre(k), centre(ell)
    denom = kc.pow(2).sum().sqrt() * lc.pow(2).sum().sqrt()
    if denom.item() < 1e-12:
        return x.sum() * 0.0
    return (kc * lc).sum() / denom


def _hsic_unbiased(k: torch.Tensor, ell: torch.Tensor) -> torch.Tensor:
    """Song et al.'s unbiased HSIC of two (n, n) kernels with zero diagonals (n >= 4)."""
    n = k.shape[0]
    k_row, l_row = k.sum(1), ell.sum(1)
    return ((k * ell).sum() + k.sum() * ell.sum() / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (k_row @ l_row)) / (n * (n - 3))


@full_precision
def within_class_share(x: torch.Tensor, y: torch.Tensor, num_classes: int, eps: float = 1e-8) -> torch.Tensor:
    """The share of the codes' ``x`` (B, D) variance that lies within classes ``y`` (B,), in [0, 1].

    Pooled within-class variance summed over dims, over the total variance summed over dims,
    both over the samples whose class has at least two members in the batch (a singleton shows no
    spread). 0 means the code is a function of its label: it has no room left for anything else.
    The ratio of sums (not a mean of per-dim ratios) keeps near-constant dims from dominating.
    """
    kept, y, _, _, means = _classes_of_two_or_more(x.float(), y, num_classes)
    if len(kept) < 2:
        return x.sum() * 0.0
    x = kept
    within = (x - means[y]).pow(2).sum() / len(x)
    total = (x - x.mean(0)).pow(2).sum() / len(x)
    return within / (total + eps)


def code_cycle_error(back, target) -> torch.Tensor:
    """Mean over parts of the squared error of codes ``back`` against the (detached) codes
    ``target`` they should give back, each over its target's variance over the batch, so no part
    wins by its scale. ``back`` and ``target`` map part names to (B, ...) codes."""
    terms = []
    for q in target:
        t = target[q].detach().float().flatten(1)
        terms.append(F.mse_loss(back[q].float().flatten(1), t) / t.var(0).mean().clamp_min(1e-6))
    return sum(terms) / len(terms)

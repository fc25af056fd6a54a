"""Shared loss terms: the kernel label dependence sees what per-dim moments miss, and descends to it."""
from __future__ import annotations

import torch

from facefactors.nn.losses import code_kernel, label_dependence, label_kernel_dependence, within_class_share


def two_shapes(n: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0 is bimodal at +-1, class 1 Gaussian: equal means and variances in every dim."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    sign = torch.randint(0, 2, (n, 2), generator=g).float() * 2 - 1
    bimodal = sign + 0.05 * torch.randn(n, 2, generator=g)
    gauss = torch.randn(n, 2, generator=g)
    return torch.where(y[:, None] == 0, bimodal, gauss), y


def test_kernel_dependence_sees_a_shape_difference_that_moments_do_not():
    x, y = two_shapes()
    g = torch.Generator().manual_seed(1)
    noise = torch.randn_like(x)
    shuffled = y[torch.randperm(len(y), generator=g)]
    assert label_kernel_dependence(x, y, 2) > 2 * label_kernel_dependence(x, shuffled, 2)
    assert label_dependence(x, y, 2) < 2 * label_dependence(noise, y, 2) + 0.05   # moments nearly blind
    # invariant to the codes' scale; continuous targets work too; tiny batches give 0
    assert torch.isclose(label_kernel_dependence(10 * x, y, 2), label_kernel_dependence(x, y, 2), atol=1e-4)
    t = torch.randn(len(x), generator=g)
    assert label_kernel_dependence(noise + 3 * t[:, None], t) > 3 * label_kernel_dependence(noise, t)
    assert label_kernel_dependence(x[:3], y[:3], 2) == 0


def test_kernel_dependence_descent_removes_it():
    x0, y = two_shapes()
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.02)
    start = label_kernel_dependence(x0, y, 2).item()
    for _ in range(200):
        opt.zero_grad()
        label_kernel_dependence(x, y, 2).backward()
        opt.step()
    fresh = torch.randn_like(x0)
    assert label_kernel_dependence(x.detach(), y, 2) < min(0.5 * start, label_kernel_dependence(fresh, y, 2) + 0.02)


def test_within_class_share_is_zero_for_a_label_code_and_one_for_noise():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(64) % 4
    label_code = torch.nn.functional.one_hot(y, 4).float() * 2.0
    noise = torch.randn(64, 4, generator=g)
    assert within_class_share(label_code, y, 4) < 1e-6
    assert 0.8 < within_class_share(noise, y, 4) <= 1.0
    mixed = within_class_share(label_code + noise, y, 4)
    assert within_class_share(label_code, y, 4) < mixed < within_class_share(noise, y, 4)
    # singletons show no spread: a batch of distinct classes gives 0 (nothing to measure)
    assert within_class_share(noise[:4], torch.arange(4), 4) == 0
    # descent removes the within-class spread but keeps the classes apart
    x = (label_code + noise).requires_grad_()
    opt = torch.optim.SGD([x], lr=20.0)
    for _ in range(100):
        opt.zero_grad()
        within_class_share(x, y, 4).backward()
        opt.step()
    assert within_class_share(x, y, 4) < 0.1 * mixed


def test_unbiased_kernel_dependence_is_about_zero_for_independent_codes():
    gen = torch.Generator().manual_seed(0)
    biased, unbiased, leaked = [], [], []
    for _ in range(40):  # 64-d codes, 100 classes in a batch of 32: most classes are singletons
        x, y = torch.randn(32, 64, generator=gen), torch.randint(0, 100, (32,), generator=gen)
        biased.append(label_kernel_dependence(x, y, 100))
        unbiased.append(label_kernel_dependence(x, y, 100, unbiased=True))
        leak = x.clone()
        leak[:, 0] += 3 * y.float() / 10
        leaked.append(label_kernel_dependence(leak, y, 100, unbiased=True))
    biased, unbiased, leaked = (torch.stack(v).mean() for v in (biased, unbiased, leaked))
    assert biased > 0.5 and unbiased.abs() < 0.03 and leaked > 0.1
    assert label_kernel_dependence(x[:4], y[:4], 100, unbiased=True) == 0


def test_a_shared_code_kernel_gives_the_same_dependence():
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 16, generator=gen), torch.randint(0, 5, (32,), generator=gen)
    k = code_kernel(x)
    for unbiased in (False, True):
        assert torch.equal(label_kernel_dependence(x, y, 5, unbiased=unbiased, kernel=k),
                           label_kernel_dependence(x, y, 5, unbiased=unbiased))


def test_dependence_measures_run_in_fp32_under_bf16_autocast():
    """The measures are small differences of batch sums: under bf16 autocast (train.precision=bf16)
    they must give what they give in fp32, gradients included, not bf16's rounding of them."""
    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 8, (64,), generator=g)
    x = (torch.randn(64, 16, generator=g) + 0.3 * torch.nn.functional.one_hot(y, 16).float()).requires_grad_()

    def measures():
        return [label_kernel_dependence(x, y, 8, unbiased=True), label_dependence(x, y, 8),
                within_class_share(x, y, 8), code_kernel(x).sum()]

    plain = measures()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = measures()
    for a, b in zip(plain, mixed):
        assert b.dtype == torch.float32 and torch.allclose(a, b, rtol=1e-5, atol=1e-6)
        ga, = torch.autograd.grad(a, x)
        gb, = torch.autograd.grad(b, x)
        assert torch.allclose(ga, gb, rtol=1e-4, atol=1e-7)


def test_dependence_measures_take_bf16_codes_in_fp32():
    """Codes from an autocast encoder may be bf16: the measures compute on them in fp32."""
    g = torch.Generator().manual_seed(4)
    y = torch.randint(0, 4, (32,), generator=g)
    x = torch.randn(32, 8, generator=g).bfloat16()
    for value in (label_kernel_dependence(x, y, 4, unbiased=True), label_dependence(x, y, 4),
                  within_class_share(x, y, 4), code_kernel(x)):
        assert value.dtype == torch.float32
    assert torch.equal(label_dependence(x, y, 4), label_dependence(x.float(), y, 4))

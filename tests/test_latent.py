import pytest
import torch

from facefactors.errors import FacefactorsError
from facefactors.latent import Latent, class_means, edit, interpolate, mix, swap


def make(seed: int, b: int = 4) -> Latent:
    g = torch.Generator().manual_seed(seed)
    return Latent({"identity": torch.randn(b, 8, generator=g),
                   "expression": torch.randn(b, 3, 2, 2, generator=g),  # a map part
                   "rest": torch.randn(b, 5, generator=g)})


def test_order_and_shapes():
    z = make(0)
    assert z.parts == ["identity", "expression", "rest"]
    assert z.batch_size == 4
    assert z.flatten().shape == (4, 8 + 12 + 5)
    assert z.flat("expression").shape == (4, 12)


def test_batch_size_must_agree():
    with pytest.raises(ValueError):
        Latent({"a": torch.zeros(2, 3), "b": torch.zeros(3, 3)})


def test_swap_with_itself_changes_nothing():
    a = make(0)
    s = swap(a, a, ["identity", "expression"])
    for p in a:
        assert torch.equal(s[p], a[p])


def test_swap_takes_exactly_the_named_parts():
    a, b = make(0), make(1)
    s = swap(a, b, "expression")
    assert torch.equal(s["expression"], b["expression"])
    assert torch.equal(s["identity"], a["identity"])
    assert torch.equal(s["rest"], a["rest"])
    # swapping every part gives b
    full = swap(a, b, a.parts)
    assert all(torch.equal(full[p], b[p]) for p in a)


def test_swap_broadcasts_single_donor():
    a, b = make(0), make(1, b=1)
    s = swap(a, b, "identity")
    assert torch.equal(s["identity"], b["identity"].expand(4, -1))


def test_unknown_part_is_clear():
    with pytest.raises(FacefactorsError, match="unknown latent part 'pose'"):
        swap(make(0), make(1), "pose")


def test_interpolation_ends_are_exact():
    a, b = make(0), make(1)
    out = interpolate(a, b, "identity", [0.0, 0.25, 1.0])
    assert all(torch.equal(out[0][p], a[p]) for p in a)
    assert torch.equal(out[2]["identity"], b["identity"])
    assert torch.equal(out[2]["rest"], a["rest"])
    assert torch.allclose(out[1]["identity"], 0.75 * a["identity"] + 0.25 * b["identity"])
    assert torch.equal(out[1]["expression"], a["expression"])


def test_mix_weights_must_be_convex():
    zs = [make(i) for i in range(3)]
    with pytest.raises(ValueError, match="sum to 1"):
        mix(zs, [0.5, 0.5, 0.5], "identity")
    with pytest.raises(ValueError, match="non-negative"):
        mix(zs, [1.5, -0.5, 0.0], "identity")
    with pytest.raises(ValueError, match="one weight per latent"):
        mix(zs, [0.5, 0.5], "identity")


def test_mix_is_the_weighted_mean_and_one_hot_is_exact():
    zs = [make(i) for i in range(3)]
    m = mix(zs, [0.2, 0.3, 0.5], "identity")
    expect = 0.2 * zs[0]["identity"] + 0.3 * zs[1]["identity"] + 0.5 * zs[2]["identity"]
    assert torch.allclose(m["identity"], expect, atol=1e-6)
    assert torch.equal(m["rest"], zs[0]["rest"])
    one_hot = mix(zs, [0.0, 1.0, 0.0], ["identity", "rest"])
    assert torch.equal(one_hot["identity"], zs[1]["identity"])
    assert torch.equal(one_hot["expression"], zs[0]["expression"])


def test_edit_moves_along_direction():
    a = make(0)
    d = torch.arange(12, dtype=torch.float32)
    assert torch.equal(edit(a, "expression", d, 0.0)["expression"], a["expression"])
    e = edit(a, "expression", d, 2.0)
    assert torch.allclose(e["expression"] - a["expression"], 2.0 * d.reshape(1, 3, 2, 2).expand(4, -1, -1, -1))
    per_row = edit(a, "identity", torch.ones(8), torch.tensor([0.0, 1.0, 2.0, 3.0]))
    assert torch.allclose((per_row["identity"] - a["identity"])[:, 0], torch.tensor([0.0, 1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="direction has 3 elements"):
        edit(a, "identity", torch.ones(3), 1.0)


def test_class_means_and_cat():
    a = make(0)
    labels = torch.tensor([0, 1, 0, 1])
    means = class_means(a, "identity", labels)
    assert torch.allclose(means[0], a["identity"][[0, 2]].mean(0))
    both = Latent.cat([a, make(1)])
    assert both.batch_size == 8 and torch.equal(both["rest"][:4], a["rest"])

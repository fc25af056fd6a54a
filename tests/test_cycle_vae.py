"""cycle_vae: pair sampling, parts, every loss logged, gradient routing of the cycles, sampling and
few-shot transfer helpers, configs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from facefactors.config import RunConfig, build_dataclass, load_config
from facefactors.data import make_dataset
from facefactors.data.pairs_sampler import PairSampler, in_batch_partners
from facefactors.data.specs import AttributeSpec, ImageDataset
from facefactors.errors import FacefactorsError
from facefactors.eval.sampling import fewshot_transfer, fixed_s_samples, hold_out_classes, transfer_success
from facefactors.latent import Latent
from facefactors.methods.cycle_vae import CycleVAEParams, gaussian_w2
from facefactors.runs import build_model
from facefactors.train.trainer import Trainer

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture(scope="module")
def ds():
    return make_dataset({"name": "synthfaces", "size": 32, "n": 96, "n_identities": 6, "heldout_identities": 2,
                         "seed": 1})


@pytest.fixture(scope="module")
def digits():
    return make_dataset({"name": "digits", "size": 28})


def cv_config(steps=3, attribute="identity", size=32, data="synthfaces", **method) -> RunConfig:
    return build_dataclass(RunConfig, {
        "seed": 0, "data": {"name": data, "size": size},
        "model": {"method": "cycle_vae", "attributes": [attribute], "width": 8,
                  "part_dims": {attribute: 6, "rest": 5}},
        "method": method,
        "train": {"steps": steps, "batch_size": 16, "log_every": 1, "checkpoint_every": 100, "preview_every": 0,
                  "progress": False}})


def has_grad(module) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def no_grad(module) -> bool:
    return all(p.grad is None for p in module.parameters())


# ---------------------------------------------------------------------------- pair sampling
def test_pair_sampler_same_and_different_classes():
    labels = np.array([0, 0, 0, 1, 1, 2, 3, 3, 9])  # class 2 has one image; 9 is outside the pool
    pool = np.arange(8)
    ps = PairSampler(labels, pool, seed=5)
    anchors = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8] * 20)
    same, found = ps.same(anchors, step=3)
    assert np.all(labels[same] == labels[anchors])
    assert np.all(found == np.isin(labels[anchors], [0, 1, 3]))
    assert np.all((same != anchors) == found)        # a partner is never the anchor itself
    assert set(same[anchors == 0]) == {1, 2}         # both other class-0 images are drawn
    diff, found_d = ps.different(anchors, step=3)
    assert found_d.all() and np.all(labels[diff] != labels[anchors]) and np.isin(diff, pool).all()
    assert set(diff[anchors == 5]) == {0, 1, 2, 3, 4, 6, 7}
    again, _ = PairSampler(labels, pool, seed=5).same(anchors, step=3)
    other, _ = ps.same(anchors, step=4)
    assert np.array_equal(same, again) and not np.array_equal(same, other)   # a function of (seed, step)
    one = PairSampler(np.zeros(4, np.int64), np.arange(4))
    _, found_one = one.different(np.arange(4), 0)
    assert not found_one.any()
    with pytest.raises(FacefactorsError, match="empty"):
        PairSampler(labels, np.zeros(0, np.int64))


def test_in_batch_partners():
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    g = torch.Generator().manual_seed(0)
    pos, found = in_batch_partners(labels, generator=g)
    assert torch.equal(found, torch.tensor([True, True, True, False, True, True]))
    assert torch.equal(labels[pos], labels) and pos[3] == 3 and (pos[found] != torch.arange(6)[found]).all()
    pos, found = in_batch_partners(labels, different=True, generator=g)
    assert found.all() and (labels[pos] != labels).all()


# ---------------------------------------------------------------------------- the model
def test_parts_encode_decode(ds, digits):
    model = build_model(cv_config(), ds).eval()
    z = model.encode(ds.batch(range(4)).image)
    assert z.parts == ["identity", "rest"] and z["identity"].shape == (4, 6) and z["rest"].shape == (4, 5)
    assert model.decode(z).shape == (4, 3, 32, 32)
    assert model.sample("rest", 3).shape == (3, 5)
    with pytest.raises(NotImplementedError):
        model.sample("identity", 3)
    official = build_model(cv_config(attribute="digit", size=28, data="digits"), digits).eval()
    assert official.arch == "official"
    x = digits.batch(range(4)).image
    assert x.shape == (4, 1, 28, 28) and official.decode(official.encode(x)).shape == (4, 1, 28, 28)
    with pytest.raises(FacefactorsError, match="28 px"):
        build_model(cv_config(arch="official"), ds)
    with pytest.raises(FacefactorsError, match="exactly one"):
        build_model(build_dataclass(RunConfig, {"model": {"method": "cycle_vae",
                                                          "attributes": ["identity", "expression"]}}), ds)


@pytest.mark.parametrize("arch", ["dcgan", "official"])
def test_split_encoder_gives_s_and_z_from_separate_networks(ds, digits, arch):
    data, cfg = ((ds, cv_config(split_encoder=True)) if arch == "dcgan" else
                 (digits, cv_config(attribute="digit", size=28, data="digits", split_encoder=True)))
    model = build_model(cfg, data).eval()
    x = data.batch(range(4)).image
    z = model.encode(x)
    attr = model.attr
    assert z[attr].shape == (4, 6) and z["rest"].shape == (4, 5) and model.decode(z).shape == x.shape
    mu, logvar, s = model.posterior(x)
    (mu.sum() + logvar.sum()).backward()
    assert has_grad(model.encoder.z_net) and not has_grad(model.encoder.s_net)
    model.zero_grad(set_to_none=True)
    model.posterior(x)[2].sum().backward()
    assert has_grad(model.encoder.s_net) and not has_grad(model.encoder.z_net)


@pytest.mark.parametrize("bind", [False, True])
def test_trains_and_logs_every_loss(tmp_path, ds, bind):
    cfg = cv_config(steps=3, reverse_rec=0.5, adv=0.1, moments=1.0, kernel=1.0, kernel_unbiased=True,
                    latent_cycle=1.0, latent_cycle_s=1.0)
    trainer = Trainer(cfg, tmp_path / "r", dataset=ds, log=lambda m: None)
    if bind:  # what the trainer's dataset hook does
        original = build_model

        def patched(c, d):
            m = original(c, d)
            m.bind_dataset(d, c.seed)
            return m
        import facefactors.train.trainer as tr
        tr.build_model, saved = patched, tr.build_model
        try:
            trainer.fit()
        finally:
            tr.build_model = saved
    else:
        trainer.fit()
    rec = json.loads((tmp_path / "r" / "log.jsonl").read_text().splitlines()[-1])
    for key in ["discriminator/dis", "autoencoder/rec", "autoencoder/kl", "autoencoder/adv", "autoencoder/moments",
                "autoencoder/kernel", "autoencoder/latent_cycle", "autoencoder/latent_cycle_s", "reverse/reverse", "reverse/reverse_rec"]:
        assert key in rec, key
        assert rec[key] == rec[key] and abs(rec[key]) < 1e6


def test_dataset_pairs_are_same_class_and_reverse_partners_differ(ds):
    model = build_model(cv_config(), ds)
    model.bind_dataset(ds, seed=0)
    anchors = ds.split("train")[:16]
    same, found = model._pairs.same(anchors, 0)
    labels = ds.labels["identity"].numpy()
    assert found.all() and np.all(labels[same] == labels[anchors]) and np.isin(same, ds.split("train")).all()
    diff, _ = model._pairs.different(anchors, 0)
    assert np.all(labels[diff] != labels[anchors])


def test_reverse_cycle_updates_only_the_encoder(ds):
    torch.manual_seed(0)
    model = build_model(cv_config(rec=0.0, kl=0.0), ds).train()
    groups = model.optimizers()
    enc = {id(p) for p in model.encoder.parameters()}
    assert {id(p) for p in groups["reverse"].params} == enc
    gen = model.train_step(ds.batch(range(16)), 0, 10)
    group, losses = next(gen)            # rec = kl = 0: the forward cycle has nothing to yield
    assert group == "reverse" and set(losses) == {"reverse"}
    model.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    assert has_grad(model.encoder) and no_grad(model.decoder)   # frozen decoder: gradients pass through it
    dec_before = [p.detach().clone() for p in model.decoder.parameters()]
    enc_before = [p.detach().clone() for p in model.encoder.parameters()]
    opt = groups["reverse"].build()
    opt.step()
    assert all(torch.equal(a, p) for a, p in zip(dec_before, model.decoder.parameters()))
    assert any(not torch.equal(a, p) for a, p in zip(enc_before, model.encoder.parameters()))


def test_reverse_rec_trains_the_decoder_but_l1_never_reaches_it(ds):
    torch.manual_seed(0)
    model = build_model(cv_config(rec=0.0, kl=0.0, reverse_rec=1.0), ds).train()
    assert {id(p) for p in model.optimizers()["reverse"].params} == \
           {id(p) for p in [*model.encoder.parameters(), *model.decoder.parameters()]}
    losses = dict(model.train_step(ds.batch(range(16)), 0, 10))["reverse"]
    model.zero_grad(set_to_none=True)
    losses["reverse"].backward(retain_graph=True)
    assert no_grad(model.decoder) and has_grad(model.encoder)
    model.zero_grad(set_to_none=True)
    losses["reverse_rec"].backward()
    assert has_grad(model.decoder)


def test_latent_cycle_reencodes_other_class_transfers(ds, monkeypatch):
    """Dec(z_i, s_j), j of another class, is encoded again; z is charged the code-cycle error
    against z_i and s against s_j, each with its own weight; both train the encoder and decoder."""
    import facefactors.methods.cycle_vae as cv
    torch.manual_seed(0)
    model = build_model(cv_config(rec=0.0, kl=0.0, reverse=0.0, latent_cycle=2.0, latent_cycle_s=3.0), ds).train()
    batch = ds.batch(range(16))
    splits, cycles = [], []
    real_split, real_error = model._split, cv.code_cycle_error

    def split_spy(h):
        splits.append(real_split(h))
        return splits[-1]

    def error_spy(back, target):
        cycles.append((back, target))
        return real_error(back, target)
    monkeypatch.setattr(model, "_split", split_spy)
    monkeypatch.setattr(cv, "code_cycle_error", error_spy)
    losses = dict(model.train_step(batch, 0, 10))["autoencoder"]
    assert set(losses) == {"latent_cycle", "latent_cycle_s"}
    (mu, _, s), (mu_t, _, s_t) = splits
    (back_z, target_z), (back_s, target_s) = cycles
    assert back_z["rest"] is mu_t and torch.equal(target_z["rest"], mu)
    assert back_s["s"] is s_t
    labels = batch.labels["identity"]
    rows = [int(torch.nonzero((s == t).all(1))[0]) for t in target_s["s"]]   # which image gave each s_j
    assert (labels[rows] != labels).all()
    assert losses["latent_cycle"].item() == pytest.approx(2.0 * real_error(back_z, target_z).item())
    assert losses["latent_cycle_s"].item() == pytest.approx(3.0 * real_error(back_s, target_s).item())
    for name in losses:
        model.zero_grad(set_to_none=True)
        losses[name].backward(retain_graph=True)
        assert has_grad(model.encoder) and has_grad(model.decoder), name


@pytest.mark.parametrize("how", ["mean", "sample", "scaled"])
def test_dependence_input(ds, monkeypatch, how):
    """The dependence terms measure z's means, the sampled z, or the means with a weight of the
    means' spread over the posterior standard deviation."""
    import facefactors.methods.cycle_vae as cv
    torch.manual_seed(0)
    model = build_model(cv_config(rec=1.0, kl=0.0, reverse=0.0, kernel=1.0, dependence_input=how), ds).train()
    seen, splits = [], []
    real_kernel, real_split = cv.label_kernel_dependence, model._split
    monkeypatch.setattr(cv, "label_kernel_dependence", lambda x, *a, **k: seen.append(x) or real_kernel(x, *a, **k))
    monkeypatch.setattr(model, "_split", lambda h: splits.append(real_split(h)) or splits[-1])
    losses = dict(model.train_step(ds.batch(range(16)), 0, 10))["autoencoder"]
    (mu, logvar, _), = splits
    (x,) = seen
    if how == "sample":
        assert x.shape == mu.shape and not torch.equal(x, mu)
    else:
        assert x is mu
    weight = mu.detach().std(0).mean() / (0.5 * logvar.detach()).exp().mean() if how == "scaled" else 1.0
    assert losses["kernel"].item() == pytest.approx(float(weight) * real_kernel(x, ds.batch(range(16)).labels[
        "identity"], model.num_classes).item(), rel=1e-5)
    with pytest.raises(FacefactorsError, match="dependence_input"):
        build_model(cv_config(dependence_input="both"), ds)


@pytest.mark.parametrize("target, encoder_gets_adv", [("decoder", False), ("both", True)])
def test_adversarial_term_routing(ds, target, encoder_gets_adv):
    torch.manual_seed(0)
    model = build_model(cv_config(rec=0.0, kl=0.0, adv=1.0, adv_target=target), ds).train()
    gen = model.train_step(ds.batch(range(16)), 0, 10)
    group, losses = next(gen)
    assert group == "discriminator"
    model.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    assert has_grad(model.discriminator) and no_grad(model.encoder) and no_grad(model.decoder)
    group, losses = next(gen)
    assert group == "autoencoder" and set(losses) == {"adv"}
    model.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    assert has_grad(model.decoder) and no_grad(model.discriminator)
    assert has_grad(model.encoder) == encoder_gets_adv


def test_wasserstein_distance():
    mu, lv = torch.zeros(2, 3), torch.zeros(2, 3)
    assert gaussian_w2(mu, lv, mu, lv).item() == 0.0
    # means 1 apart in every dim, std 1 vs e: (1 + (e - 1)^2) per dim
    expected = 1.0 + (np.e - 1.0) ** 2
    assert gaussian_w2(mu, lv, mu + 1, lv + 2).item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------- sampling helpers
class ToyParts(nn.Module):
    """Known answers: the image's top-left pixel carries the class (part ``digit``, one-hot),
    the rest of the image is ``rest``; decode puts both back."""

    name = "toy"

    def __init__(self, k: int = 3, size: int = 8):
        super().__init__()
        self.k, self.size = k, size
        self.dummy = nn.Parameter(torch.zeros(1))

    @property
    def part_names(self):
        return ["digit", "rest"]

    def encode(self, x):
        cls = ((x[:, 0, 0, 0] + 1) / 2 * (self.k - 1)).round().long().clamp(0, self.k - 1)
        return Latent({"digit": torch.nn.functional.one_hot(cls, self.k).float(), "rest": x.flatten(1)})

    def decode(self, z):
        x = z["rest"].reshape(-1, 1, self.size, self.size).clone()
        x[:, 0, 0, 0] = z["digit"].argmax(1).float() / (self.k - 1) * 2 - 1
        return x

    def sample(self, part, n, generator=None):
        if part != "rest":
            raise NotImplementedError
        return torch.rand(n, self.size * self.size, generator=generator) * 2 - 1


def toy_dataset(n=60, k=3, size=8, seed=0) -> ImageDataset:
    rng = np.random.default_rng(seed)
    cls = (np.arange(n) // 2) % k     # every class in both splits
    img = rng.integers(0, 256, (n, 1, size, size)).astype(np.uint8)
    img[:, 0, 0, 0] = np.round(cls / (k - 1) * 255).astype(np.uint8)
    return ImageDataset("toy", torch.from_numpy(img), {"digit": torch.from_numpy(cls)},
                        {"digit": AttributeSpec("digit", "categorical", tuple(map(str, range(k))))},
                        {"train": np.arange(0, n, 2), "test": np.arange(1, n, 2)})


class ToyOracle:
    def __init__(self, k=3):
        self.k = k

    def predict(self, images):
        v = images[:, 0, 0, 0].float() / 255 * (self.k - 1)
        return {"digit": v.round().long().numpy()}


def test_transfer_success_known_answers():
    toy, data = ToyParts(), toy_dataset()
    out = transfer_success(toy, data, data.split("test"), "digit", ToyOracle(), n_pairs=50)
    assert out["donor_rate"] == 1.0 and out["source_rate"] == 0.0
    assert out["rest_retrieval"] > 0.9 and out["rest_retrieval_chance"] < 0.1


def test_fixed_s_samples_keep_s_per_column_and_z_per_row():
    toy, data = ToyParts(), toy_dataset()
    images = data.images[torch.arange(4)]
    grid, out = fixed_s_samples(toy, images, "digit", n_samples=3, seed=1)
    assert out.shape == (3, 4, 1, 8, 8) and grid.shape[:2] == (4 * 8 + 3 * 2, 4 * 8 + 3 * 2)
    assert torch.equal(out[:, :, 0, 0, 0], images[:, 0, 0, 0].expand(3, 4))          # s kept in each column
    assert all(torch.equal(out[r, 0, :, 1:], out[r, j, :, 1:]) for r in range(3) for j in range(4))  # z per row
    assert not torch.equal(out[0, 0, :, 1:], out[1, 0, :, 1:])
    with pytest.raises(FacefactorsError):
        fixed_s_samples(toy, images, "rest")


def test_hold_out_classes_and_fewshot_transfer(digits):
    held = hold_out_classes(digits, "digit", [7, 8, 9], shots=1, seed=0)
    labels = digits.labels["digit"].numpy()
    train, test, unseen = held.split("train"), held.split("test"), held.split("unseen")
    assert sorted(np.bincount(labels[train], minlength=10)[7:].tolist()) == [1, 1, 1]
    assert not np.isin(labels[test], [7, 8, 9]).any() and np.isin(labels[unseen], [7, 8, 9]).all()
    assert len(np.intersect1d(train, unseen)) == 0 and held.images is digits.images
    assert len(train) + len(test) + len(unseen) == len(digits)

    toy = ToyParts(k=10, size=28)
    small = ImageDataset("d", digits.images.clone(), digits.labels, digits.attributes, held.splits)
    small.images[:, 0, 0, 0] = torch.from_numpy(np.round(labels / 9 * 255).astype(np.uint8))
    grid, out = fewshot_transfer(toy, small, "digit", n_donors=3, n_sources=2, n_pairs=40)
    assert out["n_classes"] == 3 and out["chance"] == pytest.approx(1 / 3)
    assert out["s_recognition"] == 1.0 and out["s_recognition_real"] == 1.0
    assert grid.shape[:2] == (3 * 28 + 2 * 2, 4 * 28 + 3 * 2)
    with pytest.raises(FacefactorsError, match="unseen"):
        fewshot_transfer(toy, digits, "digit")


def test_sampling_runs_on_the_method(ds):
    model = build_model(cv_config(), ds).eval()
    grid, out = fixed_s_samples(model, ds.images[torch.arange(3)], "identity", n_samples=2)
    assert out.shape == (2, 3, 3, 32, 32)
    grid, res = fewshot_transfer(model, ds, "identity", n_pairs=20)
    assert res["n_classes"] == 2 and 0.0 <= res["s_recognition"] <= 1.0


# ---------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name, base_name, differs", [
    ("cycle_vae_digits.yaml", "cycle_vae_digits.yaml", {}),
    ("cycle_vae_digits_reverse_rec.yaml", "cycle_vae_digits.yaml", {"reverse_rec": 0.5}),
    ("cycle_vae_digits_adv_decoder.yaml", "cycle_vae_digits.yaml", {"adv": 0.05, "adv_target": "decoder"}),
    ("cycle_vae_digits_adv_both.yaml", "cycle_vae_digits.yaml", {"adv": 0.05, "adv_target": "both"}),
    ("cycle_vae_digits_wasserstein.yaml", "cycle_vae_digits.yaml", {"reverse_distance": "wasserstein"}),
    ("cycle_vae_synthfaces.yaml", "cycle_vae_synthfaces.yaml", {}),
    ("cycle_vae_synthfaces_independent.yaml", "cycle_vae_synthfaces.yaml", {"moments": 0.3, "kernel": 0.3}),
    ("cycle_vae_synthfaces_independent_unbiased.yaml", "cycle_vae_synthfaces.yaml",
     {"kernel": 1.0, "kernel_unbiased": True}),
    ("cycle_vae_synthfaces_expression.yaml", "cycle_vae_synthfaces.yaml", {}),
    ("cycle_vae_synthfaces_active.yaml", "cycle_vae_synthfaces.yaml", {"active_units": 0.01}),
    ("cycle_vae_digits_pruned.yaml", "cycle_vae_digits.yaml", {"prune": 0.25, "prune_start": 0.25}),
    ("cycle_vae_synthfaces_pruned.yaml", "cycle_vae_synthfaces.yaml", {"prune": 0.25, "prune_start": 0.25}),
])
def test_configs(name, base_name, differs, ds, digits):
    cfg, base = load_config(CONFIGS / name), load_config(CONFIGS / base_name)
    assert cfg.model.method == "cycle_vae" and cfg.train.time_budget_min in (10, 30)
    params = build_dataclass(CycleVAEParams, cfg.method, "method")
    base_params = build_dataclass(CycleVAEParams, base.method, "method")
    for key, value in differs.items():
        assert getattr(params, key) == value
    assert {k: v for k, v in vars(params).items() if k not in differs} == \
           {k: v for k, v in vars(base_params).items() if k not in differs}
    if cfg.data["name"] == "digits":
        assert cfg.data["size"] == 28 and cfg.train.time_budget_min == 10 and params.arch == "official"
        build_model(cfg, digits)
    else:
        assert cfg.data["size"] == 64 and cfg.data["heldout_identities"] > 0
        small = cfg.to_dict()
        small["model"]["width"] = 8
        build_model(build_dataclass(RunConfig, small), ds)


def test_sampling_report_writes_figures(tmp_path):
    from facefactors.eval.sampling import sampling_report

    data = hold_out_classes(toy_dataset(n=80, k=4), "digit", [2, 3], shots=0)
    metrics, figures = sampling_report(ToyParts(k=4), data, tmp_path, "digit", oracle=ToyOracle(k=4), n_images=3,
                                       n_samples=2)
    assert set(figures) == {"fixed_s_samples", "transfer_grid", "fewshot_transfer"}
    assert all(p.is_file() for p in figures.values())
    assert metrics["transfer"]["donor_rate"] == 1.0
    assert metrics["fewshot"]["n_classes"] == 2 and metrics["fewshot"]["s_recognition"] == 1.0
    one = hold_out_classes(toy_dataset(n=60), "digit", [2])
    metrics, figures = sampling_report(ToyParts(), one, tmp_path / "one", "digit", n_images=2, n_samples=1)
    assert "skipped" in metrics["fewshot"] and "fewshot_transfer" not in figures and "transfer" not in metrics


def test_active_units_track_the_variance_of_the_means():
    from facefactors.nn.active_units import ActiveUnits

    torch.manual_seed(0)
    au = ActiveUnits(3, threshold=0.01, momentum=0.1)
    assert au.mask().tolist() == [1.0, 1.0, 1.0]          # nothing seen yet: every unit is kept
    scale = torch.tensor([1.0, 0.05, 0.3])                 # variances 1, 0.0025, 0.09
    for _ in range(200):
        au.update(torch.randn(64, 3) * scale + 2.0)
    torch.testing.assert_close(au.variance(), scale ** 2, rtol=0.2, atol=1e-3)
    assert au.mask().tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError):
        ActiveUnits(3, threshold=0.0)


def test_active_units_zero_the_inactive_z_units_in_encode(tmp_path, ds):
    cfg = cv_config(steps=4, active_units=0.01)
    Trainer(cfg, tmp_path / "r", dataset=ds, log=lambda m: None).fit()
    from facefactors.runs import load_run
    run = load_run(tmp_path / "r")
    model = run.model.eval()
    assert int(model.z_active.seen) == 4 and "z_active.mean" in model.state_dict()
    x = ds.batch(range(8)).image
    mu, _, s = model._split(model.encoder(x))
    z = model.encode(x)
    mask = model.z_active.variance() > 0.01
    torch.testing.assert_close(z["rest"], mu * mask)
    torch.testing.assert_close(z["identity"], s)
    model.z_active.second.fill_(1.0)                      # every unit active: the means pass unchanged
    torch.testing.assert_close(model.encode(x)["rest"], mu)
    model.z_active.second.copy_(model.z_active.mean.pow(2))   # no unit varies: z is the prior mean
    assert model.encode(x)["rest"].abs().sum() == 0


def test_relative_active_units_judge_the_mean_against_the_posterior_noise():
    from facefactors.nn.active_units import ActiveUnits

    torch.manual_seed(0)
    au = ActiveUnits(3, threshold=0.25, momentum=0.1, relative=True)
    scale = torch.tensor([0.05, 0.05, 1.0])            # spread of the means
    logvar = torch.log(torch.tensor([0.001, 1.0, 1.0]))  # posterior variances: snr 2.5, 0.0025, 1
    for _ in range(200):
        au.update(torch.randn(64, 3) * scale, logvar.expand(64, 3))
    torch.testing.assert_close(au.snr(), scale ** 2 / logvar.exp(), rtol=0.2, atol=1e-3)
    assert au.mask().tolist() == [1.0, 0.0, 1.0]       # the same small spread: busy on little noise only
    with pytest.raises(ValueError, match="log-variances"):
        au.update(torch.randn(4, 3))
    with pytest.raises(ValueError, match="relative"):
        ActiveUnits(3).snr()


def test_prune_masks_z_in_training_decodes_and_encode_after_its_start(tmp_path, ds):
    from facefactors.runs import load_run

    Trainer(cv_config(steps=4, prune=0.5, prune_start=0.5), tmp_path / "r", dataset=ds, log=lambda m: None).fit()
    model = load_run(tmp_path / "r").model.eval()
    assert bool(model.pruning) and model.z_active.relative and "z_active.noise" in model.state_dict()
    x = ds.batch(range(8)).image
    mu, _, s = model.posterior(x)
    model.z_active.noise.fill_(1.0)
    model.z_active.second.copy_(model.z_active.mean.pow(2) + torch.tensor([1.0, 0, 1.0, 0, 0]))  # units 0, 2 busy
    keep = torch.tensor([1.0, 0, 1.0, 0, 0])
    z = model.encode(x)
    torch.testing.assert_close(z["rest"], mu * keep)
    poked = z.replace(rest=z["rest"] + (1 - keep) * 5.0)     # a pruned unit's value never reaches the decoder
    torch.testing.assert_close(model.decode(poked), model.decode(z))
    model.pruning.fill_(False)                               # before the start nothing is masked
    torch.testing.assert_close(model.encode(x)["rest"], mu)
    assert not torch.allclose(model.decode(poked), model.decode(z))
    with pytest.raises(FacefactorsError, match="set one of them"):
        build_model(cv_config(prune=0.5, active_units=0.01), ds)
    with pytest.raises(FacefactorsError, match="prune_start"):
        build_model(cv_config(prune=0.5, prune_start=1.0), ds)


def test_prune_in_training_sends_no_decoder_gradient_through_pruned_units(ds):
    model = build_model(cv_config(prune=0.5, prune_start=0.0), ds).train()
    model.bind_dataset(ds, seed=0)
    model.pruning.fill_(True)
    model.z_active.seen.fill_(10)                            # stats: only unit 0 is busy
    model.z_active.second.copy_(torch.tensor([1.0, 0, 0, 0, 0]))
    model.z_active.noise.fill_(1.0)
    batch = ds.batch(range(16))
    model.z_active.update = lambda mu, logvar: None          # keep the stats fixed for this step
    group, terms = next(iter(model.train_step(batch, step=5, total_steps=10)))
    assert group == "autoencoder"
    w = model.decoder.fc[0].weight                           # the first layer's columns for z's units
    grad = torch.autograd.grad(terms["rec"], w)[0]
    assert grad[:, 0].abs().sum() > 0 and grad[:, 1:model.z_dim].abs().sum() == 0


def test_prune_leaves_pruned_units_out_of_the_dependence_terms(ds):
    model = build_model(cv_config(prune=0.5, moments=1.0, kernel=1.0, kernel_unbiased=True), ds).train()
    model.bind_dataset(ds, seed=0)
    model.pruning.fill_(True)
    model.z_active.seen.fill_(10)                            # stats: units 0 and 1 busy
    model.z_active.second.copy_(torch.tensor([1.0, 1.0, 0, 0, 0]))
    model.z_active.noise.fill_(1.0)
    model.z_active.update = lambda mu, logvar: None
    _, terms = next(iter(model.train_step(ds.batch(range(16)), step=5, total_steps=10)))
    w = model.encoder.head.weight                            # rows 0..4: z's means
    for name in ("moments", "kernel"):
        grad = torch.autograd.grad(terms[name], w, retain_graph=True)[0]
        assert grad[:2].abs().sum() > 0 and grad[2:model.z_dim].abs().sum() == 0, name


def test_vae_units_bands_partition_z_and_decode_from_each(tmp_path, ds):
    from benchmarks.vae_units import unit_bands

    Trainer(cv_config(steps=3), tmp_path / "r", dataset=ds, log=lambda m: None).fit()
    attr, majority, rows = unit_bands(str(tmp_path / "r"), n_train=40, n_test=20)
    assert attr == "identity" and 0 < majority <= 1
    bands = {name: (keep, acc, db) for name, keep, acc, db in rows}
    assert bands["all"][0].all() and not bands["none (z at the prior mean)"][0].any()
    by_ratio = [bands[k][0] for k in ("means vary by more than 0.5 of the posterior sd", "by 0.1-0.5", "by less than 0.1")]
    assert (sum(k.astype(int) for k in by_ratio) == 1).all()          # the three bands partition z
    assert (bands["active (variance of the mean > 0.01)"][0] ^ bands["inactive"][0]).all()
    assert bands["none (z at the prior mean)"][1] is None and all(np.isfinite(db) for _, _, _, db in rows)

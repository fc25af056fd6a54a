"""ifcvae_gan: parts, switch codes, every loss logged, gradient routing of A and the discriminator, configs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from facefactors.config import RunConfig, build_dataclass, load_config
from facefactors.data import make_dataset
from facefactors.errors import FacefactorsError
from facefactors.methods.ifcvae_gan import IFcVAEGANParams, rec_loss_from_preact
from facefactors.runs import build_model
from facefactors.train.checkpoint import list_checkpoints, read_checkpoint
from facefactors.train.trainer import Trainer

from tests.helpers import blobs_dataset

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture(scope="module")
def ds():
    return make_dataset({"name": "synthfaces", "size": 32, "n": 96, "n_identities": 6, "seed": 1,
                         "derived": ["smile"]})


def if_config(steps=3, attributes=("glasses", "smile"), **method) -> RunConfig:
    return build_dataclass(RunConfig, {
        "seed": 0, "data": {"name": "synthfaces", "size": 32},
        "model": {"method": "ifcvae_gan", "attributes": list(attributes), "width": 8, "part_dims": {"rest": 12}},
        "method": method,
        "train": {"steps": steps, "batch_size": 16, "log_every": 1, "checkpoint_every": 100, "preview_every": 0,
                  "progress": False}})


def grads(module) -> list:
    return [p.grad for p in module.parameters()]


def has_grad(module) -> bool:
    return any(g is not None and g.abs().sum() > 0 for g in grads(module))


def no_grad(module) -> bool:
    return all(g is None for g in grads(module))


def test_parts_encode_decode_and_switch_codes(ds):
    model = build_model(if_config(), ds).eval()
    z = model.encode(ds.batch(range(4)).image)
    assert z.parts == ["glasses", "smile", "rest"]
    assert z["glasses"].shape == (4, 1) and z["rest"].shape == (4, 12)
    assert ((z["smile"] >= 0) & (z["smile"] <= 1)).all()
    x = model.decode(z)
    assert x.shape == (4, 3, 32, 32) and x.abs().max() <= 1
    assert set(model.switch_parts) == {"glasses", "smile"}
    assert torch.equal(model.switch_code("glasses", 0.25, 3), torch.full((3, 1), 0.25))
    with pytest.raises(FacefactorsError, match="binary"):
        model.switch_code("glasses", 2)
    with pytest.raises(FacefactorsError, match="no attribute value"):
        model.switch_code("rest", 1)
    assert model.sample("rest", 5).shape == (5, 12)
    with pytest.raises(NotImplementedError):
        model.sample("glasses", 5)


def test_categorical_attribute_is_one_hot():
    blobs = blobs_dataset(n=32, size=32)
    cfg = build_dataclass(RunConfig, {"model": {"method": "ifcvae_gan", "attributes": ["colour", "place"],
                                                "width": 8, "part_dims": {"rest": 6}}})
    model = build_model(cfg, blobs).eval()
    z = model.encode(blobs.batch(range(4)).image)
    assert z["colour"].shape == (4, 3) and torch.allclose(z["colour"].sum(1), torch.ones(4))
    assert torch.equal(model.switch_code("colour", 2, 2), torch.tensor([[0.0, 0.0, 1.0]] * 2))
    with pytest.raises(FacefactorsError, match="out of range"):
        model.switch_code("colour", 3)


def test_rejects_bad_setups(ds):
    with pytest.raises(FacefactorsError, match="continuous"):
        build_model(if_config(attributes=["yaw"]), ds)
    with pytest.raises(FacefactorsError, match="aux_mode"):
        build_model(if_config(aux_mode="sometimes"), ds)
    cfg = if_config()
    cfg.model.part_dims = {"glasses": 4, "rest": 8}
    with pytest.raises(FacefactorsError, match="value"):
        build_model(cfg, ds)


def test_trains_and_logs_every_loss(tmp_path, ds):
    Trainer(if_config(steps=3, cls_rec=0.1, dis_momentum=0.5), tmp_path / "r", dataset=ds, log=lambda m: None).fit()
    rec = json.loads((tmp_path / "r" / "log.jsonl").read_text().splitlines()[-1])
    for key in ["discriminator/gan", "aux/aux_ce", "autoencoder/rec", "autoencoder/kl", "autoencoder/cls",
                "autoencoder/aux", "autoencoder/gan", "autoencoder/cls_rec"]:
        assert key in rec, key
        assert rec[key] == rec[key] and abs(rec[key]) < 1e6  # finite
    assert rec["autoencoder/aux"] < 0  # -L_aux: the encoder maximises A's loss
    tensors, _ = read_checkpoint(list_checkpoints(tmp_path / "r")[-1])
    for group in ("discriminator", "aux", "autoencoder"):
        assert any(k.startswith(f"optim/{group}/") for k in tensors), group
    assert any("momentum_buffer" in k for k in tensors if k.startswith("optim/discriminator/"))


def test_switches_turn_terms_and_networks_off(ds):
    model = build_model(if_config(aux=0.0, gan=0.0, cls=0.0), ds).train()
    assert model.discriminator is None and "discriminator" not in model.optimizers()
    groups = {g: set(l) for g, l in model.train_step(ds.batch(range(16)), 0, 10)}
    assert groups == {"aux": {"aux_ce"}, "autoencoder": {"rec", "kl"}}
    model = build_model(if_config(warmup=0.5), ds).train()
    early = {g: set(l) for g, l in model.train_step(ds.batch(range(16)), 0, 10)}
    late = {g: set(l) for g, l in model.train_step(ds.batch(range(16)), 6, 10)}
    assert "aux" not in early["autoencoder"] and "gan" not in early["autoencoder"]
    assert {"aux", "gan"} <= late["autoencoder"]


def test_aux_network_minimises_and_encoder_maximises(ds):
    """A's loss reaches A only; -L_aux reaches the encoder only (never A or the decoder), and an
    encoder step on it raises A's loss."""
    torch.manual_seed(0)
    model = build_model(if_config(rec=0.0, kl=0.0, cls=0.0, gan=0.0, aux=1.0, lr=1e-2), ds).train()
    batch = ds.batch(range(16))
    opts = {k: s.build() for k, s in model.optimizers().items()}
    gen = model.train_step(batch, 0, 10)
    group, losses = next(gen)
    assert group == "aux" and set(losses) == {"aux_ce"}
    model.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    assert has_grad(model.aux_net) and no_grad(model.encoder) and no_grad(model.decoder)

    group, losses = next(gen)
    assert group == "autoencoder" and set(losses) == {"aux"}
    model.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    assert has_grad(model.encoder) and no_grad(model.aux_net) and no_grad(model.decoder)

    def aux_loss():
        with torch.no_grad():
            mu, _, _ = model._split(model.encoder(batch.image))
            return float(model._aux_losses(model.aux_net(mu), batch.labels, confuse=False))

    before = aux_loss()
    opts["autoencoder"].step()
    assert aux_loss() > before


def test_confuse_mode_targets_the_uniform_posterior(ds):
    model = build_model(if_config(rec=0.0, kl=0.0, cls=0.0, gan=0.0, aux_mode="confuse"), ds).train()
    torch.nn.init.zeros_(model.aux_net.net[-1].weight)
    torch.nn.init.zeros_(model.aux_net.net[-1].bias)   # A outputs logit 0: posterior 1/2 everywhere
    out = dict(model.train_step(ds.batch(range(16)), 0, 10))["autoencoder"]
    assert out["aux"].item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-5)


def test_aux_moments_take_y_out_of_z_means(ds):
    torch.manual_seed(0)
    model = build_model(if_config(rec=0.0, kl=0.0, cls=0.0, gan=0.0, aux=0.0, aux_moments=1.0), ds).train()
    batch = ds.batch(range(64))
    out = dict(model.train_step(batch, 0, 10))["autoencoder"]
    assert set(out) == {"aux_mom"}
    out["aux_mom"].backward()
    assert has_grad(model.encoder) and no_grad(model.aux_net) and no_grad(model.decoder)
    # descent on it alone empties z's means of the labels (as far as this batch shows)
    opt = torch.optim.Adam(model.encoder.parameters(), lr=1e-3)
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = dict(model.train_step(batch, 0, 10))["autoencoder"]["aux_mom"]
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < 0.5 * first


def test_aux_whiten_measures_the_moments_on_whitened_means(ds):
    """``aux_whiten``: the training step folds z's means into running whitening statistics and
    measures aux_moments on the whitened means; evaluation leaves the statistics alone."""
    from facefactors.nn.losses import label_dependence
    torch.manual_seed(0)
    model = build_model(if_config(rec=0.0, kl=0.0, cls=0.0, gan=0.0, aux=0.0, aux_moments=1.0,
                                  aux_whiten=True), ds).train()
    assert model.aux_white is not None and "aux_white.cov" in model.state_dict()
    batch = ds.batch(range(64))
    out = dict(model.train_step(batch, 0, 10))["autoencoder"]
    assert int(model.aux_white.updates) == 1
    mu, _, _ = model._split(model.encoder(batch.image))
    white = model.aux_white(mu)
    expected = sum(label_dependence(white, batch.labels[a], sp.num_classes if sp.discrete else 0)
                   for a, sp in model.specs.items()) / len(model.specs)
    assert out["aux_mom"].item() == pytest.approx(expected.item(), rel=1e-4)
    out["aux_mom"].backward()
    assert has_grad(model.encoder) and no_grad(model.decoder)
    model.eval()
    dict(model.train_step(batch, 0, 10))
    assert int(model.aux_white.updates) == 1
    assert build_model(if_config(aux_moments=0.0, aux_whiten=True), ds).aux_white is None


def test_aux_spread_zero_charges_the_class_means_only(ds):
    from facefactors.nn.losses import label_dependence
    torch.manual_seed(0)
    model = build_model(if_config(rec=0.0, kl=0.0, cls=0.0, gan=0.0, aux=0.0, aux_moments=1.0,
                                  aux_spread=0.0), ds).train()
    batch = ds.batch(range(64))
    out = dict(model.train_step(batch, 0, 10))["autoencoder"]
    mu, _, _ = model._split(model.encoder(batch.image))
    means_only = [label_dependence(mu, batch.labels[a], sp.num_classes if sp.discrete else 0, spread=0.0)
                  for a, sp in model.specs.items()]
    assert out["aux_mom"].item() == pytest.approx((sum(means_only) / len(means_only)).item(), rel=1e-4)


def test_aux_spread_by_sets_the_spread_weight_per_attribute(ds):
    from facefactors.nn.losses import label_dependence
    torch.manual_seed(0)
    model = build_model(if_config(rec=0.0, kl=0.0, cls=0.0, gan=0.0, aux=0.0, aux_moments=1.0,
                                  aux_spread=0.0, aux_spread_by={"smile": 1.0}), ds).train()
    batch = ds.batch(range(64))
    out = dict(model.train_step(batch, 0, 10))["autoencoder"]
    mu, _, _ = model._split(model.encoder(batch.image))
    terms = [label_dependence(mu, batch.labels[a], sp.num_classes if sp.discrete else 0,
                              spread=1.0 if a == "smile" else 0.0) for a, sp in model.specs.items()]
    assert out["aux_mom"].item() == pytest.approx((sum(terms) / len(terms)).item(), rel=1e-4)
    with pytest.raises(FacefactorsError, match="aux_spread_by names \\['beard'\\]"):
        build_model(if_config(aux_moments=1.0, aux_spread_by={"beard": 1.0}), ds)


def test_switched_labels_flip_binary_and_change_every_categorical_class(ds):
    blobs = blobs_dataset(n=32, size=32)
    cfg = build_dataclass(RunConfig, {"model": {"method": "ifcvae_gan", "attributes": ["colour", "place"],
                                                "width": 8, "part_dims": {"rest": 6}}})
    model = build_model(cfg, blobs)
    labels = blobs.batch(range(32)).labels
    torch.manual_seed(0)
    out = model.switched_labels(labels)
    for a, spec in model.specs.items():
        assert (out[a] != labels[a]).all() and (out[a] >= 0).all() and (out[a] < spec.num_classes).all()
    flipped = build_model(if_config(), ds)
    y = {"glasses": torch.tensor([0, 1, 1]), "smile": torch.tensor([1, 0, 0])}
    assert {a: v.tolist() for a, v in flipped.switched_labels(y).items()} == {"glasses": [1, 0, 0], "smile": [0, 1, 1]}


def test_cls_edit_trains_the_decoder_to_render_switched_attributes(ds):
    """``cls_edit``: the first ``edit_images`` images decoded with every attribute switched are
    classified by the frozen y-hat head; the loss reaches the decoder (and z), never the encoder's
    weights through the classifier, and descent on it makes y-hat read the switched values."""
    torch.manual_seed(0)
    model = build_model(if_config(rec=0.0, kl=0.0, cls=0.0, gan=0.0, aux=0.0, cls_edit=1.0, edit_images=8),
                        ds).train()
    batch = ds.batch(range(16))
    out = dict(model.train_step(batch, 0, 10))["autoencoder"]
    assert set(out) == {"cls_edit"}
    mu, _, _ = model._split(model.encoder(batch.image))
    model.zero_grad(set_to_none=True)
    model._edit_loss(mu.detach(), batch.labels).backward()
    assert has_grad(model.decoder) and no_grad(model.encoder)

    def switched_read():
        with torch.no_grad():
            target = model.switched_labels({a: batch.labels[a][:8] for a in model.specs})
            x = torch.tanh(model._decode_pre(model.label_codes(target), mu[:8].detach()))
            _, _, logits = model._split(model.encoder(x))
            return float(sum(((logits[a].reshape(-1) > 0).long() == target[a]).float().mean() for a in model.specs))

    before = switched_read()
    opt = torch.optim.Adam(model.decoder.parameters(), lr=1e-2)
    for _ in range(40):
        opt.zero_grad()
        model._edit_loss(mu.detach(), batch.labels).backward()
        opt.step()
    assert switched_read() == 2.0 > before
    with pytest.raises(FacefactorsError, match="edit_images"):
        build_model(if_config(edit_images=-1), ds)


def test_discriminator_and_generator_gradients_are_separate(ds):
    torch.manual_seed(0)
    model = build_model(if_config(rec=0.0, kl=0.0, cls=0.0, aux=0.0, gan=1.0), ds).train()
    gen = model.train_step(ds.batch(range(16)), 0, 10)
    group, losses = next(gen)
    assert group == "discriminator" and set(losses) == {"gan"}
    model.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    assert has_grad(model.discriminator) and no_grad(model.encoder) and no_grad(model.decoder)
    group, _ = next(gen)
    assert group == "aux"
    group, losses = next(gen)
    assert group == "autoencoder" and set(losses) == {"gan"}
    model.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    assert has_grad(model.encoder) and has_grad(model.decoder) and no_grad(model.discriminator)


def test_bce_reconstruction_matches_pixel_bce():
    pre = torch.randn(2, 3, 4, 4)
    x = torch.rand(2, 3, 4, 4) * 2 - 1
    p, t = (torch.tanh(pre) + 1) / 2, (x + 1) / 2
    expected = -(t * p.log() + (1 - t) * (1 - p).log()).mean()
    assert rec_loss_from_preact("bce", pre, x).item() == pytest.approx(expected.item(), rel=1e-4)
    assert rec_loss_from_preact("mse", pre, x).item() == pytest.approx(((torch.tanh(pre) - x) ** 2).mean().item())


@pytest.mark.parametrize("name, differs", [
    ("ifcvae_gan_synthfaces.yaml", {}),
    ("ifcvae_gan_synthfaces_no_aux.yaml", {"aux": 0.0}),
    ("ifcvae_gan_synthfaces_cls_rec.yaml", {"cls_rec": 0.1}),
    ("ifcvae_gan_synthfaces_table1.yaml", {"cls": 0.1, "gan": 0.1, "kl": 0.2, "dis_momentum": 0.0}),
    ("ifcvae_gan_synthfaces_no_kl.yaml", {"kl": 0.0}),
    ("ifcvae_gan_synthfaces_no_gan.yaml", {"gan": 0.0}),
    ("ifcvae_gan_synthfaces_confuse.yaml", {"aux_mode": "confuse"}),
    ("ifcvae_gan_synthfaces_confuse_moments.yaml", {"aux_mode": "confuse", "aux_moments": 1.0}),
    ("ifcvae_gan_synthfaces_moments.yaml", {"aux": 0.0, "aux_moments": 1.0}),
    ("ifcvae_gan_synthfaces_cls_edit.yaml", {"cls_edit": 1.0}),
    ("ifcvae_gan_synthfaces_moments_means.yaml", {"aux": 0.0, "aux_moments": 1.0, "aux_spread": 0.0}),
    ("ifcvae_gan_synthfaces_moments_smile_spread.yaml",
     {"aux": 0.0, "aux_moments": 1.0, "aux_spread": 0.0, "aux_spread_by": {"smile": 0.5}}),
])
def test_configs(name, differs, ds):
    cfg = load_config(CONFIGS / name)
    base = load_config(CONFIGS / "ifcvae_gan_synthfaces.yaml")
    assert cfg.model.method == "ifcvae_gan" and cfg.model.attributes == ["glasses", "smile"]
    assert cfg.data["derived"] == ["smile"] and cfg.data["size"] == 64 and cfg.train.time_budget_min == 30
    params = build_dataclass(IFcVAEGANParams, cfg.method, "method")
    base_params = build_dataclass(IFcVAEGANParams, base.method, "method")
    for key, value in differs.items():
        assert getattr(params, key) == value
    assert {k: v for k, v in vars(params).items() if k not in differs} == \
           {k: v for k, v in vars(base_params).items() if k not in differs}
    assert (cfg.data, cfg.model, cfg.train, cfg.seed) == (base.data, base.model, base.train, base.seed)
    small = build_dataclass(RunConfig, {**cfg.to_dict(), "model": {**cfg.to_dict()["model"], "width": 8}})
    build_model(small, ds)  # the method builds from the config (on small images)

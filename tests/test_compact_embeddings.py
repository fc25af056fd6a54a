"""compact_embeddings: parts and complements, stages S and J, every loss logged and switchable,
triplet loss on constructed embeddings, prior samples, configs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from facefactors.config import RunConfig, build_dataclass, load_config
from facefactors.data.synthfaces import SynthFacesConfig, generate
from facefactors.errors import FacefactorsError
from facefactors.latent import interpolate
from facefactors.methods.compact_embeddings import triplet_loss
from facefactors.nn.losses import label_dependence
from facefactors.runs import build_model
from facefactors.train.trainer import Trainer

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
ATTRS = ["pose", "identity", "expression", "illumination"]
DIMS = {"pose": 2, "identity": 6, "expression": 4, "illumination": 4, "rest": 4}
STAGE1 = ("rec", "enc", "adv", "gen")
STAGE2 = ("f_pose", "f_identity", "f_expression", "f_illumination", "zrec", "cyc", "aug")


@pytest.fixture(scope="module")
def ds():
    return generate(SynthFacesConfig(n=96, size=32, n_identities=4, seed=2))


def ce_config(steps=4, attributes=ATTRS, dims=DIMS, **method) -> RunConfig:
    method = {"z_dim": 20, "lr": 1e-3, "dis_lr": 1e-3, "betas": [0.5, 0.999], "dis_width": 8,
              "latent_dis_hidden": 16, "factor_hidden": 16, "regress": {"pose": ["yaw", "roll"]}, **method}
    return build_dataclass(RunConfig, {
        "seed": 0, "data": {"name": "synthfaces", "size": 32},
        "model": {"method": "compact_embeddings", "attributes": list(attributes), "width": 8,
                  "part_dims": dict(dims)},
        "method": method,
        "train": {"steps": steps, "batch_size": 16, "log_every": 1, "checkpoint_every": 100, "preview_every": 0,
                  "progress": False}})


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(module, before):
    return {k for k, v in module.state_dict().items() if not torch.equal(v, before[k])}


def run_step(model, opts, batch, step, total):
    """One training step the way the trainer runs it; returns the groups yielded and their losses."""
    seen = []
    for group, losses in model.train_step(batch, step, total):
        seen.append((group, set(losses)))
        opts[group].zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opts[group].step()
    return seen


def test_parts_complements_and_decode(ds):
    model = build_model(ce_config(), ds).eval()
    x = ds.batch(range(6)).image
    z = model.encode(x)
    assert z.parts == ATTRS + ["rest"] and z["pose"].shape == (6, 2) and z["rest"].shape == (6, 4)
    assert model.decode(z).shape == (6, 3, 32, 32)
    # the factor network starts as an exact inverse pair: decode(encode(x)) is the autoencoder's reconstruction
    with torch.no_grad():
        torch.testing.assert_close(model.decode(z), model.decoder(model.encoder(x)), rtol=1e-4, atol=1e-5)
    assert model.complement_parts("identity") == ["pose", "expression", "illumination", "rest"]
    comp = model.complement(z, "expression")
    assert comp.shape == (6, 2 + 6 + 4 + 4)
    torch.testing.assert_close(comp[:, 2:8], z["identity"])
    # "all but p": interpolating the complement moves everything except p
    za, zb = z.index(slice(0, 3)), z.index(slice(3, 6))
    end = interpolate(za, zb, model.complement_parts("identity"), [1.0])[0]
    torch.testing.assert_close(end["identity"], za["identity"])
    torch.testing.assert_close(end["expression"], zb["expression"])
    assert model.decode(end).shape == (3, 3, 32, 32)
    with pytest.raises(FacefactorsError, match="unknown latent part"):
        model.complement_parts("glasses")


def test_prior_samples(ds):
    model = build_model(ce_config(), ds).eval()
    with torch.no_grad():
        s = model.sample("identity", 5, torch.Generator().manual_seed(1))
        again = model.sample("identity", 5, torch.Generator().manual_seed(1))
        full = model.sample_latent(5, torch.Generator().manual_seed(1))
    assert s.shape == (5, 6)
    torch.testing.assert_close(s, again)
    torch.testing.assert_close(full["identity"], s)   # one draw gives every part of the same z
    assert model.decode(full).shape == (5, 3, 32, 32)


def test_s_mode_freezes_stage1_in_stage2(ds):
    torch.manual_seed(0)
    model = build_model(ce_config(mode="S", stage1_fraction=0.5), ds).train()
    specs = model.optimizers()
    assert list(specs) == ["latent_dis", "image_dis", "autoencoder", "factor"]
    opts = {k: s.build() for k, s in specs.items()}
    batch = ds.batch(range(16))
    stage1 = {"encoder": model.encoder, "decoder": model.decoder, "latent_dis": model.latent_dis,
              "image_dis": model.image_dis}
    factor = {"factor": model.factor, "factor_inv": model.factor_inv, "heads": model.heads}

    # stage 1 (step 1 of 4): the autoencoder and discriminators train, the factor network does not
    before1, beforef = {k: snapshot(m) for k, m in stage1.items()}, {k: snapshot(m) for k, m in factor.items()}
    seen = run_step(model, opts, batch, 1, 4)
    assert [g for g, _ in seen] == ["latent_dis", "image_dis", "autoencoder"]
    assert seen[2][1] == set(STAGE1)
    assert all(changed(m, before1[k]) for k, m in stage1.items())
    assert not any(changed(m, beforef[k]) for k, m in factor.items())

    # stage 2 (steps 2, 3): only the factor network; weights and batch-norm statistics of stage 1 fixed
    before1, beforef = {k: snapshot(m) for k, m in stage1.items()}, {k: snapshot(m) for k, m in factor.items()}
    for step in (2, 3):
        seen = run_step(model, opts, batch, step, 4)
        assert seen == [("factor", set(STAGE2))]
    assert not any(changed(m, before1[k]) for k, m in stage1.items())
    assert changed(model.factor, beforef["factor"]) and changed(model.factor_inv, beforef["factor_inv"])
    assert changed(model.heads, beforef["heads"])
    assert all(p.requires_grad for p in model.parameters())       # unfrozen again after the step
    assert not model.encoder.training and model.factor.training


def test_j_mode_trains_everything(ds):
    torch.manual_seed(0)
    model = build_model(ce_config(mode="J", stage1_fraction=0.5), ds).train()
    specs = model.optimizers()
    assert list(specs) == ["latent_dis", "image_dis", "autoencoder"]
    factor_ids = {id(p) for m in (model.factor, model.factor_inv, model.heads) for p in m.parameters()}
    assert factor_ids <= {id(p) for p in specs["autoencoder"].params}
    opts = {k: s.build() for k, s in specs.items()}
    batch = ds.batch(range(16))
    seen = run_step(model, opts, batch, 0, 4)
    assert seen[-1] == ("autoencoder", set(STAGE1))
    nets = {"encoder": model.encoder, "decoder": model.decoder, "factor": model.factor,
            "factor_inv": model.factor_inv, "heads": model.heads}
    before = {k: snapshot(m) for k, m in nets.items()}
    seen = run_step(model, opts, batch, 2, 4)
    assert [g for g, _ in seen] == ["latent_dis", "image_dis", "autoencoder"]
    assert seen[-1][1] == set(STAGE1) | set(STAGE2)
    assert all(changed(m, before[k]) for k, m in nets.items())
    assert model.encoder.training


def test_joint_gradients_reach_the_encoder(ds):
    """J: the stage-2 losses alone (no stage-1 terms) move the encoder and decoder."""
    torch.manual_seed(0)
    model = build_model(ce_config(mode="J", stage1_fraction=0.0, joint_stage1=False), ds).train()
    (group, losses), = list(model.train_step(ds.batch(range(16)), 0, 4))
    assert group == "autoencoder" and set(losses) == set(STAGE2)
    sum(losses.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decoder.parameters())


def test_trainer_logs_every_loss_across_the_switch(tmp_path, ds):
    Trainer(ce_config(steps=4, mode="S", stage1_fraction=0.5), tmp_path / "r", dataset=ds, log=lambda m: None).fit()
    records = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    first, last = records[0], records[-1]
    for k in ["latent_dis/latent_dis", "image_dis/image_dis", *(f"autoencoder/{t}" for t in STAGE1)]:
        assert k in first and abs(first[k]) < 1e6, k
    for k in (f"factor/{t}" for t in STAGE2):
        assert k in last and abs(last[k]) < 1e6, k
    assert not any(k.startswith("autoencoder/") for k in last)


@pytest.mark.parametrize("weight", ["rec", "enc", "adv", "gen", "f", "zrec", "cyc", "aug"])
def test_every_loss_switches_off(ds, weight):
    torch.manual_seed(0)
    model = build_model(ce_config(mode="J", stage1_fraction=0.5, **{weight: 0.0}), ds).train()
    losses = dict(model.train_step(ds.batch(range(16)), 3, 4))["autoencoder"]
    expected = set(STAGE1) | set(STAGE2)
    expected -= {f"f_{a}" for a in ATTRS} if weight == "f" else {weight}
    assert set(losses) == expected
    if weight == "enc":
        assert model.latent_dis is None and "latent_dis" not in model.optimizers()


def test_no_image_discriminator_without_gan_terms(ds):
    model = build_model(ce_config(adv=0.0, gen=0.0), ds)
    assert model.image_dis is None and "image_dis" not in model.optimizers()
    groups = [g for g, _ in model.train().train_step(ds.batch(range(8)), 0, 4)]
    assert groups == ["latent_dis", "autoencoder"]


def test_triplet_loss_on_constructed_embeddings():
    labels = torch.tensor([0, 0, 1, 1])
    separated = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert triplet_loss(separated, labels, 0.2).item() == 0.0            # d(a,p) = 0, d(a,n) = 2
    assert triplet_loss(separated, labels, 0.2, "hard").item() == 0.0
    collapsed = torch.ones(4, 3)
    assert triplet_loss(collapsed, labels, 0.2).item() == pytest.approx(0.2)   # every triplet: margin
    assert triplet_loss(collapsed, labels, 0.2, "hard").item() == pytest.approx(0.2)
    # hand-computed, unnormalised 1-d: squared distances d01 = 4, d02 = 9, d12 = 1
    emb = torch.tensor([[0.0], [2.0], [3.0]], requires_grad=True)
    y = torch.tensor([0, 0, 1])
    # triplets (0,1,2): 4 - 9 + 0.5 < 0; (1,0,2): 4 - 1 + 0.5 = 3.5 -> mean over active ones
    assert triplet_loss(emb, y, 0.5, normalize=False).item() == pytest.approx(3.5)
    # batch-hard: anchor 0 -> 0, anchor 1 -> 3.5, anchor 2 has no positive
    loss = triplet_loss(emb, y, 0.5, "hard", normalize=False)
    assert loss.item() == pytest.approx(1.75)
    loss.backward()
    assert torch.isfinite(emb.grad).all()
    # no positive pair in the batch: zero, still differentiable
    e = torch.randn(3, 4, requires_grad=True)
    zero = triplet_loss(e, torch.tensor([0, 1, 2]))
    zero.backward()
    assert zero.item() == 0.0 and e.grad is not None


def test_regression_part_and_label_checks(ds):
    torch.manual_seed(0)
    model = build_model(ce_config(), ds).train()
    assert model.regress == {"pose": ["yaw", "roll"]} and "pose" not in model.heads
    batch = ds.batch(range(16))
    list(model.train_step(batch, 3, 4))          # stage 2: the target statistics are set
    yaw = batch.labels["yaw"].float()
    torch.testing.assert_close(model.reg_stats["pose"].mean[0], yaw.mean())
    f = model.encode(batch.image)
    t = torch.stack([batch.labels["yaw"], batch.labels["roll"]], 1).float()
    expected = torch.nn.functional.mse_loss(f["pose"], model.reg_stats["pose"].standardise(t))
    torch.testing.assert_close(model.attribute_losses(f, batch.labels)["pose"], expected)
    with pytest.raises(FacefactorsError, match="regress names 'posture'"):
        build_model(ce_config(regress={"posture": ["yaw"]}), ds)
    model = build_model(ce_config(regress={"pose": ["tilt"]}), ds).train()
    with pytest.raises(FacefactorsError, match="needs the label 'tilt'"):
        list(model.train_step(batch, 3, 4))


@pytest.mark.parametrize("bad, match", [({"mode": "X"}, "method.mode"),
                                        ({"z_dim": 40}, "z_dim is 40"),
                                        ({"f": 0.0, "zrec": 0.0, "cyc": 0.0, "aug": 0.0}, "stage-2 weight"),
                                        ({"triplet_mining": "semi"}, "triplet_mining")])
def test_bad_params(ds, bad, match):
    with pytest.raises(FacefactorsError, match=match):
        build_model(ce_config(**bad), ds)


def test_identity_only_variant(ds):
    model = build_model(ce_config(attributes=["identity"], dims={"identity": 6}), ds)
    assert model.part_names == ["identity", "rest"] and model.dims["rest"] == 14   # z_dim 20 - 6
    assert model.regress == {} and model.triplet == ["identity"]


ABLATIONS = {  # file suffix -> (what the row changes, checked on the loaded config)
    "": {},
    "_aae": {"adv": 0.0, "gen": 0.0},
    "_no_gen": {"gen": 0.0},
    "_discriminative_only": {"zrec": 0.0, "cyc": 0.0, "aug": 0.0},
    "_no_disentanglement": {"cyc": 0.0, "aug": 0.0},
    "_no_aug": {"aug": 0.0},
    "_identity_only": {"attributes": ["identity"]},
    "_expression_only": {"attributes": ["expression"]},
    "_complement_adv": {"complement_adv": 1.0, "complement_adv_steps": 2},   # not a paper row
    "_complement_terms": {"complement_adv": 1.0, "complement_moments": 1.0, "complement_kernel": 10.0,
                          "part_compactness": 1.0},                            # not a paper row
}


@pytest.mark.parametrize("mode", ["S", "J"])
@pytest.mark.parametrize("suffix", list(ABLATIONS))
def test_configs_load_and_build(mode, suffix):
    path = CONFIGS / f"compact_embeddings_synthfaces_{mode}{suffix}.yaml"
    cfg = load_config(path)
    assert cfg.model.method == "compact_embeddings" and cfg.method["mode"] == mode
    assert cfg.train.time_budget_min == 30 and cfg.data["size"] == 64
    for key, value in ABLATIONS[suffix].items():
        got = cfg.model.attributes if key == "attributes" else cfg.method[key]
        assert got == value, (path.name, key)
    base = load_config(CONFIGS / f"compact_embeddings_synthfaces_{mode}.yaml")
    assert cfg.train == base.train and cfg.data == base.data     # same budget and data as the full model
    tiny = generate(SynthFacesConfig(n=24, size=64, n_identities=4, seed=0))
    model = build_model(cfg, tiny)
    assert sum(model.dims.values()) >= cfg.method["z_dim"]
    stage1 = model.stage1_steps(cfg.train.steps)
    assert 0 < stage1 < cfg.train.steps


def test_s_and_j_share_stage1():
    s = load_config(CONFIGS / "compact_embeddings_synthfaces_S.yaml")
    j = load_config(CONFIGS / "compact_embeddings_synthfaces_J.yaml")
    assert round(s.method["stage1_fraction"] * s.train.steps) == round(j.method["stage1_fraction"] * j.train.steps)


@pytest.mark.parametrize("mode", ["S", "J"])
def test_resume_across_the_stage_switch_is_exact(tmp_path, ds, mode):
    import shutil

    from facefactors.train.checkpoint import list_checkpoints, read_checkpoint

    cfg = ce_config(steps=4, mode=mode, stage1_fraction=0.5)
    cfg.train.checkpoint_every, cfg.train.keep_checkpoints = 2, 10
    Trainer(cfg, tmp_path / "a", dataset=ds, log=lambda m: None).fit()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    list_checkpoints(tmp_path / "b")[-1].unlink()          # b now ends at step 2, the end of stage 1
    Trainer(cfg, tmp_path / "b", resume=True, dataset=ds, log=lambda m: None).fit()
    wa, _ = read_checkpoint(list_checkpoints(tmp_path / "a")[-1])
    wb, _ = read_checkpoint(list_checkpoints(tmp_path / "b")[-1])
    assert all(torch.equal(wa[k], wb[k]) for k in wa if k.startswith("model/"))


def test_complement_adversaries(ds):
    """The adversary on each f_not_p learns from detached complements in its own group; the factor
    network is trained through it (frozen) towards a uniform posterior / the mean prediction."""
    torch.manual_seed(0)
    attrs = ["pose", "identity", "expression_intensity"]
    dims = {"pose": 2, "identity": 6, "expression_intensity": 2, "rest": 10}
    model = build_model(ce_config(mode="S", stage1_fraction=0.5, complement_adv=0.5, complement_adv_steps=2,
                                  attributes=attrs, dims=dims), ds).train()
    assert model.attr_classes == {"pose": 3, "identity": 4, "expression_intensity": 0}
    assert model.comp_adv["identity"].net[1].in_features == 20 - 6      # reads f_not_identity
    specs = model.optimizers()
    assert list(specs) == ["latent_dis", "image_dis", "autoencoder", "factor", "complement_adv"]
    opts = {k: s.build() for k, s in specs.items()}
    batch = ds.batch(range(16))
    assert [g for g, _ in run_step(model, opts, batch, 1, 4)] == ["latent_dis", "image_dis", "autoencoder"]

    # stage 2: two adversary updates, then the factor step with the confusion term
    adv_before, factor_before = snapshot(model.comp_adv), snapshot(model.factor)
    gen = model.train_step(batch, 2, 4)
    for _ in range(2):
        group, losses = next(gen)
        assert group == "complement_adv" and set(losses) == {"comp_adv"}
        opts[group].zero_grad(set_to_none=True)
        losses["comp_adv"].backward()
        assert model.factor.linear.weight.grad is None          # detached complements
        opts[group].step()
    assert changed(model.comp_adv, adv_before) and not changed(model.factor, factor_before)
    group, losses = next(gen)
    assert group == "factor" and "comp_conf" in losses
    for q in model.comp_adv.parameters():
        q.grad = None
    losses["comp_conf"].backward()
    assert all(q.grad is None for q in model.comp_adv.parameters())  # the frozen adversary is not trained
    assert model.factor.linear.weight.grad.abs().sum() > 0
    assert all(q.requires_grad for q in model.comp_adv.parameters())

    # the confusion term is minimal at a uniform posterior / zero regression output
    f = model.encode(batch.image)
    for head in model.comp_adv.values():
        torch.nn.init.zeros_(head.net[-1].weight)
        torch.nn.init.zeros_(head.net[-1].bias)
    # log K for pose (3 classes) and identity (4), 0 for the continuous part
    expected = (torch.log(torch.tensor(3.0)) + torch.log(torch.tensor(4.0))) / 3
    torch.testing.assert_close(model.complement_confusion(f), expected)
    with pytest.raises(FacefactorsError, match="complement_adv_steps"):
        build_model(ce_config(complement_adv=1.0, complement_adv_steps=0), ds)


def test_label_dependence_measures_and_removes_what_labels_explain():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(64) % 4
    noise = torch.randn(64, 8, generator=g)
    coded = noise + 2.0 * y[:, None].float()                                # class means differ
    scaled = noise * (1.0 + y[:, None].float())                             # class variances differ
    assert label_dependence(coded, y, 4) > 3 * label_dependence(noise, y, 4)
    assert label_dependence(scaled, y, 4) > 3 * label_dependence(noise, y, 4)
    # without spread only the class means count: a spread difference is then not charged
    assert label_dependence(scaled, y, 4, spread=0.0) < 2 * label_dependence(noise, y, 4, spread=0.0)
    assert label_dependence(coded, y, 4, spread=0.0) > 3 * label_dependence(noise, y, 4, spread=0.0)
    half = (label_dependence(scaled, y, 4) + label_dependence(scaled, y, 4, spread=0.0)) / 2
    torch.testing.assert_close(label_dependence(scaled, y, 4, spread=0.5), half)
    t = torch.randn(64, generator=g)
    assert label_dependence(noise + 4.0 * t[:, None], t) > 0.9 > 0.1 > label_dependence(noise, t)
    # singletons carry no comparison; a batch without two classes of two or more gives 0
    assert label_dependence(noise[:4], torch.arange(4), 10) == 0
    # gradient descent on it takes the class signal out
    x = coded.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        label_dependence(x, y, 4).backward()
        opt.step()
    assert label_dependence(x.detach(), y, 4) < 0.05


@pytest.mark.parametrize("weight, key", [("complement_moments", "comp_mom"), ("complement_kernel", "comp_kernel")])
def test_complement_dependence_losses(ds, weight, key):
    torch.manual_seed(0)
    model = build_model(ce_config(mode="S", stage1_fraction=0.5, **{weight: 2.0}), ds).train()
    assert model.comp_adv is None and "complement_adv" not in model.optimizers()
    losses = dict(model.train_step(ds.batch(range(16)), 3, 4))["factor"]
    assert key in losses and losses[key] >= 0
    losses[key].backward()
    assert model.factor.linear.weight.grad.abs().sum() > 0


def test_complement_per_part_sees_one_leaking_part(ds):
    """With ``complement_per_part`` the dependence is measured on each part of f_not_a alone: one
    small part that encodes the expression stands out there; the mean over (a, q) pairs is what
    the option reports, and it is blind to none of the pairs."""
    from facefactors.latent import Latent
    from facefactors.nn.losses import label_kernel_dependence
    torch.manual_seed(0)
    labels = {k: v[:64] for k, v in ds.labels.items()}
    models = {pp: build_model(ce_config(mode="S", complement_kernel=1.0, complement_per_part=pp), ds)
              for pp in (False, True)}
    model = models[True]
    y = labels["expression"].long()
    parts = {q: torch.randn(64, d) for q, d in DIMS.items()}
    parts["illumination"] = torch.nn.functional.one_hot(y, 4).float() + 0.1 * torch.randn(64, 4)  # as strong as the noise
    f = Latent(parts)
    per_part = model.complement_dependence(f, labels, kernel=True)
    whole = models[False].complement_dependence(f, labels, kernel=True)
    expected = []
    for a in ATTRS:
        target, classes = model._complement_target(labels, a), model.attr_classes[a]
        expected += [label_kernel_dependence(f[q], target, classes) for q in model.complement_parts(a)]
    assert torch.allclose(per_part, sum(expected) / len(expected))
    leak = label_kernel_dependence(f["illumination"], y, 4)
    concat = label_kernel_dependence(model.complement(f, "expression"), y, 4)
    assert leak > 2 * concat          # the leaking part alone shows it far more clearly
    assert not torch.allclose(per_part, whole)


def test_part_compactness_is_logged_and_reaches_the_factor_network(ds):
    torch.manual_seed(0)
    model = build_model(ce_config(mode="S", stage1_fraction=0.5, part_compactness=1.0), ds).train()
    losses = dict(model.train_step(ds.batch(range(16)), 3, 4))["factor"]
    assert 0 <= losses["compact"] <= 1
    losses["compact"].backward()
    assert model.factor.linear.weight.grad.abs().sum() > 0
    off = dict(build_model(ce_config(mode="S", stage1_fraction=0.5), ds).train().train_step(ds.batch(range(16)), 3, 4))
    assert "compact" not in off["factor"]
    with pytest.raises(FacefactorsError, match="part_compactness"):
        build_model(ce_config(part_compactness=-1.0), ds)


def test_complement_whiten_feeds_whitened_complements_to_every_term(ds):
    """``complement_whiten``: each attribute's complement (and each part, for the per-part terms)
    gets running whitening statistics that the training steps update and checkpoints keep; the
    adversaries, the confusion and the dependence terms then see whitened codes."""
    torch.manual_seed(0)
    kw = dict(mode="S", stage1_fraction=0.5, complement_adv=1.0, complement_moments=1.0, complement_kernel=1.0)
    model = build_model(ce_config(complement_whiten=True, **kw), ds).train()
    assert set(model.comp_white) == set(ATTRS) and model.part_white is None
    assert model.comp_white["identity"].cov.shape == (20 - DIMS["identity"],) * 2
    opts = {k: s.build() for k, s in model.optimizers().items()}
    batch = ds.batch(range(16))
    run_step(model, opts, batch, 0, 4)                       # stage 1: no statistics yet
    assert int(model.comp_white["pose"].updates) == 0
    seen = run_step(model, opts, batch, 3, 4)
    assert {g for g, _ in seen} == {"complement_adv", "factor"}
    assert all(int(w.updates) == 1 for w in model.comp_white.values())
    assert "comp_white.pose.cov" in model.state_dict()
    f = model.encode(batch.image)
    white = model.comp_white["expression"](model.complement(f, "expression"))
    assert torch.allclose(model._complement_seen(f, "expression"), white)
    plain = build_model(ce_config(**kw), ds)
    assert plain.comp_white is None and torch.equal(plain._complement_seen(f, "expression"),
                                                    plain.complement(f, "expression"))
    per_part = build_model(ce_config(complement_whiten=True, complement_per_part=True, **kw), ds)
    assert set(per_part.part_white) == set(DIMS)
    # evaluation does not move the statistics
    model.eval()
    before = model.comp_white["pose"].cov.clone()
    model._update_whitening(model.encode(batch.image))
    assert torch.equal(model.comp_white["pose"].cov, before)


def test_whitened_config_gives_stage2_the_rest_of_the_budget():
    """compact_embeddings_synthfaces_S_whitened.yaml: the complement terms on whitened codes, L_f 4,
    no L_cyc / L_aug, stage 1 at the 1,500 steps of the recorded S/J runs, then stage 2 until
    the 30-minute budget ends the run."""
    cfg = load_config(CONFIGS / "compact_embeddings_synthfaces_S_whitened.yaml")
    m = cfg.method
    assert m["mode"] == "S" and m["complement_whiten"] is True and m["f"] == 4.0
    assert (m["cyc"], m["aug"]) == (0.0, 0.0)
    assert (m["complement_adv"], m["complement_moments"], m["complement_kernel"], m["part_compactness"]) == \
        (1.0, 1.0, 10.0, 1.0)
    assert cfg.train.time_budget_min == 30 and cfg.data["size"] == 64
    tiny = generate(SynthFacesConfig(n=24, size=64, n_identities=4, seed=0))
    model = build_model(cfg, tiny)
    assert model.stage1_steps(cfg.train.steps) == 1500
    assert set(model.comp_white) == {"pose", "identity", "expression", "illumination"}


def test_j_whitened_config_keeps_the_joint_objective():
    cfg = load_config(CONFIGS / "compact_embeddings_synthfaces_J_whitened.yaml")
    m = cfg.method
    assert m["mode"] == "J" and m["complement_whiten"] is True and m["f"] == 4.0
    assert (m["cyc"], m["aug"], m["joint_stage1"]) == (1.0, 1.0, True)
    assert cfg.train.time_budget_min == 30
    model = build_model(cfg, generate(SynthFacesConfig(n=24, size=64, n_identities=4, seed=0)))
    assert model.stage1_steps(cfg.train.steps) == 1500


def test_carry_regresses_within_class_labels_in_the_first_dims_of_a_class_part(ds):
    """``carry``: a cross-entropy part also regresses continuous labels (standardised) in its first
    dims, added to its L_f; the statistics are running buffers; unknown parts and labels are named."""
    import torch.nn.functional as F
    torch.manual_seed(0)
    model = build_model(ce_config(mode="S", stage1_fraction=0.5, cyc=0.0, aug=0.0,
                                  carry={"illumination": ["light_strength"]}), ds).train()
    plain = build_model(ce_config(mode="S", stage1_fraction=0.5, cyc=0.0, aug=0.0), ds)
    assert model.carry == {"illumination": ["light_strength"]} and "carry_stats.illumination.mean" in model.state_dict()
    assert not any(k.startswith("carry_stats") for k in plain.state_dict())
    plain.load_state_dict(model.state_dict(), strict=False)
    batch = ds.batch(range(16))
    model._update_stats(batch.labels)
    f = model.encode(batch.image)
    with_carry = model.attribute_losses(f, batch.labels)["illumination"]
    without = plain.attribute_losses(f, batch.labels)["illumination"]
    t = model.carry_stats["illumination"].standardise(batch.labels["light_strength"].float()[:, None])
    torch.testing.assert_close(with_carry - without, F.mse_loss(f["illumination"][:, :1], t))
    assert int(model.carry_stats["illumination"].updates) == 1
    with pytest.raises(FacefactorsError, match="carry names 'hair'"):
        build_model(ce_config(carry={"hair": ["yaw"]}), ds)
    with pytest.raises(FacefactorsError, match="no_such_label"):
        m = build_model(ce_config(mode="S", stage1_fraction=0.5, carry={"illumination": ["no_such_label"]}), ds)
        dict(m.train().train_step(batch, 3, 4))


def test_whitened_batch64_config_sees_the_same_stage1_images():
    base = load_config(CONFIGS / "compact_embeddings_synthfaces_S_whitened.yaml")
    cfg = load_config(CONFIGS / "compact_embeddings_synthfaces_S_whitened_batch64.yaml")
    assert cfg.method == base.method and cfg.train.batch_size == 64
    model = build_model(cfg, generate(SynthFacesConfig(n=24, size=64, n_identities=4, seed=0)))
    images = model.stage1_steps(cfg.train.steps) * cfg.train.batch_size
    assert images == model.stage1_steps(base.train.steps) * base.train.batch_size == 48000


def losses_of(model, batch, step, total, state, seed=0):
    """The losses of one training step from model state ``state``, without optimiser steps."""
    model.load_state_dict(state)
    torch.manual_seed(seed)
    return {group: {k: v.detach() for k, v in losses.items()}
            for group, losses in model.train_step(batch, step, total)}


def test_stage1_batch_uses_the_first_images_in_stage1_and_all_in_stage2(ds):
    """``stage1_batch``: stage 1 trains on the first n images of each batch, stage 2 on all."""
    torch.manual_seed(0)
    model = build_model(ce_config(mode="S", stage1_fraction=0.5, cyc=0.0, aug=0.0, stage1_batch=8), ds).train()
    whole = build_model(ce_config(mode="S", stage1_fraction=0.5, cyc=0.0, aug=0.0), ds).train()
    state = snapshot(model)
    batch, first = ds.batch(range(16)), ds.batch(range(8))
    for step, ref_batch, group in ((1, first, "autoencoder"), (3, batch, "factor")):
        ours, ref = losses_of(model, batch, step, 4, state), losses_of(whole, ref_batch, step, 4, state)
        assert set(ours) == set(ref) and group in ours
        for g in ref:
            for k, v in ref[g].items():
                torch.testing.assert_close(ours[g][k], v)
    assert ours["factor"]["f_identity"] != losses_of(whole, first, 3, 4, state)["factor"]["f_identity"]
    with pytest.raises(FacefactorsError, match="stage1_batch"):
        build_model(ce_config(stage1_batch=-1), ds)


def test_whitened_stage2_batch64_config_keeps_stage1_at_batch32():
    base = load_config(CONFIGS / "compact_embeddings_synthfaces_S_whitened.yaml")
    cfg = load_config(CONFIGS / "compact_embeddings_synthfaces_S_whitened_stage2_batch64.yaml")
    assert cfg.train.batch_size == 64 and cfg.method["stage1_batch"] == base.train.batch_size == 32
    same = lambda m: {k: v for k, v in m.items() if k not in ("stage1_fraction", "stage1_batch")}  # noqa: E731
    assert same(cfg.method) == same(base.method)
    model = build_model(cfg, generate(SynthFacesConfig(n=24, size=64, n_identities=4, seed=0)))
    assert model.stage1_steps(cfg.train.steps) == 1500  # as in the base config: 0.05 x 30000


def test_latent_cycle_holds_shuffled_parts_to_the_codes(ds):
    """``latent_cycle``: logged, reaches Phi and Phi^-1 only, and it grows when Phi^-1 sends
    shuffled parts to codes far from the encoder's (here: ten times their scale). Descent on it
    lowers it."""
    torch.manual_seed(0)
    model = build_model(ce_config(mode="S", stage1_fraction=0.5, cyc=0.0, aug=0.0, latent_cycle=1.0), ds).train()
    batch = ds.batch(range(32))
    out = dict(model.train_step(batch, 3, 4))["factor"]
    assert "latent_cyc" in out
    with torch.no_grad():
        z = model.encoder(batch.image)
    model.zero_grad(set_to_none=True)
    loss = model.latent_cycle_loss(z, model.phi(z))
    loss.backward()
    assert model.factor.linear.weight.grad.abs().sum() > 0 and model.factor_inv.linear.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.encoder.parameters())
    inverse = model.phi_inv
    model.phi_inv = lambda f: 10.0 * inverse(f)   # shuffled parts go to codes at ten times the scale
    with torch.no_grad():
        far = model.latent_cycle_loss(z, model.phi(z))
    assert far > 10 * loss.detach()
    model.phi_inv = inverse
    opt = torch.optim.Adam([*model.factor.parameters(), *model.factor_inv.parameters()], lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        last = model.latent_cycle_loss(z, model.phi(z))
        last.backward()
        opt.step()
    assert last < 0.5 * loss.detach()


def test_latent_cycle_config_adds_only_the_code_space_cycle():
    base = load_config(CONFIGS / "compact_embeddings_synthfaces_S_whitened_stage2_batch64.yaml")
    cfg = load_config(CONFIGS / "compact_embeddings_synthfaces_S_whitened_latent_cycle.yaml")
    assert cfg.method == {**base.method, "latent_cycle": 0.1}
    assert (cfg.train, cfg.data, cfg.model) == (base.train, base.data, base.model)

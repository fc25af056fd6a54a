"""D2AE: parts, losses, gradient routing of L_T^adv and L_H, running std, ablations and configs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from facefactors.config import RunConfig, build_dataclass, load_config
from facefactors.data.synthfaces import SynthFacesConfig, generate
from facefactors.errors import FacefactorsError
from facefactors.methods.d2ae import D2AEParams, frozen_forward, seen_uniform_cross_entropy
from facefactors.runs import build_model
from facefactors.train.checkpoint import list_checkpoints, read_checkpoint
from facefactors.train.trainer import Trainer

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture(scope="module")
def ds():
    return generate(SynthFacesConfig(n=96, size=32, n_identities=6, heldout_identities=1, seed=1))


def d2ae_config(steps=3, **method) -> RunConfig:
    return build_dataclass(RunConfig, {
        "seed": 0, "data": {"name": "synthfaces", "size": 32},
        "model": {"method": "d2ae", "attributes": ["identity"], "width": 8,
                  "part_dims": {"identity": 12, "rest": 10}},
        "method": method,
        "train": {"steps": steps, "batch_size": 16, "log_every": 1, "checkpoint_every": 100, "preview_every": 0,
                  "progress": False}})


def named(module, prefix):
    return {f"{prefix}.{k}": p for k, p in module.named_parameters()}


def test_parts_encode_decode(ds):
    model = build_model(d2ae_config(), ds).eval()
    z = model.encode(ds.batch(range(4)).image)
    assert z.parts == ["identity", "rest"]
    assert z["identity"].shape == (4, 12) and z["rest"].shape == (4, 10)
    out = model.decode(z)
    assert out.shape == (4, 3, 32, 32) and out.abs().max() <= 1
    assert set(model.feature_std()) == {"identity", "rest"}


def test_trains_and_logs_every_loss(tmp_path, ds):
    Trainer(d2ae_config(steps=3), tmp_path / "r", dataset=ds, log=lambda m: None).fit()
    rec = json.loads((tmp_path / "r" / "log.jsonl").read_text().splitlines()[-1])
    for key in ["adversary/adv_ce", "autoencoder/id_ce", "autoencoder/confusion", "autoencoder/rec",
                "autoencoder/rec_aug"]:
        assert key in rec, key
        assert rec[key] == rec[key] and abs(rec[key]) < 1e6  # finite
    tensors, _ = read_checkpoint(list_checkpoints(tmp_path / "r")[-1])
    assert "model/std_t" in tensors and "model/std_p" in tensors and "model/seen" in tensors
    assert tensors["model/std_updates"].item() == 3
    assert any(k.startswith("optim/adversary/") for k in tensors)


def test_gradient_routing(ds):
    """L_T^adv reaches only the classifier; L_H reaches branch P and the trunk, never the classifier."""
    torch.manual_seed(0)
    model = build_model(d2ae_config(identity=0.0, rec=0.0, rec_aug=0.0), ds).train()
    batch = ds.batch(range(16))
    encoder = {**named(model.trunk, "trunk"), **named(model.branch_t, "branch_t"),
               **named(model.branch_p, "branch_p"), **named(model.decoder, "decoder")}
    gen = model.train_step(batch, 0, 10)
    group, losses = next(gen)
    assert group == "adversary" and set(losses) == {"adv_ce"}
    model.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    assert all(p.grad is None for p in encoder.values())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.adversary.parameters())

    group, losses = next(gen)
    assert group == "autoencoder" and set(losses) == {"confusion"}
    model.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.adversary.parameters())
    assert all(p.grad is None for p in model.branch_t.parameters())
    assert all(p.grad is None for p in model.decoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.branch_p.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.trunk.parameters())


def test_each_group_changes_only_its_parameters(ds):
    """With the real optimisers: the adversary step moves only the classifier, the autoencoder step
    (L_T, L_H, L_X) never moves the classifier."""
    torch.manual_seed(0)
    model = build_model(d2ae_config(), ds).train()
    specs = model.optimizers()
    assert list(specs) == ["adversary", "autoencoder"]
    opts = {k: s.build() for k, s in specs.items()}
    adv_ids = {id(p) for p in model.adversary.parameters()}
    assert {id(p) for p in specs["adversary"].params} == adv_ids
    assert not adv_ids & {id(p) for p in specs["autoencoder"].params}
    every = dict(model.named_parameters())
    for group, losses in model.train_step(ds.batch(range(16)), 5, 10):
        before = {k: p.detach().clone() for k, p in every.items()}
        opts[group].zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opts[group].step()
        changed = {k for k, p in every.items() if not torch.equal(p.detach(), before[k])}
        if group == "adversary":
            assert changed and all(k.startswith("adversary.") for k in changed)
        else:
            assert not any(k.startswith("adversary.") for k in changed)
            assert any(k.startswith("branch_p.") for k in changed) and any(k.startswith("id_head.") for k in changed)


def test_running_std_buffer(ds):
    torch.manual_seed(0)
    model = build_model(d2ae_config(std_momentum=0.5), ds).train()
    batch = ds.batch(range(16))
    with torch.no_grad():
        f_t, f_p = model.features(batch.image)
    list(model.train_step(batch, 0, 10))          # first update: the batch std itself
    torch.testing.assert_close(model.std_p, f_p.std(0), rtol=1e-4, atol=1e-6)
    first = model.std_t.clone()
    batch2 = ds.batch(range(16, 32))
    with torch.no_grad():
        f_t2, _ = model.features(batch2.image)
    list(model.train_step(batch2, 1, 10))         # then batch-norm style momentum
    torch.testing.assert_close(model.std_t, 0.5 * first + 0.5 * f_t2.std(0), rtol=1e-4, atol=1e-6)
    model.eval()
    with torch.no_grad():
        model.encode(batch.image)
    assert model.std_updates.item() == 2
    assert model.seen[batch.labels["identity"]].all()


def test_no_augmentation_and_ablations(ds):
    model = build_model(d2ae_config(augment=False), ds).train()
    losses = dict(model.train_step(ds.batch(range(16)), 0, 10))["autoencoder"]
    assert "rec_aug" not in losses and model.std_updates.item() == 0
    # without L_T^adv (paper's ablation): no adversary group, L_H trains the classifier instead
    model = build_model(d2ae_config(adv=0.0, h_updates_classifier=True), ds).train()
    specs = model.optimizers()
    assert list(specs) == ["autoencoder"]
    assert {id(p) for p in model.adversary.parameters()} <= {id(p) for p in specs["autoencoder"].params}
    (group, losses), = list(model.train_step(ds.batch(range(16)), 0, 10))
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.adversary.parameters())
    # without L_H and L_T^adv nothing adversarial is built
    model = build_model(d2ae_config(adv=0.0, confusion=0.0), ds)
    assert model.adversary is None and list(model.optimizers()) == ["autoencoder"]
    # warm-up delays L_H
    model = build_model(d2ae_config(warmup=0.5), ds).train()
    steps = dict(model.train_step(ds.batch(range(16)), 1, 10))
    assert "confusion" not in steps["autoencoder"] and "adv_ce" in steps["adversary"]


def test_frozen_forward_and_seen_uniform():
    head = torch.nn.Linear(3, 4)
    x = torch.randn(5, 3, requires_grad=True)
    frozen_forward(head, x).sum().backward()
    assert x.grad is not None and head.weight.grad is None
    torch.testing.assert_close(frozen_forward(head, x), head(x))
    logits = torch.zeros(2, 4)
    seen = torch.tensor([True, True, False, False])
    assert seen_uniform_cross_entropy(logits, seen).item() == pytest.approx(torch.log(torch.tensor(2.0)).item())
    assert seen_uniform_cross_entropy(logits, torch.zeros(4, dtype=torch.bool)).item() == pytest.approx(
        torch.log(torch.tensor(4.0)).item())


def test_refuses_bad_setups(ds):
    cfg = d2ae_config()
    cfg.model.attributes = ["identity", "expression"]
    with pytest.raises(FacefactorsError, match="exactly one categorical attribute"):
        build_model(cfg, ds)
    cfg = d2ae_config(identity=0.0, confusion=0.0, rec=0.0, rec_aug=0.0)
    with pytest.raises(FacefactorsError, match="nothing to train"):
        build_model(cfg, ds)
    cfg = d2ae_config()
    cfg.model.part_dims = {"expression": 4}
    with pytest.raises(FacefactorsError, match="unknown parts"):
        build_model(cfg, ds)


@pytest.mark.parametrize("name, differs", [
    ("d2ae_synthfaces.yaml", {}),
    ("d2ae_synthfaces_no_lh.yaml", {"confusion": 0.0}),
    ("d2ae_synthfaces_no_adv.yaml", {"adv": 0.0, "h_updates_classifier": True}),
    ("d2ae_synthfaces_no_aug.yaml", {"augment": False}),
])
def test_configs(name, differs):
    cfg = load_config(CONFIGS / name)
    base = load_config(CONFIGS / "d2ae_synthfaces.yaml")
    assert cfg.model.method == "d2ae" and cfg.model.attributes == ["identity"]
    assert cfg.train.time_budget_min == 30 and cfg.data["size"] == 64
    assert cfg.data["heldout_identities"] > 0 and cfg.data["n_identities"] - cfg.data["heldout_identities"] >= 300
    params = build_dataclass(D2AEParams, cfg.method, "method")
    base_params = build_dataclass(D2AEParams, base.method, "method")
    for key, value in differs.items():
        assert getattr(params, key) == value
    assert {k: v for k, v in vars(params).items() if k not in differs} == \
           {k: v for k, v in vars(base_params).items() if k not in differs}
    assert (cfg.data, cfg.model, cfg.train, cfg.seed) == (base.data, base.model, base.train, base.seed)

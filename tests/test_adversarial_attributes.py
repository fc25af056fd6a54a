import pytest
import torch

from facefactors.config import build_dataclass, RunConfig
from facefactors.errors import FacefactorsError
from facefactors.latent import swap
from facefactors.methods.adversarial_attributes import shuffle_parts, uniform_cross_entropy
from facefactors.runs import build_model
from facefactors.train.checkpoint import list_checkpoints, read_checkpoint
from facefactors.train.trainer import Trainer
from tests.helpers import blobs_dataset


def aa_config(steps=4, **method) -> RunConfig:
    return build_dataclass(RunConfig, {
        "seed": 0, "data": {"name": "digits", "size": 32},
        "model": {"method": "adversarial_attributes", "attributes": ["colour", "place"], "width": 8},
        "method": {"code_channels": 4, "code_size": 8, "res_blocks": 1, "critic_width": 8,
                   "adversary_hidden": 16, **method},
        "train": {"steps": steps, "batch_size": 8, "log_every": 1, "checkpoint_every": 100, "preview_every": 0,
                  "progress": False}})


def test_uniform_cross_entropy_is_minimal_at_uniform():
    k = 5
    assert torch.isclose(uniform_cross_entropy(torch.zeros(3, k)), torch.log(torch.tensor(float(k))))
    assert uniform_cross_entropy(torch.tensor([[9.0, 0, 0, 0, 0]])) > uniform_cross_entropy(torch.zeros(1, k))


def test_shuffle_permutes_attribute_parts_only():
    from facefactors.latent import Latent

    z = Latent({"a": torch.arange(6.0).view(6, 1), "b": torch.arange(6.0).view(6, 1) + 10,
                "rest": torch.arange(6.0).view(6, 1) + 20})
    mixed, perms = shuffle_parts(z, ["a", "b"], torch.Generator().manual_seed(0))
    assert torch.equal(mixed["rest"], z["rest"])
    for a in ("a", "b"):
        assert torch.equal(mixed[a], z[a][perms[a]])
        assert sorted(perms[a].tolist()) == list(range(6))


def test_parts_are_spatial_codes_and_swap_works():
    ds = blobs_dataset()
    model = build_model(aa_config(), ds).eval()
    z = model.encode(ds.batch(range(4)).image)
    assert z.parts == ["colour", "place", "rest"]
    assert z["colour"].shape == (4, 4, 8, 8)
    out = model.decode(swap(z, z.index([1, 0, 3, 2]), ["colour", "place"]))
    assert out.shape == (4, 3, 32, 32) and out.abs().max() <= 1


def test_trains_every_group_and_logs_every_loss(tmp_path):
    import json

    ds = blobs_dataset()
    Trainer(aa_config(steps=3), tmp_path / "r", dataset=ds, log=lambda m: None).fit()
    rec = json.loads((tmp_path / "r" / "log.jsonl").read_text().splitlines()[-1])
    for key in ["classifiers/cls_real", "critic/wgan", "critic/gp", "adversaries/adv_ce", "autoencoder/rec",
                "autoencoder/cls", "autoencoder/dis", "autoencoder/dis_mlp", "autoencoder/hybrid", "autoencoder/adv"]:
        assert key in rec, key
    tensors, _ = read_checkpoint(list_checkpoints(tmp_path / "r")[-1])
    assert any(k.startswith("optim/critic/") for k in tensors)


@pytest.mark.parametrize("override, absent", [({"adv": 0.0}, "critic"), ({"dis": 0.0}, "dis"),
                                              ({"hybrid": 0.0}, "hybrid")])
def test_ablations_switch_terms_off(tmp_path, override, absent):
    import json

    ds = blobs_dataset()
    Trainer(aa_config(steps=2, adversary_hidden=0, **override), tmp_path / "r", dataset=ds,
            log=lambda m: None).fit()
    rec = json.loads((tmp_path / "r" / "log.jsonl").read_text().splitlines()[-1])
    assert not any(k.split("/")[-1] == absent or k.startswith(absent + "/") for k in rec), rec


def test_warmup_delays_confusion_terms():
    ds = blobs_dataset()
    model = build_model(aa_config(warmup=0.5, ramp=0.25), ds)
    assert model.schedule(0, 100) == 0.0 and model.schedule(49, 100) == 0.0
    assert model.schedule(60, 100) == pytest.approx(0.4) and model.schedule(80, 100) == 1.0
    groups = [g for g, _ in model.train_step(ds.batch(range(8)), 0, 100)]
    assert groups == ["classifiers", "adversaries", "autoencoder"]


def test_continuous_attribute_is_refused():
    from facefactors.data.specs import AttributeSpec

    ds = blobs_dataset()
    ds.attributes["size"] = AttributeSpec("size", "continuous")
    ds.labels["size"] = torch.zeros(len(ds))
    cfg = aa_config()
    cfg.model.attributes = ["size"]
    with pytest.raises(FacefactorsError, match="'size' is continuous"):
        build_model(cfg, ds)


def test_bottleneck_nuisance_adversaries_and_lazy_critic(tmp_path):
    import json

    ds = blobs_dataset()
    cfg = aa_config(steps=2, kl=0.1, confuse_extra=["place"], critic_every=2, attr_width=4)
    cfg.model.attributes = ["colour"]
    model = build_model(cfg, ds)
    assert "colour__place" in model.adversaries and "rest__place" not in model.adversaries
    model.eval()
    x = ds.batch(range(4)).image
    z = model.encode(x)
    assert z["colour"].shape == (4, 4, 8, 8)  # the mean only, not the log-variance
    mu, sample, kl = model.encode_stochastic(x)
    assert torch.equal(mu["rest"], z["rest"]) and not torch.equal(sample["rest"], z["rest"]) and kl > 0
    Trainer(cfg, tmp_path / "r", dataset=ds, log=lambda m: None).fit()
    recs = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert "autoencoder/kl" in recs[-1]
    assert "critic/wgan" in recs[0] and "critic/wgan" not in recs[1]  # steps 0 and 1, critic every 2


def test_confuse_extra_must_name_an_unmodelled_attribute():
    with pytest.raises(FacefactorsError, match="confuse_extra names 'colour'"):
        build_model(aa_config(confuse_extra=["colour"]), blobs_dataset())


def test_confuse_linked_keeps_identity_linked_attributes_in_identity_only():
    from facefactors.data import make_dataset

    faces = make_dataset({"name": "synthfaces", "size": 32, "n": 64, "n_identities": 6, "seed": 1})
    cfg = build_dataclass(RunConfig, {
        "seed": 0, "data": {"name": "synthfaces", "size": 32},
        "model": {"method": "adversarial_attributes", "attributes": ["identity", "expression"], "width": 8},
        "method": {"code_channels": 4, "code_size": 4, "critic_width": 8, "adversary_hidden": 16, "kernel": 1.0,
                   "confuse_extra": ["pose"], "confuse_linked": ["skin_tone", "hair_colour"]}})
    model = build_model(cfg, faces)
    linked = [(q, a) for q, a in model.confusion_pairs if a in ("skin_tone", "hair_colour")]
    assert linked == [(q, a) for q in ("expression", "rest") for a in ("skin_tone", "hair_colour")]
    assert ("expression", "pose") in model.confusion_pairs and ("rest", "pose") not in model.confusion_pairs
    assert {"expression__skin_tone", "rest__hair_colour"} <= set(model.adversaries)
    out = dict(model.train_step(faces.batch(range(16)), 50, 100))["autoencoder"]
    assert torch.isfinite(out["kernel"]) and torch.isfinite(out["dis_mlp"])
    with pytest.raises(FacefactorsError, match="'pose' is in both"):
        build_model(build_dataclass(RunConfig, {**cfg.to_dict(), "method": {
            **cfg.to_dict()["method"], "confuse_linked": ["pose"]}}), faces)
    with pytest.raises(FacefactorsError, match="identity part, which is not modelled"):
        build_model(aa_config(confuse_linked=["background"]), blobs_dataset())


def test_dependence_terms_cover_the_confusion_pairs_and_see_leaks(tmp_path):
    import json

    from facefactors.latent import Latent

    ds = blobs_dataset()
    cfg = aa_config(steps=2, adversary_hidden=0, moments=1.0, kernel=1.0, whiten=True, confuse_extra=["place"],
                    code_channels=1, code_size=2)
    cfg.model.attributes = ["colour"]
    model = build_model(cfg, ds)  # confuse_extra works without MLP adversaries when the terms are on
    assert model.adversaries is None
    assert model.confusion_pairs == [("rest", "colour"), ("colour", "place")]
    gen = torch.Generator().manual_seed(0)
    rotation = torch.linalg.qr(torch.randn(4, 4, generator=gen))[0]

    def codes(leak: bool) -> tuple[Latent, dict]:
        y = {"colour": torch.randint(0, 3, (128,), generator=gen), "place": torch.randint(0, 2, (128,), generator=gen)}
        rest = torch.randn(128, 4, generator=gen)
        if leak:  # colour in a direction of a tenth of the spread, rotated into every dim
            rest[:, 0] = 0.1 * (y["colour"].float() + 0.1 * torch.randn(128, generator=gen))
        z = Latent({"colour": torch.randn(128, 1, 2, 2, generator=gen), "rest": (rest @ rotation).view(128, 1, 2, 2)})
        return z, y

    def terms(leak: bool) -> dict:
        model.part_white = type(model.part_white)({q: type(w)(4) for q, w in model.part_white.items()})
        model.train()
        for _ in range(30):  # the running whitening settles on these codes' statistics
            model.dependence_terms(*codes(leak), 1.0)
        return model.dependence_terms(*codes(leak), 1.0)

    leak, free = terms(True), terms(False)
    assert leak["moments"] > 3 * free["moments"] and leak["kernel"] > 3 * free["kernel"]
    model.params.whiten, white = False, model.part_white
    model.part_white = None
    raw = model.dependence_terms(*codes(True), 1.0)  # unwhitened, the small direction hides the leak
    assert raw["moments"] < 0.5 * leak["moments"] and raw["kernel"] < 0.5 * leak["kernel"]
    assert int(white["rest"].updates) == 31 and "part_white.rest.cov" in build_model(cfg, ds).state_dict()
    Trainer(cfg, tmp_path / "r", dataset=ds, log=lambda m: None).fit()
    rec = json.loads((tmp_path / "r" / "log.jsonl").read_text().splitlines()[-1])
    assert "autoencoder/moments" in rec and "autoencoder/kernel" in rec


def test_hybrid_batch_decodes_only_the_first_hybrids():
    ds = blobs_dataset()
    model = build_model(aa_config(hybrid_batch=3), ds)
    shapes = []
    model.critic.register_forward_hook(lambda m, i, o: shapes.append(i[0].shape[0]))
    groups = dict(model.train_step(ds.batch(range(8)), 0, 100))
    assert "hybrid" in groups["autoencoder"] and "gp" in groups["critic"]
    assert set(shapes) == {3}  # fakes, reals and interpolates all have the hybrids' size
    with pytest.raises(FacefactorsError, match="hybrid_batch=-1"):
        build_model(aa_config(hybrid_batch=-1), ds)


def test_latent_cycle_asks_hybrids_to_give_back_their_codes():
    from facefactors.latent import Latent
    from facefactors.nn.losses import code_cycle_error as latent_cycle_loss

    z = Latent({"a": torch.randn(6, 2, 3, 3), "rest": 5.0 * torch.randn(6, 4, 3, 3)})
    assert latent_cycle_loss(z, z).item() == 0.0
    # each part's error is over its own variance: the same relative error costs the same
    noisy = z.map(lambda t: t + 0.1 * t.flatten(1).var(0).mean().sqrt() * torch.randn_like(t))
    per_part = [latent_cycle_loss(Latent({q: noisy[q]}), Latent({q: z[q]})).item() for q in z.parts]
    assert per_part[0] == pytest.approx(per_part[1], rel=0.5) and 0.0 < per_part[0] < 0.05
    ds = blobs_dataset()
    torch.manual_seed(0)
    model = build_model(aa_config(latent_cycle=1.0, kl=0.1), ds)
    out = dict(model.train_step(ds.batch(range(8)), 0, 100))["autoencoder"]
    out["latent_cyc"].backward()
    assert all(p.grad is not None for p in model.decoder.parameters())  # it reaches the decoder
    torch.manual_seed(0)
    plain = dict(build_model(aa_config(kl=0.1), ds).train_step(ds.batch(range(8)), 0, 100))["autoencoder"]
    assert "latent_cyc" not in plain
    assert {k: v.item() for k, v in plain.items()} == pytest.approx(
        {k: v.item() for k, v in out.items() if k != "latent_cyc"})


def test_memory_adds_past_codes_to_the_dependence_terms():
    from facefactors.nn.losses import label_kernel_dependence

    ds = blobs_dataset()
    model = build_model(aa_config(adversary_hidden=0, kernel=1.0, memory=12, code_channels=1, code_size=2), ds).train()
    batches = [ds.batch(range(i, i + 8)) for i in (0, 8, 16)]
    codes = [model.encode(b.image).detach() for b in batches]
    flat = lambda z, q: z[q].flatten(1)
    model.dependence_terms(codes[0], batches[0].labels, 1.0)
    assert int(model.memory.filled) == 8 and int(model.memory.next) == 8
    model.dependence_terms(codes[1], batches[1].labels, 1.0)  # the ring wraps: 4 of batch 0 are overwritten
    assert int(model.memory.filled) == 12 and int(model.memory.next) == 4
    rest = model.part_names.index("rest")
    # slots 0-3: batch 1's last four; 4-7: batch 0's last four (kept); 8-11: batch 1's first four
    torch.testing.assert_close(model.memory.codes[rest], torch.cat([flat(codes[1], "rest")[4:], flat(codes[0], "rest")[4:],
                                                                      flat(codes[1], "rest")[:4]]))
    # batch 2 is measured together with the 12 remembered codes; only the batch carries a gradient
    z = codes[2].map(lambda t: t.clone().requires_grad_(True))
    y = batches[2].labels
    expected = []
    for q, a in model.confusion_pairs:
        x_all = torch.cat([flat(z, q), model.memory.codes[model.part_names.index(q)]])
        y_all = torch.cat([y[a], model.memory.labels[list(model.confusion_classes).index(a)]])
        expected.append(label_kernel_dependence(x_all, y_all, model.confusion_classes[a], unbiased=True).clamp_min(0))
    out = model.dependence_terms(z, y, 1.0)
    torch.testing.assert_close(out["kernel"], sum(expected) / len(expected))
    out["kernel"].backward()
    assert z["rest"].grad is not None and z["rest"].grad.abs().sum() > 0
    assert "memory.codes" in model.state_dict() and "memory.labels" in model.state_dict()


def test_adversary_memory_trains_the_adversaries_on_past_codes_too():
    import torch.nn.functional as F

    ds = blobs_dataset()
    torch.manual_seed(0)
    model = build_model(aa_config(adversary_hidden=8, adversary_memory=12, code_channels=1, code_size=2), ds).train()
    assert model.memory is None and model.adversary_ring.size == 12
    batches = [ds.batch(range(i, i + 8)) for i in (0, 8)]
    first = dict(model.train_step(batches[0], 50, 100))
    assert int(model.adversary_ring.filled) == 8   # the batch is remembered once, not per adversary update
    remembered = model.adversary_ring.codes.clone()
    gen = model.train_step(batches[1], 50, 100)
    group, losses = next(gen)
    while group != "adversaries":
        group, losses = next(gen)
    # this update fits batch 1 together with batch 0's remembered codes and labels
    z = model.encode(batches[1].image).detach()
    expected = []
    for key, head in model.adversaries.items():
        q, a = key.split("__")
        x_all = torch.cat([z[q].flatten(1), remembered[model.part_names.index(q), :8]])
        y_all = torch.cat([batches[1].labels[a], batches[0].labels[a]])
        expected.append(F.cross_entropy(head(x_all), y_all))
    torch.testing.assert_close(losses["adv_ce"], sum(expected) / len(expected))
    assert int(model.adversary_ring.filled) == 12 and "adversary_ring.codes" in model.state_dict()
    assert "adversaries" in first
    with pytest.raises(FacefactorsError, match="adversary_memory"):
        build_model(aa_config(adversary_hidden=0, adversary_memory=4), ds)


def test_adversary_given_sees_the_labels_its_part_may_carry():
    import torch.nn.functional as F

    ds = blobs_dataset()
    torch.manual_seed(0)
    model = build_model(aa_config(adversary_hidden=8, adversary_given=True, code_channels=1, code_size=2), ds).train()
    k = model.n_classes
    assert model.given == {"colour": ["colour"], "place": ["place"], "rest": []}
    for q, a, head in model._adversary_heads():
        assert head.net[1].in_features == 4 + (k[q] if q in k else 0)
    batch = ds.batch(range(8))
    gen = model.train_step(batch, 50, 100)
    group, losses = next(gen)
    while group != "adversaries":
        group, losses = next(gen)
    # the update reads each code beside the one-hot label of its own attribute
    z = model.encode(batch.image).detach()
    expected = []
    for q, a, head in model._adversary_heads():
        x = z[q].flatten(1)
        if q in k:
            x = torch.cat([x, F.one_hot(batch.labels[q], k[q]).float()], dim=1)
        expected.append(F.cross_entropy(head(x), batch.labels[a]))
    torch.testing.assert_close(losses["adv_ce"], sum(expected) / len(expected))
    rest = dict(gen)
    assert torch.isfinite(rest["autoencoder"]["dis_mlp"])
    with pytest.raises(FacefactorsError, match="adversary_given"):
        build_model(aa_config(adversary_hidden=0, adversary_given=True), ds)


@pytest.mark.parametrize("name, base_name, differs", [
    ("adversarial_attributes_synthfaces_dependence.yaml", "adversarial_attributes_synthfaces.yaml",
     {"moments": 3.0, "kernel": 30.0, "whiten": True, "hybrid_batch": 16, "critic_every": 4}),
    ("adversarial_attributes_synthfaces_dependence_memory.yaml", "adversarial_attributes_synthfaces_dependence.yaml",
     {"memory": 224}),
    ("adversarial_attributes_synthfaces_dependence_no_dis.yaml", "adversarial_attributes_synthfaces_dependence.yaml",
     {"dis": 0.0, "adversary": 0.0, "moments": 0.0, "kernel": 0.0}),
    ("adversarial_attributes_synthfaces_linked.yaml", "adversarial_attributes_synthfaces_dependence.yaml",
     {"kl": 0.03, "confuse_linked": ("skin_tone", "hair_colour"), "identity_pairs": 16, "identity_compact": 10.0}),
    ("adversarial_attributes_synthfaces_advmem.yaml", "adversarial_attributes_synthfaces_dependence.yaml",
     {"kl": 0.03, "confuse_linked": ("skin_tone", "hair_colour"), "adversary_memory": 1024}),
    ("adversarial_attributes_synthfaces_pairswap.yaml", "adversarial_attributes_synthfaces_advmem.yaml",
     {"identity_pairs": 16, "pair_swap": 300.0, "hybrid": 1.0}),
    ("adversarial_attributes_synthfaces_given.yaml", "adversarial_attributes_synthfaces_pairswap.yaml",
     {"adversary_given": True}),
    ("adversarial_attributes_synthfaces_carry.yaml", "adversarial_attributes_synthfaces_given.yaml",
     {"carry": {"expression": ["expression_intensity"]}}),
])
def test_dependence_configs(name, base_name, differs):
    from pathlib import Path

    from facefactors.config import load_config
    from facefactors.methods.adversarial_attributes import AdversarialAttributesParams

    configs = Path(__file__).resolve().parent.parent / "configs"
    cfg, base = load_config(configs / name), load_config(configs / base_name)
    params = build_dataclass(AdversarialAttributesParams, cfg.method, "method")
    base_params = build_dataclass(AdversarialAttributesParams, base.method, "method")
    for key, value in differs.items():
        assert getattr(params, key) == value, key
    assert {k: v for k, v in vars(params).items() if k not in differs} == \
           {k: v for k, v in vars(base_params).items() if k not in differs}
    assert (cfg.data, cfg.model, cfg.seed) == (base.data, base.model, base.seed)
    assert cfg.train.time_budget_min == 30 and cfg.data["size"] == 64


def test_polish_config_is_the_carry_config_with_a_shorter_main_phase():
    from pathlib import Path

    from facefactors.config import load_config

    configs = Path(__file__).resolve().parent.parent / "configs"
    cfg = load_config(configs / "adversarial_attributes_synthfaces_polish.yaml")
    carry = load_config(configs / "adversarial_attributes_synthfaces_carry.yaml")
    assert (cfg.method, cfg.data, cfg.model) == (carry.method, carry.data, carry.model)
    assert cfg.train.steps == 3500 and cfg.train.polish.steps == 1000 and not carry.train.polish.active
    assert cfg.train.time_budget_min == 30


def test_bf16_config_is_the_polish_config_in_bf16_with_the_main_phase_restored():
    from pathlib import Path

    from facefactors.config import load_config

    configs = Path(__file__).resolve().parent.parent / "configs"
    cfg = load_config(configs / "adversarial_attributes_synthfaces_bf16.yaml")
    polish = load_config(configs / "adversarial_attributes_synthfaces_polish.yaml")
    assert (cfg.method, cfg.data, cfg.model) == (polish.method, polish.data, polish.model)
    assert cfg.train.precision == "bf16" and polish.train.precision == "auto"
    assert cfg.train.steps == 4200 and cfg.train.polish == polish.train.polish
    assert cfg.train.time_budget_min == 30


def test_pairs_config_weighs_named_pairs_and_polishes_on_reconstruction_and_carry():
    from pathlib import Path

    from facefactors.config import load_config
    from facefactors.data import make_dataset

    configs = Path(__file__).resolve().parent.parent / "configs"
    cfg = load_config(configs / "adversarial_attributes_synthfaces_pairs.yaml")
    bf16 = load_config(configs / "adversarial_attributes_synthfaces_bf16.yaml")
    assert (cfg.data, cfg.model) == (bf16.data, bf16.model)
    changed = {k for k in cfg.method if cfg.method[k] != bf16.method.get(k)}
    assert changed == {"carry_weight", "adversary_weights", "polish_terms"}
    assert cfg.train.steps == 4200 and cfg.train.polish.steps == 2000 and cfg.train.time_budget_min == 30
    small = cfg.to_dict()                  # every named pair is a confusion pair of the model
    small["model"]["width"] = 8
    small["data"] = {"name": "synthfaces", "size": 64, "n": 64, "n_identities": 8, "seed": 0}
    model = build_model(build_dataclass(RunConfig, small), make_dataset(small["data"]))
    pairs = {f"{q}:{a}" for q, a in model.confusion_pairs}
    assert set(cfg.method["adversary_weights"]) <= pairs and len(pairs) == 24


def test_weighted_config_charges_every_pair_harder_and_identity_illumination_most():
    """The config that met every line of issue 3: the bf16 config with the uniform term x4, identity ->
    illumination x12 and rest -> illumination x3 within it, carry 3 and the rec + carry polish."""
    from pathlib import Path

    from facefactors.config import load_config
    from facefactors.data import make_dataset

    configs = Path(__file__).resolve().parent.parent / "configs"
    cfg = load_config(configs / "adversarial_attributes_synthfaces_weighted.yaml")
    bf16 = load_config(configs / "adversarial_attributes_synthfaces_bf16.yaml")
    assert (cfg.data, cfg.model, cfg.seed) == (bf16.data, bf16.model, bf16.seed)
    changed = {k for k in cfg.method if cfg.method[k] != bf16.method.get(k)}
    assert changed == {"adversary", "adversary_weights", "carry_weight", "polish_terms"}
    assert cfg.method["adversary"] == 4.0 and cfg.method["carry_weight"] == 3.0
    assert cfg.method["adversary_weights"] == {"identity:illumination": 12, "rest:illumination": 3}
    assert list(cfg.method["polish_terms"]) == ["rec", "carry_rec"]
    assert cfg.train.steps == 4200 and cfg.train.polish.steps == 2000 and cfg.train.polish.lr == 2e-4
    assert cfg.train.time_budget_min == 30 and cfg.train.precision == "bf16"
    small = cfg.to_dict()                  # the named pairs are confusion pairs of the model
    small["model"]["width"] = 8
    small["data"] = {"name": "synthfaces", "size": 64, "n": 64, "n_identities": 8, "seed": 0}
    model = build_model(build_dataclass(RunConfig, small), make_dataset(small["data"]))
    assert set(cfg.method["adversary_weights"]) <= {f"{q}:{a}" for q, a in model.confusion_pairs}


def test_flip_invariant_parts_code_an_image_and_its_mirror_alike():
    """A part in ``flip_invariant`` is the mean of its encoder over the image and its mirror: the
    mirror gets the same code (in training too, where BatchNorm sees both halves), the other parts
    still tell the two apart, and the variational bottleneck's sample is drawn around that mean."""
    ds = blobs_dataset()
    torch.manual_seed(0)
    model = build_model(aa_config(flip_invariant=["colour"], kl=0.1), ds)
    x = ds.batch(range(8)).image
    for mode in (model.eval, model.train):
        mode()
        with torch.no_grad():
            z, z_mirror = model.encode(x), model.encode(x.flip(3))
        torch.testing.assert_close(z["colour"], z_mirror["colour"], rtol=1e-5, atol=1e-5)
        assert (z["place"] - z_mirror["place"]).abs().max() > 1e-3
        assert (z["rest"] - z_mirror["rest"]).abs().max() > 1e-3
    model.eval()
    with torch.no_grad():
        h = model.encoders["colour"](torch.cat([x, x.flip(3)]))
        torch.testing.assert_close(model.encode(x)["colour"], 0.5 * (h[:8, :4] + h[8:, :4]))
        mu, _, _ = model.encode_stochastic(x)
    torch.testing.assert_close(mu["colour"], model.encode(x)["colour"])
    model.train()
    out = dict(model.train_step(ds.batch(range(8)), 50, 100))["autoencoder"]
    assert all(torch.isfinite(v).all() for v in out.values())
    with pytest.raises(FacefactorsError, match="'glasses', which is not a part"):
        build_model(aa_config(flip_invariant=["glasses"]), ds)


def test_flip_config_is_the_weighted_config_with_a_mirror_invariant_identity_part():
    from pathlib import Path

    from facefactors.config import load_config

    configs = Path(__file__).resolve().parent.parent / "configs"
    cfg = load_config(configs / "adversarial_attributes_synthfaces_flip.yaml")
    weighted = load_config(configs / "adversarial_attributes_synthfaces_weighted.yaml")
    assert (cfg.data, cfg.model, cfg.seed, cfg.train) == (weighted.data, weighted.model, weighted.seed, weighted.train)
    changed = {k for k in cfg.method if cfg.method[k] != weighted.method.get(k)}
    assert changed == {"flip_invariant"} and list(cfg.method["flip_invariant"]) == ["identity"]


def test_codes_are_fp32_under_bf16_autocast_and_match_fp32():
    """The encoders run in fp32 under bf16 autocast: the adversaries and dependence terms judge
    finer variations in the codes than bf16 keeps. The decoder still autocasts."""
    ds = blobs_dataset()
    model = build_model(aa_config(kl=0.1), ds)
    model.eval()
    x = ds.batch(range(8)).image
    plain = model.encode(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model.encode(x)
        mu, _, kl = model.encode_stochastic(x)
        out = model.decode(mixed)
    for n in model.part_names:
        assert mixed[n].dtype == torch.float32 and torch.equal(mixed[n], plain[n]) and torch.equal(mu[n], plain[n])
    assert kl.dtype == torch.float32 and out.dtype == torch.bfloat16


def test_identity_pairs_draw_same_identity_partners_for_the_terms(tmp_path):
    import json

    from facefactors.data import make_dataset

    faces = make_dataset({"name": "synthfaces", "size": 32, "n": 96, "n_identities": 12, "seed": 1})
    raw = {"seed": 0, "data": {"name": "synthfaces", "size": 32, "n": 96, "n_identities": 12, "seed": 1},
           "model": {"method": "adversarial_attributes", "attributes": ["identity", "illumination"], "width": 8},
           "method": {"code_channels": 4, "code_size": 4, "critic_width": 8, "kernel": 1.0, "kl": 0.1,
                      "identity_pairs": 6, "identity_compact": 1.0},
           "train": {"steps": 3, "batch_size": 8, "log_every": 1, "checkpoint_every": 100, "preview_every": 0,
                     "progress": False}}
    cfg = build_dataclass(RunConfig, raw)
    model = build_model(cfg, faces)
    batch = faces.batch(range(8))
    with pytest.raises(RuntimeError, match="no dataset is bound"):
        dict(model.train_step(batch, 50, 100))
    model.bind_dataset(faces, seed=0)
    xp, labels_p = model.partners(batch, step=7)
    assert xp.shape == (6, 3, 32, 32) and torch.equal(labels_p["identity"], batch.labels["identity"][:6])
    again, _ = model.partners(batch, step=7)
    assert torch.equal(xp, again)  # a pure function of the step: resume draws the same partners
    train_ids = set(faces.split("train").tolist())
    for img in xp:  # each partner is a train image of its anchor's identity
        hits = [i for i in train_ids if torch.equal(faces.images[i].float() / 127.5 - 1.0, img)]
        assert hits
    torch.manual_seed(0)
    model.train()
    out = dict(model.train_step(batch, 50, 100))["autoencoder"]
    # the compactness term sees 14 codes: 8 of the batch and 6 partners that share an identity
    assert torch.isfinite(out["compact"]) and out["compact"].item() > 0
    out["compact"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoders["identity"].parameters())
    assert all(p.grad is None for p in model.encoders["illumination"].parameters())
    with pytest.raises(FacefactorsError, match="identity_compact needs identity_pairs"):
        build_model(build_dataclass(RunConfig, {**raw, "method": {**raw["method"], "identity_pairs": 0}}), faces)
    Trainer(cfg, tmp_path / "r", dataset=faces, log=lambda m: None).fit()  # the trainer binds the dataset
    rec = json.loads((tmp_path / "r" / "log.jsonl").read_text().splitlines()[-1])
    assert "autoencoder/kernel" in rec and "autoencoder/compact" in rec


def test_pair_swap_reconstructs_each_image_from_its_partners_identity_part():
    from facefactors.data import make_dataset
    from facefactors.methods.autoencoder import reconstruction_loss

    faces = make_dataset({"name": "synthfaces", "size": 32, "n": 96, "n_identities": 12, "seed": 1})
    raw = {"seed": 0, "data": {"name": "synthfaces", "size": 32, "n": 96, "n_identities": 12, "seed": 1},
           "model": {"method": "adversarial_attributes", "attributes": ["identity", "illumination"], "width": 8},
           "method": {"code_channels": 4, "code_size": 4, "critic_width": 8, "identity_pairs": 5, "pair_swap": 2.0},
           "train": {"steps": 3, "batch_size": 8}}
    model = build_model(build_dataclass(RunConfig, raw), faces)
    model.bind_dataset(faces, seed=0)
    batch = faces.batch(range(8))
    model.train()
    out = dict(model.train_step(batch, 0, 100))["autoencoder"]  # from the first step: no warm-up
    # the term is the reconstruction of the first 5 images with the partners' identity parts in place
    # (batch and partners encoded in one pass, as in training: the same norm statistics)
    xp, _ = model.partners(batch, step=0)
    z_all = model.encode(torch.cat([batch.image, xp]))
    z, zp = z_all.index(slice(0, 5)), z_all.index(slice(8, 13))
    want = 2.0 * reconstruction_loss("l1", model.decode(z.replace(identity=zp["identity"])), batch.image[:5])
    torch.testing.assert_close(out["pair_swap"], want)
    model.zero_grad()
    out["pair_swap"].backward()
    for name in ("identity", "illumination", "rest"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoders[name].parameters()), name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decoder.parameters())
    with pytest.raises(FacefactorsError, match="pair_swap needs identity_pairs"):
        build_model(build_dataclass(RunConfig, {**raw, "method": {**raw["method"], "identity_pairs": 0}}), faces)


def test_old_memory_buffer_names_still_load():
    ds = blobs_dataset()
    model = build_model(aa_config(adversary_hidden=0, kernel=1.0, memory=12, code_channels=1, code_size=2), ds)
    model.memory.codes.normal_()
    model.memory.filled.fill_(5)
    state = {(k.replace("memory.", "memory_") if k.startswith("memory.") else k): v.clone()
             for k, v in model.state_dict().items()}
    assert "memory_codes" in state
    fresh = build_model(aa_config(adversary_hidden=0, kernel=1.0, memory=12, code_channels=1, code_size=2), ds)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.memory.codes, model.memory.codes)
    assert int(fresh.memory.filled) == 5


def test_carry_regresses_continuous_labels_where_they_show(tmp_path):
    import torch.nn.functional as F

    from facefactors.data import make_dataset

    data = {"name": "synthfaces", "size": 32, "n": 96, "n_identities": 12, "seed": 1}
    faces = make_dataset(data)
    raw = {"seed": 0, "data": data,
           "model": {"method": "adversarial_attributes", "attributes": ["identity", "expression"], "width": 8},
           "method": {"code_channels": 4, "code_size": 4, "critic_width": 8, "res_blocks": 1,
                      "carry": {"expression": ["expression_intensity"]}, "carry_weight": 2.0},
           "train": {"steps": 2, "batch_size": 8, "progress": False, "preview_every": 0}}
    model = build_model(build_dataclass(RunConfig, raw), faces)
    k = model.n_classes["expression"]
    assert model.classifiers["expression"](faces.batch(range(2)).image).shape == (2, k + 1)
    assert model.classifiers["identity"](faces.batch(range(2)).image).shape == (2, model.n_classes["identity"])
    model.bind_dataset(faces, seed=0)
    # standardised by the train split's faces that show an expression (a neutral face hides intensity)
    train = torch.as_tensor(faces.split("train"))
    shown = faces.labels["expression"][train] != 0
    t = faces.labels["expression_intensity"][train][shown].float()
    torch.testing.assert_close(model.carry_mean_expression, t.mean().reshape(1))
    torch.testing.assert_close(model.carry_std_expression, t.std().reshape(1))

    batch = faces.batch(range(16))
    lab = batch.labels
    assert (lab["expression"] == 0).any() and (lab["expression"] != 0).any()
    out = torch.randn(16, k + 1)
    z = (lab["expression_intensity"].float() - model.carry_mean_expression) / model.carry_std_expression
    keep = lab["expression"] != 0
    torch.testing.assert_close(model.carry_loss(out, "expression", lab), (out[keep, k] - z[keep]).pow(2).mean())
    idx = torch.arange(15, -1, -1)  # a hybrid's targets are its donor's, masked by the donor's expression
    torch.testing.assert_close(model.carry_loss(out, "expression", lab, idx),
                               (out[:, k] - z[idx])[keep[idx]].pow(2).mean())

    model.train()
    steps = dict(model.train_step(batch, 0, 100))
    want = 0.5 * (F.cross_entropy(model.classifiers["identity"](batch.image), lab["identity"])
                  + F.cross_entropy(model.classifiers["expression"](batch.image)[:, :k], lab["expression"])
                  + 2.0 * model.carry_loss(model.classifiers["expression"](batch.image), "expression", lab))
    torch.testing.assert_close(steps["classifiers"]["cls_real"], want, rtol=1e-4, atol=1e-5)
    ae = steps["autoencoder"]
    assert torch.isfinite(ae["carry_rec"]) and ae["carry_rec"] > 0 and torch.isfinite(ae["hybrid"])

    # the standardisation is saved with the model and survives a resume
    Trainer(build_dataclass(RunConfig, raw), tmp_path / "r", dataset=faces, log=lambda m: None).fit()
    tensors, _ = read_checkpoint(list_checkpoints(tmp_path / "r")[-1])
    key = next(k for k in tensors if k.endswith("carry_mean_expression"))
    torch.testing.assert_close(tensors[key], model.carry_mean_expression)

    with pytest.raises(FacefactorsError, match="'glasses', which is not a modelled attribute"):
        build_model(build_dataclass(RunConfig, {**raw, "method": {**raw["method"], "carry": {"glasses": ["x"]}}}), faces)
    bad = build_model(build_dataclass(RunConfig, {**raw, "method": {**raw["method"],
                                                                   "carry": {"expression": ["skin_tone"]}}}), faces)
    with pytest.raises(FacefactorsError, match="'skin_tone', which is not a continuous label"):
        bad.bind_dataset(faces)


def test_kernel_within_sees_what_a_part_keeps_around_its_class_centres(tmp_path):
    import json

    from facefactors.latent import Latent
    from facefactors.nn.losses import label_kernel_dependence

    ds = blobs_dataset()
    model = build_model(aa_config(adversary_hidden=0, kernel_within=2.0, within_memory=16, within_momentum=0.5,
                                  code_channels=1, code_size=2), ds).train()
    assert model.within_pairs == [("colour", "place"), ("place", "colour")]
    gen = torch.Generator().manual_seed(0)

    def codes(labels, leak):
        """Each colour at its own centre; the colour part keeps `leak` x place around it."""
        centres = torch.tensor([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 3.0, 0]])
        c = centres[labels["colour"]] + 0.1 * torch.randn(len(labels["colour"]), 4, generator=gen)
        c[:, 3] += leak * (2 * labels["place"].float() - 1)
        return Latent([("colour", c.reshape(-1, 1, 2, 2)), ("place", torch.randn(len(c), 1, 2, 2, generator=gen)),
                       ("rest", torch.randn(len(c), 1, 2, 2, generator=gen))])

    b0 = ds.batch(range(0, 24))
    z0 = codes(b0.labels, 0.0)
    model.within_residuals(z0, b0.labels, update=True)  # first sight of a class: its batch mean
    for k in range(3):
        torch.testing.assert_close(model.centre_colour[k], z0["colour"].flatten(1)[b0.labels["colour"] == k].mean(0))
    before = model.centre_colour.clone()
    model.within_residuals(z0, b0.labels, update=True)  # then a running mean at within_momentum
    torch.testing.assert_close(model.centre_colour, before)  # the same batch: its means are the centres

    # the whole code reads place weakly (class structure dominates); the residual reads it clearly
    b1 = ds.batch(range(24, 72))
    z1 = codes(b1.labels, 0.3)
    whole = label_kernel_dependence(z1["colour"].flatten(1), b1.labels["place"], 2, unbiased=True)
    res = model.within_residuals(z1, b1.labels, update=False)["colour"]
    inside = label_kernel_dependence(res / res.std(0), b1.labels["place"], 2, unbiased=True)
    assert inside > 0.3 and inside > 3 * whole
    clean = model.within_terms(codes(b1.labels, 0.0), b1.labels, 1.0)
    z1 = z1.map(lambda t: t.clone().requires_grad_(True))
    leaky = model.within_terms(z1, b1.labels, 1.0)
    assert leaky > 5 * clean
    leaky.backward()
    assert z1["colour"].grad.abs().sum() > 0 and z1["rest"].grad is None
    # the ring holds the last 16 residuals (detached) and their labels
    assert int(model.within_ring.filled) == 16
    torch.testing.assert_close(model.within_ring.codes[0], (z1["colour"].flatten(1) - model.centre_colour[
        b1.labels["colour"]]).detach()[-16:], atol=0.2, rtol=0)  # centres moved a little after the residuals

    with pytest.raises(FacefactorsError, match="within_momentum"):
        build_model(aa_config(kernel_within=1.0, within_momentum=0.0), ds)
    # logged in training, and the centres and ring are saved with the model (resume is exact)
    Trainer(aa_config(steps=3, kernel_within=1.0, warmup=0.0), tmp_path / "r", dataset=ds, log=lambda m: None).fit()
    rec = json.loads((tmp_path / "r" / "log.jsonl").read_text().splitlines()[-1])
    assert "autoencoder/kernel_within" in rec
    tensors, _ = read_checkpoint(list_checkpoints(tmp_path / "r")[-1])
    assert any(k.endswith("centre_colour") for k in tensors) and any(k.endswith("within_ring.codes") for k in tensors)


def test_kl_parts_weigh_each_parts_bottleneck():
    from facefactors.methods.adversarial_attributes import gaussian_kl

    ds = blobs_dataset()
    model = build_model(aa_config(kl=0.1, kl_parts={"rest": 0.02, "colour": 0.5}), ds).train()
    x = ds.batch(range(8)).image
    torch.manual_seed(0)
    _, _, kl = model.encode_stochastic(x)
    c = model.params.code_channels
    want = 0.0
    for part, w in (("colour", 0.5), ("place", 0.1), ("rest", 0.02)):
        h = model.encoders[part](x)
        want = want + w * gaussian_kl(h[:, :c], h[:, c:].clamp(-12.0, 6.0))
    torch.testing.assert_close(0.1 * kl, want)  # the charged term is kl times it
    for bad, match in (({"glasses": 0.1}, "'glasses', which is not a part"), ({"rest": 0.0}, "needs kl > 0")):
        with pytest.raises(FacefactorsError, match=match):
            build_model(aa_config(kl=0.1, kl_parts=bad), ds)
    with pytest.raises(FacefactorsError, match="needs kl > 0"):
        build_model(aa_config(kl_parts={"rest": 0.1}), ds)


def test_polish_keeps_the_decoder_terms_and_trains_only_the_decoder(tmp_path):
    from facefactors.data import make_dataset

    data = {"name": "synthfaces", "size": 32, "n": 96, "n_identities": 12, "seed": 1}
    faces = make_dataset(data)
    raw = {"seed": 0, "data": data,
           "model": {"method": "adversarial_attributes", "attributes": ["identity", "expression"], "width": 8},
           "method": {"code_channels": 4, "code_size": 4, "critic_width": 8, "res_blocks": 1, "kl": 0.1,
                      "adversary_hidden": 16, "hybrid": 1.0, "hybrid_batch": 4, "identity_pairs": 4,
                      "pair_swap": 10.0, "carry": {"expression": ["expression_intensity"]}},
           "train": {"steps": 2, "batch_size": 8, "progress": False, "preview_every": 0, "log_every": 1,
                     "polish": {"steps": 2, "lr": 1e-3}}}
    Trainer(build_dataclass(RunConfig, raw), tmp_path / "r", dataset=faces, log=lambda m: None).fit()
    import json
    log = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert {k for k in log[-1] if k.startswith("polish/")} == {"polish/rec", "polish/hybrid", "polish/carry_rec",
                                                               "polish/pair_swap"}
    steps = list_checkpoints(tmp_path / "r")
    assert steps[-1].name == "step-00000004.safetensors"
    raw["train"]["polish"] = {"steps": 0}
    Trainer(build_dataclass(RunConfig, raw), tmp_path / "m", dataset=faces, log=lambda m: None).fit()
    a, _ = read_checkpoint(steps[-1])
    b, _ = read_checkpoint(list_checkpoints(tmp_path / "m")[-1])
    changed = {k for k in b if k.startswith("model/") and not torch.equal(a[k], b[k])}
    assert changed and all(k.startswith("model/decoder.") for k in changed), sorted(changed)[:3]
    raw["train"]["polish"] = {"steps": 1}
    raw["method"]["polish_terms"] = ["rec", "carry_rec"]      # a subset of the decoder terms
    Trainer(build_dataclass(RunConfig, raw), tmp_path / "s", dataset=faces, log=lambda m: None).fit()
    log = [json.loads(line) for line in (tmp_path / "s" / "log.jsonl").read_text().splitlines()]
    assert {k for k in log[-1] if k.startswith("polish/")} == {"polish/rec", "polish/carry_rec"}
    for bad in (["rec", "critic"], ["hybrid"]):
        raw["method"]["polish_terms"] = bad
        with pytest.raises(FacefactorsError, match="polish_terms"):
            build_model(build_dataclass(RunConfig, raw), faces)


def test_adversary_readback_scores_the_runs_own_adversaries_beside_a_fresh_probe(tmp_path):
    from benchmarks.adversary_readback import readback

    data = {"name": "synthfaces", "size": 32, "n": 96, "n_identities": 6, "seed": 1}
    raw = {"seed": 0, "data": data,
           "model": {"method": "adversarial_attributes", "attributes": ["identity", "illumination"], "width": 8},
           "method": {"code_channels": 4, "code_size": 4, "critic_width": 8, "res_blocks": 1,
                      "adversary_hidden": 16, "adversary_given": True, "confuse_extra": ["pose"]},
           "train": {"steps": 2, "batch_size": 8, "progress": False, "preview_every": 0}}
    Trainer(build_dataclass(RunConfig, raw), tmp_path / "r", log=lambda m: None).fit()
    pairs = [("identity", "illumination"), ("illumination", "pose")]
    rows = readback(str(tmp_path / "r"), pairs, n_train=48, n_test=24)
    assert [(r["part"], r["attribute"]) for r in rows] == pairs
    for r in rows:
        assert 0 < r["chance"] <= 1 and 0 <= r["adversary"] <= 1 and 0 <= r["probe"] <= 1
    # every pair the run has an adversary for, by default; a pair without one is named
    assert len(readback(str(tmp_path / "r"), n_train=48, n_test=24)) == 6
    with pytest.raises(SystemExit, match="rest:identity_x"):
        readback(str(tmp_path / "r"), [("rest", "identity_x")], n_train=48, n_test=24)


def _tiny_identity_run(run_dir) -> None:
    """Two steps on a few SynthFaces (identity and illumination parts) with a small evaluation draw."""
    data = {"name": "synthfaces", "size": 32, "n": 120, "n_identities": 6, "seed": 1}
    raw = {"seed": 0, "data": data,
           "model": {"method": "adversarial_attributes", "attributes": ["identity", "illumination"], "width": 8},
           "method": {"code_channels": 4, "code_size": 4, "critic_width": 8, "res_blocks": 1},
           "train": {"steps": 2, "batch_size": 8, "progress": False, "preview_every": 0},
           "eval": {"max_train": 60, "max_test": 30, "mlp_hidden": 16}}
    Trainer(build_dataclass(RunConfig, raw), run_dir, log=lambda m: None).fit()


def test_probe_spread_refits_the_leakage_matrix_probe_with_other_seeds_and_draws(tmp_path):
    from benchmarks.probe_spread import evaluation_codes, spread
    from facefactors.eval.evaluate import EvalConfig
    from facefactors.eval.probes import leakage_matrix
    from facefactors.runs import load_run

    _tiny_identity_run(tmp_path / "r")
    (row,) = spread(str(tmp_path / "r"), [("identity", "illumination")], seeds=3)
    assert row["pair"] == "identity -> illumination" and len(row["probe_seeds"]) == len(row["draws"]) == 3
    assert all(-1 <= v <= 1 for v in row["probe_seeds"] + row["draws"])
    # seed 0 on the evaluation's own draw is the leakage matrix's figure
    run = load_run(tmp_path / "r")
    cfg = build_dataclass(EvalConfig, dict(run.config.eval), "eval")
    train, test = evaluation_codes(run.model.eval(), run.dataset, cfg, cfg.seed)
    matrix = leakage_matrix(train, test, run.dataset.attributes, ["identity"], ["mlp"], cfg.max_train, cfg.max_test,
                            cfg.mlp_hidden, cfg.seed)
    assert row["matrix"] == row["probe_seeds"][0] == row["draws"][0] == matrix["mlp"]["identity"]["illumination"]["normalized"]


def test_mirror_probe_refits_the_matrix_probe_on_mirror_averaged_codes(tmp_path):
    from benchmarks.mirror_probe import MirrorAveraged, mirror_table
    from facefactors.eval.evaluate import EvalConfig, evaluation_draw
    from facefactors.eval.latents import encode_split
    from facefactors.eval.probes import leakage_matrix
    from facefactors.runs import load_run

    _tiny_identity_run(tmp_path / "r")
    run = load_run(tmp_path / "r")
    model = run.model.eval()
    x = run.dataset.batch(range(6)).image
    mirrored = MirrorAveraged(model, ["identity"]).eval()
    with torch.no_grad():
        z, z_flip, z_model = mirrored.encode(x), mirrored.encode(x.flip(3)), model.encode(x)
    torch.testing.assert_close(z["identity"], z_flip["identity"])
    torch.testing.assert_close(z["illumination"], z_model["illumination"])
    assert (z["identity"] - z_model["identity"]).abs().max() > 1e-4

    res = mirror_table(str(tmp_path / "r"), "identity", ["illumination", "pose"], confusion=["illumination"])
    assert [r["attribute"] for r in res["rows"]] == ["illumination", "pose"]
    cfg = build_dataclass(EvalConfig, dict(run.config.eval), "eval")
    train_idx, test_idx = evaluation_draw(run.dataset, cfg, cfg.seed)
    train = encode_split(model, run.dataset, train_idx, cfg.batch_size)
    test = encode_split(model, run.dataset, test_idx, cfg.batch_size)
    matrix = leakage_matrix(train, test, run.dataset.attributes, ["identity"], ["mlp"], cfg.max_train, cfg.max_test,
                            cfg.mlp_hidden, cfg.seed)
    assert res["rows"][0]["plain"] == matrix["mlp"]["identity"]["illumination"]["normalized"]
    classes, plain, mirror = res["confusion"]["illumination"]
    assert plain.shape == mirror.shape == (len(classes), len(classes))
    assert plain.sum() == mirror.sum() == len(test_idx)
    with pytest.raises(SystemExit, match="no part 'glasses'"):
        mirror_table(str(tmp_path / "r"), "glasses")
    with pytest.raises(SystemExit, match="no labels for attribute 'colour'"):
        mirror_table(str(tmp_path / "r"), "identity", ["colour"])


def test_part_widths_set_named_encoders_widths():
    ds = blobs_dataset()

    def n_params(module):
        return sum(t.numel() for t in module.parameters())

    model = build_model(aa_config(attr_width=4, part_widths={"colour": 12}), ds)
    slim, wide = build_model(aa_config(attr_width=4), ds), build_model(aa_config(attr_width=12), ds)
    assert n_params(model.encoders["colour"]) == n_params(wide.encoders["colour"])
    assert n_params(model.encoders["place"]) == n_params(slim.encoders["place"])  # attr_width still applies
    assert n_params(model.encoders["rest"]) == n_params(slim.encoders["rest"])    # the model's width
    for bad, match in (({"glasses": 8}, "'glasses', which is not a part"), ({"rest": 0}, "positive integer")):
        with pytest.raises(FacefactorsError, match=match):
            build_model(aa_config(part_widths=bad), ds)


def test_adversary_weights_scale_single_pairs_of_the_uniform_term():
    from facefactors.methods.adversarial_attributes import uniform_cross_entropy

    ds = blobs_dataset()
    weights = {"colour:place": 3.0, "rest:colour": 0.0}
    torch.manual_seed(0)
    model = build_model(aa_config(adversary_weights=weights), ds).train()
    batch = ds.batch(range(8))
    out = dict(model.train_step(batch, 50, 100))["autoencoder"]
    z = model.encode(batch.image)
    want = [weights.get(f"{q}:{a}", 1.0) * uniform_cross_entropy(head(z[q].flatten(1)))
            for q, a, head in model._adversary_heads()]
    torch.testing.assert_close(out["dis_mlp"], model.params.adversary * sum(want) / len(want))
    for bad, match in (({"colour:colour": 2.0}, "'colour:colour', which is not a confusion pair"),
                       ({"colour:place": -1.0}, ">= 0")):
        with pytest.raises(FacefactorsError, match=match):
            build_model(aa_config(adversary_weights=bad), ds)
    with pytest.raises(FacefactorsError, match="needs MLP adversaries"):
        build_model(aa_config(adversary_hidden=0, adversary_weights={"colour:place": 2.0}), ds)

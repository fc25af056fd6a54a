import json
import shutil

import pytest
import torch

from facefactors.errors import FacefactorsError
from facefactors.train.checkpoint import list_checkpoints, load_checkpoint, read_checkpoint, save_checkpoint
from facefactors.train.sampler import EpochSampler
from facefactors.train.trainer import Trainer, TrainingDiverged, lr_multiplier
from facefactors.runs import build_model
from tests.helpers import blobs_dataset, tiny_config


def weights(run_dir):
    tensors, _ = read_checkpoint(list_checkpoints(run_dir)[-1])
    return {k: v for k, v in tensors.items() if k.startswith("model/")}


def quiet(msg):
    pass


def test_same_seed_same_weights(tmp_path):
    ds = blobs_dataset()
    Trainer(tiny_config(), tmp_path / "a", dataset=ds, log=quiet).fit()
    Trainer(tiny_config(), tmp_path / "b", dataset=ds, log=quiet).fit()
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_is_exact(tmp_path):
    ds = blobs_dataset()
    Trainer(tiny_config(steps=6), tmp_path / "straight", dataset=ds, log=quiet).fit()
    Trainer(tiny_config(steps=3), tmp_path / "stopped", dataset=ds, log=quiet).fit()
    assert [p.name for p in list_checkpoints(tmp_path / "stopped")] == ["step-00000003.safetensors"]
    Trainer(tiny_config(steps=6), tmp_path / "stopped", resume=True, dataset=ds, log=quiet).fit()
    wa, wb = weights(tmp_path / "straight"), weights(tmp_path / "stopped")
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "resumed run diverged from the uninterrupted one"
    steps = [json.loads(line)["step"] for line in (tmp_path / "stopped" / "log.jsonl").read_text().splitlines()]
    assert steps == [2, 3, 4, 6]


def test_lr_schedule_decays_and_resumes_exactly(tmp_path):
    assert lr_multiplier(0, 10, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_multiplier(10, 10, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_multiplier(5, 10, "linear", 0.0, start=0.5) == pytest.approx(1.0)
    assert lr_multiplier(8, 10, "linear", 0.0, start=0.5) == pytest.approx(0.4)
    with pytest.raises(FacefactorsError, match="lr_schedule 'cosnie'"):
        lr_multiplier(0, 10, "cosnie")
    ds = blobs_dataset()
    cfg = dict(lr_schedule="cosine", lr_final=0.05)
    straight = Trainer(tiny_config(**cfg), tmp_path / "straight", dataset=ds, log=quiet)
    straight.fit()
    assert straight.optimizers["autoencoder"].param_groups[0]["lr"] == pytest.approx(
        1e-3 * lr_multiplier(5, 6, "cosine", 0.05))
    constant = Trainer(tiny_config(), tmp_path / "constant", dataset=ds, log=quiet)
    constant.fit()
    wa, wc = weights(tmp_path / "straight"), weights(tmp_path / "constant")
    assert not all(torch.equal(wa[k], wc[k]) for k in wa), "the schedule changed nothing"
    # interrupted after step 3 (its last checkpoint removed), then resumed: same weights
    shutil.copytree(tmp_path / "straight", tmp_path / "stopped")
    list_checkpoints(tmp_path / "stopped")[-1].unlink()
    Trainer(tiny_config(**cfg), tmp_path / "stopped", resume=True, dataset=ds, log=quiet).fit()
    wb = weights(tmp_path / "stopped")
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "resumed run left the schedule's curve"


def test_run_dir_holds_config_log_checkpoints(tmp_path):
    ds = blobs_dataset()
    Trainer(tiny_config(preview_every=3), tmp_path / "r", dataset=ds, log=quiet).fit()
    run = tmp_path / "r"
    assert (run / "config.yaml").is_file() and (run / "log.jsonl").is_file()
    assert (run / "figures" / "preview.png").is_file()
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["step"] == 6 and summary["images_per_s"] > 0
    rec = json.loads((run / "log.jsonl").read_text().splitlines()[0])
    assert "autoencoder/rec" in rec and "images_per_s" in rec


def test_existing_run_is_not_overwritten(tmp_path):
    ds = blobs_dataset()
    Trainer(tiny_config(), tmp_path / "r", dataset=ds, log=quiet).fit()
    before = weights(tmp_path / "r")
    with pytest.raises(FacefactorsError, match="already holds a trained run"):
        Trainer(tiny_config(), tmp_path / "r", dataset=ds, log=quiet).fit()
    after = weights(tmp_path / "r")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_nan_loss_stops_with_name_and_keeps_checkpoint(tmp_path, monkeypatch):
    from facefactors.methods.autoencoder import Autoencoder

    original = Autoencoder.train_step

    def poisoned(self, batch, step, total):
        for group, losses in original(self, batch, step, total):
            if step == 4:
                losses = {**losses, "rec": losses["rec"] * float("nan")}
            yield group, losses

    monkeypatch.setattr(Autoencoder, "train_step", poisoned)
    ds = blobs_dataset()
    with pytest.raises(TrainingDiverged, match=r"loss autoencoder/rec became nan at step 4.*step-00000003"):
        Trainer(tiny_config(), tmp_path / "r", dataset=ds, log=quiet).fit()
    assert [p.name for p in list_checkpoints(tmp_path / "r")] == ["step-00000003.safetensors"]


def test_bf16_precision_trains_on_cpu_and_is_deterministic(tmp_path, monkeypatch):
    """train.precision=bf16 autocasts on the CPU too (fast where the CPU has native bf16): the
    weights stay fp32, the run is reproducible, and a CPU without native bf16 gets a warning."""
    import facefactors.train.trainer as trainer_module

    ds = blobs_dataset()
    logs = []
    monkeypatch.setattr(trainer_module, "cpu_has_native_bf16", lambda: False)
    Trainer(tiny_config(precision="bf16"), tmp_path / "a", dataset=ds, log=logs.append).fit()
    Trainer(tiny_config(precision="bf16"), tmp_path / "b", dataset=ds, log=quiet).fit()
    Trainer(tiny_config(precision="fp32"), tmp_path / "c", dataset=ds, log=quiet).fit()
    wa, wb, wc = weights(tmp_path / "a"), weights(tmp_path / "b"), weights(tmp_path / "c")
    assert all(v.dtype == torch.float32 for k, v in wa.items() if v.is_floating_point())
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa if wa[k].is_floating_point())  # autocast was on
    assert any("bf16" in m for m in logs) and any(m.startswith("warning: train.precision=bf16") for m in logs)


def test_unknown_precision_is_a_clear_error(tmp_path):
    with pytest.raises(FacefactorsError, match="unknown train.precision 'fp8'"):
        Trainer(tiny_config(precision="fp8"), tmp_path / "r", dataset=blobs_dataset(), log=quiet).fit()


def test_checkpoint_rejects_foreign_files(tmp_path):
    ds = blobs_dataset()
    model = build_model(tiny_config(), ds)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(FacefactorsError, match="junk.safetensors is not a facefactors checkpoint"):
        load_checkpoint(junk, model, None, "autoencoder")
    good = tmp_path / "good.safetensors"
    save_checkpoint(good, model, {}, 1, "autoencoder", [torch.get_rng_state()])
    with pytest.raises(FacefactorsError, match="trained with method 'autoencoder'.*'d2ae'"):
        load_checkpoint(good, model, None, "d2ae")
    other = build_model(tiny_config(), ds)
    other.decoder.fc[0] = torch.nn.Linear(3, 5)
    with pytest.raises(FacefactorsError, match="does not fit this model"):
        load_checkpoint(good, other, None, "autoencoder")


def test_sampler_is_a_pure_function_of_step():
    idx = torch.arange(10).numpy() * 3
    s1, s2 = EpochSampler(idx, 4, seed=1), EpochSampler(idx, 4, seed=1)
    seq = [s1.global_batch(k) for k in range(6)]
    assert all((s2.global_batch(k) == seq[k]).all() for k in reversed(range(6)))
    first_epoch = sorted(list(seq[0]) + list(seq[1]) + list(seq[2][:2]))
    assert first_epoch == sorted(idx.tolist())  # every image once per epoch
    assert (s1.local_batch(3, 0, 2) == seq[3][0::2]).all()


def test_weight_average_rate_and_update():
    from facefactors.train.ema import WeightAverage

    m = torch.nn.BatchNorm1d(3)
    avg = WeightAverage(m, 0.9)
    assert avg.rate(0) == pytest.approx(0.1) and avg.rate(1000) == pytest.approx(0.9)
    with torch.no_grad():
        m.weight.fill_(2.0)
        m.num_batches_tracked.fill_(7)
    avg.update(1000)   # 0.9 * 1 + 0.1 * 2
    assert torch.allclose(avg.shadow["weight"], torch.full((3,), 1.1))
    assert int(avg.shadow["num_batches_tracked"]) == 7, "integer buffers are copied, not averaged"
    with pytest.raises(FacefactorsError, match="train.ema=1.5"):
        WeightAverage(m, 1.5)


def test_ema_leaves_training_unchanged_resumes_and_is_what_runs_load(tmp_path):
    from facefactors.runs import load_run

    ds = blobs_dataset()
    Trainer(tiny_config(), tmp_path / "plain", dataset=ds, log=quiet).fit()
    Trainer(tiny_config(ema=0.5), tmp_path / "ema", dataset=ds, log=quiet).fit()
    wp, we = weights(tmp_path / "plain"), weights(tmp_path / "ema")
    assert all(torch.equal(wp[k], we[k]) for k in wp), "the average must not change training"
    tensors, _ = read_checkpoint(list_checkpoints(tmp_path / "ema")[-1])
    avg = {k[4:]: v for k, v in tensors.items() if k.startswith("ema/")}
    assert avg.keys() == {k[6:] for k in we}
    assert any(not torch.equal(avg[k], we["model/" + k]) for k in avg if avg[k].is_floating_point())
    # stopped after step 3 and resumed: the same live weights and the same average
    Trainer(tiny_config(steps=3, ema=0.5), tmp_path / "stopped", dataset=ds, log=quiet).fit()
    Trainer(tiny_config(ema=0.5), tmp_path / "stopped", resume=True, dataset=ds, log=quiet).fit()
    t2, _ = read_checkpoint(list_checkpoints(tmp_path / "stopped")[-1])
    assert all(torch.equal(tensors[k], t2[k]) for k in tensors if k.startswith(("ema/", "model/")))
    # evaluation loads the average; "live" the trained weights; "ema" on a run without one is an error
    run = load_run(tmp_path / "ema", dataset=ds)
    sd = run.model.state_dict()
    assert all(torch.equal(sd[k].contiguous(), avg[k]) for k in sd)
    live = load_run(tmp_path / "ema", dataset=ds, weights="live").model.state_dict()
    assert all(torch.equal(live[k].contiguous(), we["model/" + k]) for k in live)
    with pytest.raises(FacefactorsError, match="no averaged weights"):
        load_run(tmp_path / "plain", dataset=ds, weights="ema")


def test_polish_rate_and_config_checks():
    from facefactors.config import build_dataclass
    from facefactors.train.polish import PolishConfig

    pc = PolishConfig(steps=5, lr=1e-3, lr_final=0.1)
    assert pc.rate(0) == pytest.approx(1e-3) and pc.rate(4) == pytest.approx(1e-4)
    assert pc.rate(1) > pc.rate(2) > pc.rate(3)
    assert PolishConfig(steps=3, lr=2e-4, lr_final=1.0).rate(2) == pytest.approx(2e-4)
    assert not PolishConfig().active
    for bad, key in (({"steps": -1}, "steps"), ({"lr": 0}, "lr"), ({"lr_final": 2}, "lr_final")):
        with pytest.raises(FacefactorsError, match=f"train.polish.{key}"):
            tiny_config(polish={"steps": 2, **bad})
    with pytest.raises(FacefactorsError, match="polish"):
        tiny_config(polish={"step": 2})
    assert build_dataclass(type(tiny_config()), {"train": {"polish": {"steps": 4}}}).train.polish.steps == 4


def test_polish_trains_the_decoder_alone_and_resumes_exactly(tmp_path):
    ds = blobs_dataset()
    Trainer(tiny_config(), tmp_path / "main", dataset=ds, log=quiet).fit()
    polish = {"steps": 4, "lr": 1e-3}
    Trainer(tiny_config(polish=polish), tmp_path / "polished", dataset=ds, log=quiet).fit()
    main, pol = weights(tmp_path / "main"), weights(tmp_path / "polished")
    assert main.keys() == pol.keys()
    changed = {k for k in main if not torch.equal(main[k], pol[k])}
    assert changed and all(k.startswith("model/decoder.") for k in changed), sorted(changed)[:3]
    # encoder norm statistics are frozen too (the encoder ran in eval mode)
    assert any(k.startswith("model/encoder.") and "running_mean" in k for k in main)
    log = [json.loads(line) for line in (tmp_path / "polished" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 10 and "polish/rec" in log[-1] and "polish/rec" not in log[2]
    summary = json.loads((tmp_path / "polished" / "train_summary.json").read_text())
    assert summary["steps"] == 10 and summary["polish_steps"] == 4
    # stopped inside the polish phase (step 9 > 6) and resumed: the same weights as uninterrupted
    Trainer(tiny_config(polish=polish, checkpoint_every=9), tmp_path / "cut", dataset=ds, log=quiet).fit()
    cut = tmp_path / "cut"
    for late in list_checkpoints(cut)[1:]:
        late.unlink()
    assert [p.name for p in list_checkpoints(cut)] == ["step-00000009.safetensors"]
    Trainer(tiny_config(polish=polish, checkpoint_every=9), cut, resume=True, dataset=ds, log=quiet).fit()
    assert all(torch.equal(pol[k], weights(cut)[k]) for k in pol), "resume inside the polish phase diverged"
    # a run trained without polishing continues into the phase from its last checkpoint
    Trainer(tiny_config(polish=polish), tmp_path / "main", resume=True, dataset=ds, log=quiet).fit()
    assert all(torch.equal(pol[k], weights(tmp_path / "main")[k]) for k in pol)

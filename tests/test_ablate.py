"""``facefactors ablate`` and the leaderboard: variant expansion and naming, the run loop (reuse and
resume), the tables."""
from __future__ import annotations

import json

import pytest

from facefactors.cli import main
from facefactors.errors import FacefactorsError
from facefactors.eval.ablation import (MISSING, Vary, expand_variants, markdown_table, ablation_columns,
                                       parse_vary, plan_ablation, split_values)
from tests.test_cli import assert_clean_error, run_cli
from tests.test_compare import assert_self_contained

CONFIG = """\
seed: 1
data: {name: digits, size: 16}
model: {method: autoencoder, attributes: [digit], width: 8, part_dims: {digit: 4, rest: 4}}
method: {lr: 1.0e-3}
train: {steps: 2, batch_size: 8, checkpoint_every: 2, preview_every: 0, progress: false}
eval: {max_train: 120, max_test: 50, mlp_hidden: 8, grid_size: 2, n_pairs: 8}
"""


def names(variants):
    return [v.name for v in variants]


def test_parse_vary_and_split_values():
    assert split_values("0, [0.5,0.9] ,{a: 1, b: 2},x") == ["0", "[0.5,0.9]", "{a: 1, b: 2}", "x"]
    v = parse_vary("method.betas=[0.5,0.9],[0.9,0.999]")
    assert v.key == "method.betas" and v.values == ([0.5, 0.9], [0.9, 0.999])
    assert parse_vary("method.lr=1e-4,1e-3").values == (1e-4, 1e-3)        # parsed like overrides
    assert parse_vary("method.dis=0,1,0").texts == ("0", "1")              # repeats dropped
    for bad, msg in (("method.dis", "key=value1,value2"), ("=0,1", "dotted config key"),
                     ("method..dis=0", "dotted config key"), ("method.dis=0,,1", "empty value")):
        with pytest.raises(FacefactorsError, match=msg):
            parse_vary(bad)


def test_one_at_a_time_base_plus_each_differing_value():
    varies = [parse_vary("method.dis=0,1"), parse_vary("method.hybrid=0,0.3,1")]
    vs = expand_variants(varies, {"method.dis": 1.0, "method.hybrid": 0.3})
    assert names(vs) == ["base", "dis=0", "hybrid=0", "hybrid=1"]
    assert vs[0].is_base and vs[0].overrides == [] and vs[0].slug == "base"
    assert vs[1].overrides == ["method.dis=0"] and vs[3].overrides == ["method.hybrid=1"]
    assert len({v.slug for v in vs}) == len(vs)


def test_grid_is_the_cartesian_product_named_by_changes():
    varies = [parse_vary("method.dis=0,1"), parse_vary("method.hybrid=0,0.3")]
    vs = expand_variants(varies, {"method.dis": 1, "method.hybrid": 0.3}, "grid")
    assert names(vs) == ["base", "dis=0, hybrid=0", "dis=0", "hybrid=0"]
    assert vs[1].overrides == ["method.dis=0", "method.hybrid=0"] and vs[1].slug == "dis=0_hybrid=0"
    # a base value outside the grid: every combination is a change
    vs = expand_variants([parse_vary("method.dis=0,2")], {"method.dis": 1}, "grid")
    assert names(vs) == ["dis=0", "dis=2"]


def test_names_use_full_keys_when_short_ones_clash_and_unknown_base():
    varies = [Vary("model.width", ("16",)), Vary("method.width", ("8",))]
    vs = expand_variants(varies, {"model.width": 32, "method.width": MISSING})
    assert names(vs) == ["base", "model.width=16", "method.width=8"]
    with pytest.raises(FacefactorsError, match="twice"):
        expand_variants([parse_vary("a.b=1"), parse_vary("a.b=2")], {})
    with pytest.raises(FacefactorsError, match="unknown ablation mode"):
        expand_variants(varies, {}, "random")


def test_plan_reads_base_values_with_defaults_and_checks_every_variant(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG)
    # method.rec is not in the YAML: its base value is the method's default (1.0), so 1 is no change
    planned = plan_ablation(cfg, [parse_vary("method.rec=1,2"), parse_vary("train.steps=2,3")])
    assert [v.name for v, _ in planned] == ["base", "rec=2", "steps=3"]
    assert planned[1][1].method["rec"] == 2 and planned[2][1].train.steps == 3
    with pytest.raises(FacefactorsError, match="variant nosuch=1: unknown config key method.'nosuch'"):
        plan_ablation(cfg, [parse_vary("method.nosuch=1")])
    with pytest.raises(FacefactorsError, match="variant steps=x.*integer"):
        plan_ablation(cfg, [parse_vary("train.steps=x")])


def test_markdown_table_bolds_best_per_column():
    measured = [{"psnr": 20.0, "leak/mlp": 0.5, "diag/mlp/digit": 0.9, "mig": None},
                {"psnr": 22.0, "leak/mlp": 0.7, "diag/mlp/digit": 0.8, "mig": None},
                {}]
    cols = ablation_columns(measured)
    assert [c.figure.label for c in cols] == ["PSNR", "max leak MLP", "acc digit (mlp)"]   # no MIG column
    md = markdown_table(["base", "dis=0", "hybrid=0"], cols, [None, None, "pending"]).splitlines()
    assert md[0] == "| variant | PSNR ↑ | max leak MLP ↓ | acc digit (mlp) ↑ |"
    assert md[2] == "| base | 20.00 | **0.500** | **0.900** |"
    assert md[3] == "| dis=0 | **22.00** | 0.700 | 0.800 |"
    assert md[4] == "| hybrid=0 | pending | pending | pending |"


def test_ablate_cli_trains_reuses_and_resumes(capsys, tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG)
    out = tmp_path / "abl"
    # overrides after the options are accepted
    code, stdout, _ = run_cli(capsys, "ablate", str(cfg), "--vary", "train.steps=2,4", "--vary", "method.lr=1e-3",
                              "--out", str(out), "--device", "cpu", "eval.n_pairs=4")
    assert code == 0, stdout
    assert "| variant | PSNR" in stdout and "| steps=4 |" in stdout
    md = (out / "ablation.md").read_text()
    assert "| base |" in md and "| steps=4 |" in md and "lr=" not in md.split("Variants:")[1]
    assert md.count("**") >= 2
    page = (out / "ablation.html").read_text()
    assert_self_contained(page)
    assert 'class="best"' in page and "steps=4" in page
    summary = json.loads((out / "ablation.json").read_text())
    assert [v["state"] for v in summary["variants"]] == ["trained", "trained"]
    assert json.loads((out / "steps=4" / "train_summary.json").read_text())["step"] == 4
    assert json.loads((out / "base" / "metrics.json").read_text())["eval_config"]["n_pairs"] == 4

    # interrupted: the steps=4 run lost its last checkpoint and never finished; base is done
    ckpts = sorted((out / "steps=4" / "checkpoints").iterdir())
    assert [c.name for c in ckpts] == ["step-00000002.safetensors", "step-00000004.safetensors"]
    ckpts[-1].unlink()
    (out / "steps=4" / "train_summary.json").unlink()
    (out / "steps=4" / "metrics.json").unlink()
    calls = []
    from facefactors.train import trainer as trainer_mod

    class SpyTrainer(trainer_mod.Trainer):
        def __init__(self, cfg, run_dir, resume=False, **kw):
            calls.append((run_dir.name, resume))
            super().__init__(cfg, run_dir, resume=resume, **kw)
    monkeypatch.setattr(trainer_mod, "Trainer", SpyTrainer)
    code, _, _ = run_cli(capsys, "ablate", str(cfg), "eval.n_pairs=4", "--vary", "train.steps=2,4",
                         "--out", str(out), "--device", "cpu")
    assert code == 0
    assert calls == [("steps=4", True)]                       # base reused, steps=4 resumed
    summary = json.loads((out / "ablation.json").read_text())
    assert [v["state"] for v in summary["variants"]] == ["reused", "resumed"]
    assert json.loads((out / "steps=4" / "train_summary.json").read_text())["step"] == 4

    # other evaluation settings: finished runs are re-evaluated, not retrained
    calls.clear()
    code, _, _ = run_cli(capsys, "ablate", str(cfg), "eval.n_pairs=6", "--vary", "train.steps=2,4",
                         "--out", str(out), "--device", "cpu")
    assert code == 0 and calls == []
    assert [v["state"] for v in json.loads((out / "ablation.json").read_text())["variants"]] == ["evaluated"] * 2

    # a run directory holding another config is refused, naming the key
    code, _, err = run_cli(capsys, "ablate", str(cfg), "eval.n_pairs=6", "method.lr=0.01",
                           "--vary", "train.steps=2,4", "--out", str(out), "--device", "cpu")
    assert_clean_error(code, err, str(out / "base"), "method.lr")


def test_a_diverging_variant_is_recorded_and_the_others_run(tmp_path, monkeypatch):
    from facefactors.eval import ablation
    from facefactors.train.trainer import TrainingDiverged

    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG)

    def fake(cfg, run_dir, *args, **kwargs):
        if run_dir.name == "lr=10":
            raise TrainingDiverged("loss autoencoder/rec became nan at step 1")
        psnr = 20.0 + cfg.train.steps
        return {"reconstruction": {"psnr": psnr}}, None, "trained"
    monkeypatch.setattr(ablation, "train_and_evaluate", fake)
    monkeypatch.setattr(ablation.DatasetCache, "get", lambda self, spec: None)
    res = ablation.run_ablation(cfg, [parse_vary("method.lr=10"), parse_vary("train.steps=3")],
                                out_dir=tmp_path / "o", log=lambda m: None)
    assert [(r.variant.name, r.state) for r in res.results] == [("base", "trained"), ("lr=10", "diverged"),
                                                                 ("steps=3", "trained")]
    lines = res.table.splitlines()
    assert lines[2:] == ["| base | 22.00 |", "| lr=10 | diverged |", "| steps=3 | **23.00** |"]
    md = res.markdown.read_text()
    assert "became nan at step 1" in md and "became nan" in res.html.read_text()


def test_ablate_cli_errors(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG)
    code, _, err = run_cli(capsys, "ablate", str(cfg), "--vary", "method.nosuch=0,1", "--out", str(tmp_path / "o"))
    assert_clean_error(code, err, "variant nosuch=0", "nosuch", "valid keys")
    assert not (tmp_path / "o").exists()
    code, _, err = run_cli(capsys, "ablate", str(cfg), "--vary", "method.lr", "--out", str(tmp_path / "o"))
    assert_clean_error(code, err, "key=value1,value2")
    with pytest.raises(SystemExit):           # --vary is required, --grid and --one-at-a-time exclusive
        main(["ablate", str(cfg)])
    with pytest.raises(SystemExit):
        main(["ablate", str(cfg), "--vary", "method.lr=1,2", "--grid", "--one-at-a-time"])
    capsys.readouterr()


def test_verbs_have_help_with_example(capsys):
    for verb in ("compare", "ablate"):
        with pytest.raises(SystemExit) as e:
            main([verb, "--help"])
        assert e.value.code == 0 and "example:" in capsys.readouterr().out


# ------------------------------------------------------------------------------ the leaderboard
def test_leaderboard_markdown_on_fake_results(tmp_path):
    from benchmarks.methods import leaderboard_markdown, method_configs

    entries = [
        {"method": "autoencoder", "budget_min": 30, "figures": {
            "images_per_s": 249.2, "psnr": 27.82, "leak/linear": 1.0, "leak/mlp": 1.0,
            "cf_mean/ratio_to_reconstruction": 9.77}},
        {"method": "d2ae", "budget_min": 30, "figures": {
            "images_per_s": 180.0, "psnr": 25.1, "leak/linear": 0.4, "leak/mlp": 0.6,
            "cf_mean/ratio_to_reconstruction": 3.2, "mig": 0.21, "dci/disentanglement": 0.35}},
        {"method": "adversarial_attributes", "budget_min": 30, "figures": {
            "images_per_s": 60.0, "psnr": 24.0, "leak/linear": 0.5, "leak/mlp": 0.55,
            "cf_mean/ratio_to_reconstruction": 4.0, "mig": 0.3, "dci/disentanglement": 0.35}},
    ]
    md = leaderboard_markdown(entries, "python benchmarks/methods.py", "2 cores", "2026-11-30", ["cycle_vae"])
    lines = md.splitlines()
    assert lines[:3] == ["Command: `python benchmarks/methods.py`  ", "Machine: 2 cores  ", "Date: 2026-11-30"]
    assert lines[4] == ("| method | budget | images/s ↑ | PSNR (dB) ↑ | max leak linear ↓ | max leak MLP ↓ | "
                        "mean CF ratio ↓ | MIG ↑ | DCI-D ↑ |")
    assert lines[6] == "| autoencoder | 30 min | **249** | **27.82** | 1.000 | 1.000 | 9.770 | n/a | n/a |"
    assert lines[7] == "| d2ae | 30 min | 180 | 25.10 | **0.400** | 0.600 | **3.200** | 0.210 | 0.350 |"
    assert lines[8] == ("| adversarial_attributes | 30 min | 60 | 24.00 | 0.500 | **0.550** | 4.000 | **0.300** | "
                        "0.350 |")   # DCI-D ties: no bold
    assert "Not benchmarked (no configs/<method>_synthfaces.yaml): cycle_vae." in md
    (tmp_path / "autoencoder_synthfaces.yaml").write_text("seed: 0\n")
    found, skipped = method_configs(["autoencoder", "d2ae"], tmp_path)
    assert found == [("autoencoder", tmp_path / "autoencoder_synthfaces.yaml")] and skipped == ["d2ae"]


def test_leaderboard_from_recorded_results(tmp_path):
    import json

    import yaml

    from benchmarks.methods import ROOT, comparable_runs, recorded_entry
    from tests.test_compare import fake_metrics

    results = tmp_path / "results"
    results.mkdir()
    for name, data, threads in (("ae_baseline", {"name": "synthfaces"}, 2),
                                ("d2ae_synthfaces", {"name": "synthfaces", "n_identities": 600}, 1),
                                ("ifcvae_gan_synthfaces", {"name": "synthfaces", "n": 30000}, 1)):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(yaml.safe_dump({"data": data}))
        (run / "metrics.json").write_text("{}")
        (results / f"{name}.json").write_text(json.dumps({
            "command": f"python benchmarks/train_and_evaluate.py x.yaml --out {run} train.num_threads={threads}",
            "machine": f"2 cores (cpu), torch 2, {threads} threads", "date": "2026-11-23",
            "train": {"train_seconds": 1790.0, "images_per_s": 50.0 * threads, "step": 100},
            "metrics": fake_metrics(20.0 + threads, 0.3, 0.4, 0.9)}))
    configs = ROOT / "configs"
    ae = recorded_entry("autoencoder", configs / "autoencoder_synthfaces.yaml", results)   # named ae_baseline
    assert ae["budget_min"] == 30 and ae["compute"] == "2 thr." and ae["figures"]["psnr"] == 22.0
    assert ae["figures"]["images_per_s"] == 100.0 and ae["run_dir"] == str(tmp_path / "runs" / "ae_baseline")
    d2ae = recorded_entry("d2ae", configs / "d2ae_synthfaces.yaml", results)
    ifc = recorded_entry("ifcvae_gan", configs / "ifcvae_gan_synthfaces.yaml", results)
    assert recorded_entry("cycle_vae", configs / "cycle_vae_synthfaces.yaml", results) is None
    assert recorded_entry("ifcvae_gan", configs / "x.yaml", results, name="d2ae_synthfaces")["compute"] == "1 thr."
    # the comparison page takes runs on the first run's data; the others are named with the difference
    keep, notes = comparable_runs([ae, d2ae, ifc, {"method": "gone", "run_dir": str(tmp_path / "nope")}])
    assert keep == [ae["run_dir"], ifc["run_dir"]]
    assert notes[0].startswith("d2ae: other data (data.n_identities 600 vs 100")
    assert notes[1].startswith("gone: run directory")

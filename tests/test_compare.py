"""``facefactors compare``: figures side by side, best per row, dataset checks, a self-contained page."""
from __future__ import annotations

import json
import re
import shutil

import pytest

from facefactors.config import build_dataclass, RunConfig
from facefactors.errors import FacefactorsError
from facefactors.eval.compare import (best_indices, check_same_dataset, dataset_identity, eval_setting_warnings,
                                      figure_rows, figures_of, headline_keys, run_names)
from facefactors.train.trainer import Trainer
from tests.test_cli import assert_clean_error, run_cli

EVAL = {"max_train": 150, "max_test": 60, "mlp_hidden": 8, "grid_size": 2, "n_pairs": 8}


def tiny_digits(steps: int, seed: int) -> RunConfig:
    return build_dataclass(RunConfig, {
        "seed": seed, "data": {"name": "digits", "size": 16},
        "model": {"method": "autoencoder", "attributes": ["digit"], "width": 8, "part_dims": {"digit": 4, "rest": 4}},
        "train": {"steps": steps, "batch_size": 8, "checkpoint_every": 100, "preview_every": 0, "progress": False},
        "eval": EVAL})


def fake_metrics(psnr, leak_lin, leak_mlp, diag, cf=None, **extra):
    """A metrics.json-shaped dict: parts a, b, rest; attributes a, b."""
    def entry(v):
        return {"accuracy": v, "chance": 0.5, "normalized": v}
    leakage = {kind: {"a": {"a": entry(diag), "b": entry(lk)}, "b": {"a": entry(0.0), "b": entry(diag)},
                      "rest": {"a": entry(0.0), "b": entry(0.0)}}
               for kind, lk in (("linear", leak_lin), ("mlp", leak_mlp))}
    return {"reconstruction": {"psnr": psnr, "mse": 10 ** (-psnr / 10), "ssim": 0.5}, "leakage": leakage,
            "counterfactual": cf or {}, "parts": {"a": 2, "b": 2, "rest": 2}, **extra}


def cf(r):
    return {"ratio_to_reconstruction": r, "ratio_to_no_change": r / 10,
            "region_ratio_to_reconstruction": r, "region_ratio_to_no_change": r / 10}


def test_best_indices_directions_ties_and_gaps():
    assert best_indices([1.0, 3.0, 2.0], "higher") == {1}
    assert best_indices([1.0, 3.0, 2.0], "lower") == {0}
    assert best_indices([1.0, None, 1.0, 2.0], "lower") == {0, 2}     # ties all marked
    assert best_indices([2.0, 2.0], "lower") == set()                   # everyone ties: nothing
    assert best_indices([None, 5.0], "higher") == set()                 # one known value: nothing
    assert best_indices([1.0, 2.0], None) == set()


def test_table_marks_best_per_row():
    runs = [fake_metrics(20.0, 0.9, 0.8, 0.7, {"a": cf(2.0), "b": cf(4.0)}, mig=0.1,
                         dci={"disentanglement": 0.2, "completeness": 0.3, "informativeness": 0.9}),
            fake_metrics(25.0, 0.1, 0.9, 0.9, {"a": cf(1.0), "b": cf(1.5)}),            # an older run: no MIG/DCI
            fake_metrics(22.0, 0.5, 0.3, 0.8, {"a": cf(3.0), "b": cf(1.0)}, mig=0.4,
                         dci={"disentanglement": 0.1, "completeness": 0.3, "informativeness": 0.8})]
    measured = [figures_of(m, {"images_per_s": ips, "step": 10, "train_seconds": 60})
                for m, ips in zip(runs, (100.0, 50.0, 75.0))]
    rows = {r.figure.key: r for r in figure_rows(measured)}
    assert rows["psnr"].best == {1} and rows["mse"].best == {1}       # higher PSNR, lower MSE
    assert rows["leak/linear"].best == {1} and rows["leak/mlp"].best == {2}
    assert rows["leak/linear"].notes[0] == "a → b"
    assert rows["diag/mlp/a"].best == {1} and rows["diag/mlp/b"].best == {1}
    assert rows["cf_mean/ratio_to_reconstruction"].values == [3.0, 1.25, 2.0]
    assert rows["cf_mean/ratio_to_reconstruction"].best == {1}
    assert rows["cf/b/ratio_to_reconstruction"].best == {2}
    assert rows["mig"].values == [0.1, None, 0.4] and rows["mig"].best == {2}
    assert rows["dci/completeness"].best == set()                      # a tie between the two that have it
    assert rows["images_per_s"].best == {0} and rows["steps"].best == set()
    keys = headline_keys(list(rows))
    assert keys[0] == "psnr" and not any(k.startswith("cf/") for k in keys)
    assert keys.index("leak/linear") < keys.index("diag/linear/a") < keys.index("cf_mean/ratio_to_reconstruction") \
        < keys.index("mig") < keys.index("images_per_s")


def test_figures_of_tolerates_missing_sections():
    values, notes = figures_of({"reconstruction": {"psnr": 20.0}})
    assert values == {"psnr": 20.0} and notes == {}


def test_dataset_identity_fills_defaults_and_ignores_unused_keys(tmp_path):
    assert dataset_identity({"name": "digits", "size": 16}) == dataset_identity(
        {"name": "digits", "size": 16.0, "n": 500, "noise": 0.1, "seed": 0})   # n/noise do not apply to digits
    assert dataset_identity({"name": "synthfaces"}) == dataset_identity(
        {"name": "synthfaces", "size": 64, "n": 30000, "channels": 3, "noise": "0.02"})
    # a saved SynthFaces directory stands for its generator settings
    saved = tmp_path / "sf"
    saved.mkdir()
    (saved / "meta.json").write_text(json.dumps({"config": {"n": 40, "size": 32, "n_identities": 5, "seed": 7,
                                                            "test_fraction": 0.1, "heldout_identities": 0,
                                                            "noise": 0.02}}))
    assert dataset_identity({"name": "synthfaces", "path": str(saved)}) == dataset_identity(
        {"name": "synthfaces", "n": 40, "size": 32, "n_identities": 5, "seed": 7})
    check_same_dataset({"r1": {"name": "digits", "size": 16}, "r2": {"name": "digits", "size": 16, "n": 3}})
    with pytest.raises(FacefactorsError, match=r"r1 and r3.*data\.seed: 0 vs 1"):
        check_same_dataset({"r1": {"name": "synthfaces"}, "r2": {"name": "synthfaces"},
                            "r3": {"name": "synthfaces", "seed": 1}})
    with pytest.raises(FacefactorsError, match=r"data\.name: 'digits' vs 'synthfaces'"):
        check_same_dataset({"a": {"name": "digits"}, "b": {"name": "synthfaces"}})


def test_run_names_and_eval_warnings():
    assert run_names(["runs/x/ae", "runs/y/aa"]) == ["ae", "aa"]
    assert run_names(["runs/x/ae", "runs/y/ae"]) == ["runs/x/ae", "runs/y/ae"]
    w = eval_setting_warnings({"a": {"eval_config": {"seed": 0, "probes": ["linear"]}},
                               "b": {"eval_config": {"seed": 1, "probes": ["linear"]}}})
    assert len(w) == 1 and "'seed'" in w[0] and "a 0" in w[0] and "b 1" in w[0]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    runs = []
    for name, steps, seed in (("short", 2, 1), ("longer", 6, 2)):
        Trainer(tiny_digits(steps, seed), root / name, log=lambda m: None).fit()
        runs.append(root / name)
    return runs


def assert_self_contained(page: str) -> None:
    for attr, value in re.findall(r'\b(src|href)\s*=\s*["\']?([^"\'\s>]*)', page, flags=re.I):
        assert value.startswith("data:image/png;base64,"), (attr, value[:40])
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower() and "<link" not in page.lower()


def test_compare_cli_end_to_end(capsys, two_runs, tmp_path):
    a, b = two_runs
    out = tmp_path / "comparison.html"
    # not evaluated yet: a clear error naming the run and the command to run
    code, _, err = run_cli(capsys, "compare", str(a), str(b), "-o", str(out))
    assert_clean_error(code, err, str(a), "facefactors evaluate", "--evaluate")
    assert not out.exists()
    # a run on other data is refused before anything is evaluated
    other = tmp_path / "other"
    shutil.copytree(a, other)
    (other / "config.yaml").write_text((a / "config.yaml").read_text().replace("size: 16", "size: 24"))
    code, _, err = run_cli(capsys, "compare", str(a), str(other), "-o", str(out))
    assert_clean_error(code, err, str(a), str(other), "data.size: 16 vs 24")
    # --evaluate evaluates the missing ones, then compares
    code, stdout, _ = run_cli(capsys, "compare", str(a), str(b), "-o", str(out), "--evaluate", "--grid-size", "2")
    assert code == 0 and "wrote" in stdout
    assert (a / "metrics.json").is_file() and (b / "metrics.json").is_file()
    page = out.read_text()
    assert_self_contained(page)
    assert "Headline figures" in page and "PSNR (dB)" in page and 'class="best"' in page
    assert page.count('alt="leakage of ') == 2
    for part in ("digit", "rest"):                       # same swap grid from each run
        assert f'alt="swap {part} of short"' in page and f'alt="swap {part} of longer"' in page
    # the best PSNR cell is the higher of the two runs
    psnr = [json.loads((r / "metrics.json").read_text())["reconstruction"]["psnr"] for r in (a, b)]
    row = re.search(r"PSNR \(dB\)[^<]*</td>(.*?)</tr>", page).group(1)
    cells = re.findall(r"<td( class=\"best\")?>([^<]*)</td>", row)
    assert [bool(c[0]) for c in cells] == [psnr[0] > psnr[1], psnr[1] > psnr[0]]
    # swap grids of a named part only
    code, _, _ = run_cli(capsys, "compare", str(a), str(b), "-o", str(out), "--parts", "digit", "--grid-size", "1")
    page = out.read_text()
    assert code == 0 and "swap digit of short" in page and "swap rest of short" not in page
    code, _, err = run_cli(capsys, "compare", str(a), str(b), "-o", str(out), "--parts", "pose")
    assert_clean_error(code, err, "unknown latent part 'pose'", "digit, rest")

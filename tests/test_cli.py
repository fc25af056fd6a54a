"""The command line: every verb has help; bad input gives one clear error line, exit 2, no traceback."""
import json

import numpy as np
import pytest

from facefactors.cli import main
from facefactors.train.trainer import Trainer
from tests.helpers import blobs_dataset, tiny_config

VERBS = ["methods", "data", "train", "evaluate", "compare", "ablate", "encode", "swap", "edit", "sample", "interpolate",
         "demo"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help_with_example(verb, capsys):
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    assert "example:" in capsys.readouterr().out


def test_methods_lists_one_line_each(capsys):
    code, out, _ = run_cli(capsys, "methods")
    names = [line.split()[0] for line in out.splitlines()]
    assert code == 0 and {"autoencoder", "adversarial_attributes"} <= set(names)


def assert_clean_error(code, err, *fragments):
    assert code == 2
    assert err.startswith("facefactors: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for f in fragments:
        assert f in err, (f, err)


def test_unknown_method(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {name: digits, size: 32}\nmodel: {method: nosuch, attributes: [digit]}\n")
    code, _, err = run_cli(capsys, "train", str(cfg), "--out", str(tmp_path / "r"))
    assert_clean_error(code, err, "unknown method 'nosuch'", "autoencoder")


def test_unknown_attribute(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {name: digits, size: 32}\nmodel: {method: autoencoder, attributes: [smile]}\n")
    code, _, err = run_cli(capsys, "train", str(cfg), "--out", str(tmp_path / "r"))
    assert_clean_error(code, err, "unknown attribute 'smile'", "digit")


def test_unknown_config_key(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {name: digits, size: 32}\n")
    code, _, err = run_cli(capsys, "train", str(cfg), "train.stepz=3", "--out", str(tmp_path / "r"))
    assert_clean_error(code, err, "stepz")


def test_missing_config_file(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", str(tmp_path / "missing.yaml"))
    assert_clean_error(code, err, "missing.yaml")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "blobs"
    ds = blobs_dataset()
    Trainer(tiny_config(), run, dataset=ds, log=lambda m: None).fit()
    return run, ds


def test_checkpoint_of_another_method_or_junk(capsys, trained_run, tmp_path, monkeypatch):
    import shutil

    run, ds = trained_run
    monkeypatch.setattr("facefactors.runs.make_dataset", lambda spec: ds)
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    cfg = (copy / "config.yaml").read_text().replace("method: autoencoder", "method: nosuch")
    (copy / "config.yaml").write_text(cfg)
    code, _, err = run_cli(capsys, "encode", str(copy), "-o", str(tmp_path / "z.npz"))
    assert_clean_error(code, err, "unknown method 'nosuch'")
    (copy / "config.yaml").write_text((run / "config.yaml").read_text())
    ckpt = sorted((copy / "checkpoints").iterdir())[-1]
    ckpt.write_bytes(b"\x00" * 100)
    code, _, err = run_cli(capsys, "encode", str(copy), "-o", str(tmp_path / "z.npz"))
    assert_clean_error(code, err, ckpt.name, "not a facefactors checkpoint")
    assert not (tmp_path / "z.npz").exists()


def test_not_a_run_directory(capsys, tmp_path):
    code, _, err = run_cli(capsys, "evaluate", str(tmp_path))
    assert_clean_error(code, err, "not a run directory")


def test_evaluate_ema_weights_of_a_run_without_them(capsys, trained_run, monkeypatch):
    run, ds = trained_run
    monkeypatch.setattr("facefactors.runs.make_dataset", lambda spec: ds)
    code, _, err = run_cli(capsys, "evaluate", str(run), "--weights", "ema")
    assert_clean_error(code, err, "no averaged weights", "train.ema")


def test_swap_bad_images(capsys, trained_run, tmp_path, monkeypatch):
    from PIL import Image

    run, ds = trained_run
    monkeypatch.setattr("facefactors.runs.make_dataset", lambda spec: ds)
    good = tmp_path / "a.png"
    Image.fromarray(ds.images[0].permute(1, 2, 0).numpy()).save(good)
    wrong = tmp_path / "big.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(wrong)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG not really")
    out = tmp_path / "out.png"
    code, _, err = run_cli(capsys, "swap", str(run), "--source", str(good), "--donor", str(wrong),
                           "--parts", "colour", "-o", str(out))
    assert_clean_error(code, err, "big.png", "64", "32")
    code, _, err = run_cli(capsys, "swap", str(run), "--source", str(corrupt), "--donor", str(good),
                           "--parts", "colour", "-o", str(out))
    assert_clean_error(code, err, "corrupt.png")
    code, _, err = run_cli(capsys, "swap", str(run), "--source", str(tmp_path / "nope.png"), "--donor", str(good),
                           "--parts", "colour", "-o", str(out))
    assert_clean_error(code, err, "nope.png")
    code, _, err = run_cli(capsys, "swap", str(run), "--source", str(good), "--donor", str(good),
                           "--parts", "pose", "-o", str(out))
    assert_clean_error(code, err, "unknown latent part 'pose'")
    assert not out.exists()
    # and the good path works
    code, _, _ = run_cli(capsys, "swap", str(run), "--source", str(good), "--donor", str(good),
                         "--parts", "colour", "-o", str(out), "--with-inputs")
    assert code == 0 and Image.open(out).size == (96, 32)
    code, _, _ = run_cli(capsys, "interpolate", str(run), "--a", str(good), "--b", str(good), "--part", "rest",
                         "--steps", "5", "-o", str(tmp_path / "strip.png"))
    assert code == 0 and Image.open(tmp_path / "strip.png").size == (160, 32)


def test_encode_writes_parts_labels(capsys, trained_run, tmp_path, monkeypatch):
    run, ds = trained_run
    monkeypatch.setattr("facefactors.runs.make_dataset", lambda spec: ds)
    code, out, _ = run_cli(capsys, "encode", str(run), "--split", "test", "-o", str(tmp_path / "z.npz"))
    assert code == 0
    z = np.load(tmp_path / "z.npz")
    n = len(ds.split("test"))
    assert z["part/colour"].shape == (n, 4) and z["part/rest"].shape == (n, 4)
    assert (z["label/colour"] == ds.labels["colour"][ds.split("test")].numpy()).all()


def test_resume_via_cli_continues(capsys, tmp_path, monkeypatch):
    ds = blobs_dataset()
    monkeypatch.setattr("facefactors.train.trainer.make_dataset", lambda spec: ds)
    run = tmp_path / "r"
    Trainer(tiny_config(steps=3), run, dataset=ds, log=lambda m: None).fit()
    code, _, _ = run_cli(capsys, "train", "--resume", str(run), "train.steps=6")
    assert code == 0
    assert json.loads((run / "train_summary.json").read_text())["step"] == 6


def test_data_command_is_byte_identical_and_refuses_overwrite(capsys, tmp_path):
    import hashlib

    def digest(folder):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}

    for name in ("a", "b"):
        code, out, _ = run_cli(capsys, "data", "synthfaces", "--out", str(tmp_path / name), "--n", "40",
                               "--size", "32", "--seed", "7", "--n-identities", "5")
        assert code == 0 and "wrote 40 SynthFaces images" in out
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert {"images.npy", "factors.csv", "meta.json", "preview.png"} <= set(digest(tmp_path / "a"))
    before = digest(tmp_path / "a")
    code, _, err = run_cli(capsys, "data", "synthfaces", "--out", str(tmp_path / "a"), "--n", "10", "--size", "32")
    assert_clean_error(code, err, "not empty")
    assert digest(tmp_path / "a") == before


def test_missing_or_corrupt_dataset_path(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{name: synthfaces, path: {tmp_path / 'nowhere'}, size: 32}}\n")
    code, _, err = run_cli(capsys, "train", str(cfg), "--out", str(tmp_path / "r"))
    assert_clean_error(code, err, "nowhere")
    broken = tmp_path / "broken"
    run_cli(capsys, "data", "synthfaces", "--out", str(broken), "--n", "20", "--size", "32", "--n-identities", "4")
    (broken / "images.npy").write_bytes(b"garbage")
    cfg.write_text(f"data: {{name: synthfaces, path: {broken}, size: 32}}\n")
    code, _, err = run_cli(capsys, "train", str(cfg), "--out", str(tmp_path / "r2"))
    assert_clean_error(code, err, "images.npy")
    assert not (tmp_path / "r2").exists()


def test_edit_writes_edited_images_and_names_bad_values(capsys, trained_run, tmp_path, monkeypatch):
    from PIL import Image

    run, ds = trained_run
    monkeypatch.setattr("facefactors.runs.make_dataset", lambda spec: ds)
    good = tmp_path / "a.png"
    Image.fromarray(ds.images[0].permute(1, 2, 0).numpy()).save(good)
    out = tmp_path / "edited.png"
    code, _, err = run_cli(capsys, "edit", str(run), "--image", str(good), "--attribute", "place",
                           "--value", "sideways", "-o", str(out))
    assert_clean_error(code, err, "'place' has no class 'sideways'", "top, bottom")
    code, _, err = run_cli(capsys, "edit", str(run), "--image", str(good), "--attribute", "place",
                           "--value", "top", "--part", "nope", "-o", str(out))
    assert_clean_error(code, err, "unknown part 'nope'")
    assert not out.exists()
    code, outtext, _ = run_cli(capsys, "edit", str(run), "--image", str(good), str(good), "--attribute", "place",
                               "--value", "bottom", "--with-inputs", "-o", str(out))
    assert code == 0 and "edited towards place = bottom" in outtext
    assert Image.open(out).size == (64, 64)  # two rows of original | edit, 32 px each
    other = tmp_path / "one_vs_rest.png"
    code, _, _ = run_cli(capsys, "edit", str(run), "--image", str(good), "--attribute", "place", "--value", "bottom",
                         "--one-vs-rest", "--overshoot", "0", "-o", str(other))
    assert code == 0 and Image.open(other).size == (32, 32)


def test_sample_new_images_from_fitted_gaussian_or_prior(capsys, trained_run, tmp_path, monkeypatch):
    from PIL import Image

    run, ds = trained_run
    monkeypatch.setattr("facefactors.runs.make_dataset", lambda spec: ds)
    code, out, _ = run_cli(capsys, "sample", str(run), "--fitted", "--n", "2", "--samples", "3",
                           "-o", str(tmp_path / "fitted.png"))
    assert code == 0 and "Gaussian fitted to the training codes" in out
    w, h = Image.open(tmp_path / "fitted.png").size
    assert w > h > 0   # 2 rows of 3 cells
    code, again, _ = run_cli(capsys, "sample", str(run), "--fitted", "--n", "2", "--samples", "3",
                             "-o", str(tmp_path / "again.png"))
    assert (tmp_path / "again.png").read_bytes() == (tmp_path / "fitted.png").read_bytes()   # seeded
    code, _, err = run_cli(capsys, "sample", str(run), "--prior", "-o", str(tmp_path / "prior.png"))
    assert code != 0 and "no prior to sample from" in err and "--fitted" in err   # the autoencoder has none
    code, _, err = run_cli(capsys, "sample", str(run), "-o", str(tmp_path / "x.png"))
    assert code != 0 and "--part" in err

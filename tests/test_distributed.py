"""Two CPU processes under torchrun (gloo) train a few steps, checkpoint, and resume."""
import os
import subprocess
import sys


from facefactors.train.checkpoint import list_checkpoints, read_checkpoint


def test_torchrun_two_processes(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("seed: 1\ndata: {name: digits, size: 32}\n"
                   "model: {method: autoencoder, attributes: [digit], width: 8, part_dims: {digit: 4, rest: 4}}\n"
                   "train: {steps: 4, batch_size: 16, checkpoint_every: 2, preview_every: 0, progress: false,"
                   " num_threads: 1}\n")
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "facefactors", "train", str(cfg), "--out", str(run)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes" in proc.stdout
    tensors, meta = read_checkpoint(list_checkpoints(run)[-1])
    assert meta["step"] == "4"
    # one RNG state per process, saved for exact resume
    assert "rng/0" in tensors and "rng/1" in tensors
    # resume under torchrun continues to the new step count
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "facefactors", "train", "--resume", str(run), "train.steps=6"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_checkpoint(list_checkpoints(run)[-1])[1]["step"] == "6"

"""Best-checkpoint keeping: each run folder holds best.safetensors, the weights of its best held-out evaluation."""

import json

import torch
import torch.nn as nn

from vqgen.checkpoint import file_sha256
from vqgen.run import BEST_FILE, RunFolder
from vqgen.train import KeepBest, TensorBatches, TrainConfig, Trainer


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))

    def forward(self, x):
        loss = ((x - self.w) ** 2).mean()
        return loss, {"mse": loss.detach()}


def _trainer(run, steps, figures, saved):
    """A trainer whose held-out figure at each evaluation is the next of `figures` (lower is better)."""
    torch.manual_seed(0)
    toy = _Toy()
    cfg = TrainConfig(steps=steps, batch_size=4, lr=1e-2, warmup=0, eval_every=2, checkpoint_every=2, log_every=1,
                      amp=False)
    figures = iter(figures)
    return Trainer(toy, TensorBatches((torch.randn(16, 3),), 4, 0), cfg, RunFolder(run, "toy"), torch.device("cpu"),
                   evaluate=lambda: {"val_loss": next(figures)}, describe_metrics=lambda m: {"mse": m["mse"].item()},
                   keep_best=KeepBest("val_loss", False, lambda: (saved.append(toy.w.detach().clone()),
                                                                  (run / BEST_FILE).write_bytes(b"the weights"))))


def test_best_weights_are_saved_only_when_the_figure_improves(tmp_path):
    saved = []
    t = _trainer(tmp_path / "run", 8, [5.0, 3.0, 4.0, float("nan")], saved)  # evaluations at steps 2, 4, 6, 8
    out = t.fit()
    assert len(saved) == 2 and out["best_step"] == 4 and out["best_val_loss"] == 3.0
    assert out["best_weights"] == str(tmp_path / "run" / BEST_FILE)
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(e["step"], e["val_loss"]) for e in events if e.get("event") == "best"] == [(2, 5.0), (4, 3.0)]


def test_resume_remembers_the_best_so_far(tmp_path):
    saved = []
    _trainer(tmp_path / "run", 4, [5.0, 3.0], saved).fit()  # the last evaluation is in the last checkpoint
    resumed = _trainer(tmp_path / "run", 8, [4.0, 2.5], saved)  # steps 6 and 8
    out = resumed.fit(resume=True)
    assert len(saved) == 3 and out["best_step"] == 8 and out["best_val_loss"] == 2.5  # 4.0 did not beat 3.0


def test_train_vqvae_and_train_prior_keep_their_best_weights(trained_vqvae, cli, tmp_path):
    from vqgen.prior_file import load_prior
    from vqgen.vqvae import load_vqvae

    run, s = trained_vqvae["run"], trained_vqvae["summary"]
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    psnrs = [e["val_psnr"] for e in evals if e.get("event") == "eval"]
    assert s["best_val_psnr"] == max(psnrs) and (run / BEST_FILE).exists()
    load_vqvae(run / BEST_FILE)  # a VQ-VAE weights file like any other
    res = cli("reconstruct", "--vqvae", run / BEST_FILE, trained_vqvae["data"], "--out", tmp_path / "r.png", "--json")
    assert json.loads(res.stdout)["psnr"] > 0

    codes = tmp_path / "codes.safetensors"
    cli("encode", "--vqvae", run / "vqvae.safetensors", "--data", trained_vqvae["data"], "--out", codes, "--split", "all")
    prior_run = tmp_path / "prior"
    p = json.loads(cli("train-prior", "--codes", codes, "--out", prior_run, "--steps", "6", "--batch-size", "4",
                       "--eval-every", "2", "--val-fraction", "0.25", "-o", "channels=16", "-o", "layers=3",
                       "--json").stdout)
    evals = [json.loads(line) for line in (prior_run / "metrics.jsonl").read_text().splitlines()]
    bits = [e["val_bits_per_code"] for e in evals if e.get("event") == "eval"]
    assert len(bits) == 3 and p["best_val_bits_per_code"] == min(bits)
    _, meta = load_prior(prior_run / BEST_FILE)
    assert meta["vqvae_sha256"] == file_sha256(run / "vqvae.safetensors")  # pairs with the same VQ-VAE
    cli("sample", "--vqvae", run / "vqvae.safetensors", "--prior", prior_run / BEST_FILE, "--n", "4",
        "--out", tmp_path / "s.png")
    assert (tmp_path / "s.png").exists()

"""train-vqvae and train-prior under torchrun: 2 CPU processes with gloo against one process.

One torchrun launch (tests/ddp_worker.py) runs seven commands through the real CLI on both ranks and dumps
each rank's final state; a second launch (the installed `vqgen` script) is interrupted with SIGINT.
Every run: tiny models, 16x16 images, global batch 8, fp32 (--no-amp), a handful of steps.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tests.conftest import TINY_VQVAE_ARGS, make_images

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is needed")

WORKER = Path(__file__).with_name("ddp_worker.py")
TINY_PRIOR = {
    "pixelcnn": ["-o", "channels=16", "-o", "layers=3", "-o", "kernel_size=3"],
    "transformer": ["-o", "n_layer=1", "-o", "n_head=2", "-o", "n_embd=16"],
}
ATOL = 1e-5  # measured: at most ~1.2e-7 apart after 5-8 steps (different reduction order, same maths)


def _vq_args(root: Path, out: Path, steps: int) -> list[str]:
    return ["train-vqvae", "--data", root / "images", "--out", out, "--steps", steps, "--batch-size", "8",
            "--no-amp", "--channels-last", "--flip", "--log-every", "1", "--json", "--cache-dir", root / "cache",
            *TINY_VQVAE_ARGS]


def _prior_args(root: Path, prior: str, out: Path) -> list[str]:
    return ["train-prior", "--codes", root / "codes.safetensors", "--prior", prior, *TINY_PRIOR[prior], "--out", out,
            "--steps", "5", "--batch-size", "8", "--no-amp", "--log-every", "1", "--val-fraction", "0.25", "--json"]


def _torchrun(*args, **kw) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", VQGEN_QUIET="1", PYTHONPATH=str(Path(__file__).parents[1]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *map(str, args)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    """Both ranks' results of: train-vqvae 5 steps, --resume to 8, --resume to 40, train-prior x2."""
    from vqgen.codes import CodeSet, write_codes

    root = tmp_path_factory.mktemp("ddp")
    make_images(root / "images")
    g = torch.Generator().manual_seed(0)
    write_codes(root / "codes.safetensors", CodeSet(torch.randint(0, 16, (40, 4, 4), generator=g), 16,
                                                    torch.randint(0, 2, (40,), generator=g), ["a", "b"], "0" * 64, "t"))
    resume = lambda steps: ["train-vqvae", "--out", root / "vq", "--resume", "--steps", steps, "--json",
                            "--cache-dir", root / "cache"]
    # the last command leaves precision and memory format to the measurement, which all ranks then share
    auto = ["train-vqvae", "--data", root / "images", "--out", root / "auto", "--steps", "3", "--batch-size", "8",
            "--json", "--cache-dir", root / "cache", *TINY_VQVAE_ARGS]
    # the first command again, streamed from a cache rank 0 builds (5 chunks, 2 worker processes), rank 1 waiting
    streamed = [*_vq_args(root, root / "streamed", 5), "--data-on-device", "no", "--workers", "2",
                "--cache-dir", root / "cache-streamed"]
    commands = [_vq_args(root, root / "vq", 5), resume(8), resume(40),
                _prior_args(root, "pixelcnn", root / "pixelcnn"), _prior_args(root, "transformer", root / "transformer"),
                auto, streamed]
    (root / "dump").mkdir()
    spec = root / "spec.json"
    spec.write_text(json.dumps({"dump": str(root / "dump"), "commands": [[str(a) for a in c] for c in commands],
                               "chunk_images": 5}))
    p = _torchrun(WORKER, spec)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, f"torchrun failed ({p.returncode}):\n{out}\n{err}"
    return root


def _state(root: Path, i: int, rank: int) -> dict:
    from safetensors.torch import load_file

    return load_file(str(root / "dump" / f"cmd{i}_rank{rank}.safetensors"))


def _info(root: Path, i: int, rank: int) -> dict:
    return json.loads((root / "dump" / f"cmd{i}_rank{rank}.json").read_text())


def _assert_ranks_identical(root: Path, i: int) -> dict:
    a, b = _state(root, i, 0), _state(root, i, 1)
    assert a.keys() == b.keys()
    for k in a:  # parameters, EMA codebook, usage statistics: bit for bit
        assert torch.equal(a[k], b[k]), f"command {i}: {k} differs between rank 0 and rank 1"
    return a


def _max_diff(ddp_state: dict, single_file: Path, prefix: str) -> float:
    """Largest |difference| between rank 0's objective state and the weights file of a one-process run."""
    from safetensors.torch import load_file

    single = load_file(str(single_file))
    assert {prefix + k for k in single} == set(ddp_state)
    return max((ddp_state[prefix + k].double() - v.double()).abs().max().item()
               for k, v in single.items() if v.is_floating_point())


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in _records(run) if "loss" in r]

@pytest.mark.slow
def test_vqvae_two_processes_match_one_process(ddp, cli, tmp_path):
    # the same global batch of 8 in one process: 5 steps, and 8 steps straight through (ddp: 5, then --resume)
    cli(*_vq_args(ddp, tmp_path / "one5", 5))
    cli(*_vq_args(ddp, tmp_path / "one8", 8))
    for i, single in ((0, tmp_path / "one5"), (1, tmp_path / "one8")):
        state = _assert_ranks_identical(ddp, i)
        assert _max_diff(state, single / "vqvae.safetensors", "model.") < ATOL
        assert _info(ddp, i, 0)["picks"] == _info(ddp, i, 1)["picks"]
    assert _info(ddp, 0, 0)["picks"] == [16]  # the codebook was initialised from data (gathered from both ranks)
    # logged figures are the global batch's (averaged over ranks), as one process logs them
    assert _losses(ddp / "vq")[:8] == pytest.approx(_losses(tmp_path / "one8"), abs=ATOL)

@pytest.mark.slow
def test_ranks_share_one_cache_built_by_one_of_them_and_stream_from_it(ddp):
    assert [_info(ddp, 6, r)["exit_code"] for r in (0, 1)] == [0, 0]
    assert [_info(ddp, 6, r)["batches"] for r in (0, 1)] == ["StreamBatches"] * 2
    assert _info(ddp, 0, 0)["batches"] == "TensorBatches"
    assert _info(ddp, 6, 0)["decoded"] == [24] and _info(ddp, 6, 1)["decoded"] == []  # rank 1 mapped rank 0's file
    assert len(list((ddp / "cache-streamed").iterdir())) == 1  # the cache file, its chunks gone
    streamed, on_device = _assert_ranks_identical(ddp, 6), _state(ddp, 0, 0)
    assert all(torch.equal(streamed[k], on_device[k]) for k in on_device)  # the same batches: the same run
    assert _records(ddp / "streamed")[0]["data_on_device"] is False


@pytest.mark.slow
def test_measured_speed_choice_is_shared_by_every_rank(ddp):
    """Every rank measures at once (the quantiser's collectives need them all) and takes rank 0's verdict."""
    assert _info(ddp, 5, 0)["exit_code"] == 0 and _info(ddp, 5, 1)["exit_code"] == 0
    _assert_ranks_identical(ddp, 5)
    speed = _records(ddp / "auto")[0]["speed"]
    assert speed["threads"] == 1  # OMP_NUM_THREADS=1 is respected
    assert "measured now" in speed["how"] and speed["probe"]

@pytest.mark.slow
def test_ranks_stay_identical_through_dead_code_restarts(ddp):
    info = [_info(ddp, 2, r) for r in (0, 1)]
    assert info[0]["picks"] and info[0]["picks"] == info[1]["picks"]  # the same restarts on both ranks ...
    _assert_ranks_identical(ddp, 2)  # ... to the same rows

@pytest.mark.slow
def test_only_rank_0_writes_and_prints(ddp):
    run = ddp / "vq"
    assert sorted(p.name for p in run.iterdir()) == ["best.safetensors", "checkpoint.safetensors", "metrics.jsonl",
                                                     "reconstructions.png", "vqvae.safetensors"]
    recs = _records(run)
    assert recs[0]["event"] == "config" and recs[0]["world_size"] == 2
    assert [r["step"] for r in recs if "loss" in r] == list(range(1, 41))  # one record per step, not one per rank
    assert [(r["step"], r["world_size"]) for r in recs if r.get("event") == "resume"] == [(5, 2), (8, 2)]
    assert sum(r.get("event") == "eval" for r in recs) == 3
    for i in range(5):
        assert _info(ddp, i, 0)["exit_code"] == 0 and _info(ddp, i, 1)["exit_code"] == 0
        assert (ddp / "dump" / f"cmd{i}_rank1.out").read_text() == ""  # rank 1: no summary ...
        assert (ddp / "dump" / f"cmd{i}_rank1.err").read_text() == ""  # ... no progress, notes or warnings
        lines = (ddp / "dump" / f"cmd{i}_rank0.out").read_text().splitlines()
        assert len(lines) == 1 and json.loads(lines[0])["steps"] == [5, 8, 40, 5, 5][i]
    assert "resuming" in (ddp / "dump" / "cmd1_rank0.err").read_text()
    # what is on disk is rank 0's final state
    from safetensors.torch import load_file

    disk = load_file(str(run / "vqvae.safetensors"))
    state = _state(ddp, 2, 0)
    assert all(torch.equal(state["model." + k], v) for k, v in disk.items())


@pytest.mark.slow
@pytest.mark.parametrize("i,prior", [(3, "pixelcnn"), (4, "transformer")])
def test_prior_two_processes_match_one_process(ddp, cli, tmp_path, i, prior):
    cli(*_prior_args(ddp, prior, tmp_path / "one"))
    state = _assert_ranks_identical(ddp, i)
    assert _max_diff(state, tmp_path / "one" / "prior.safetensors", "prior.") < ATOL
    assert _losses(ddp / prior) == pytest.approx(_losses(tmp_path / "one"), abs=ATOL)
    recs = _records(ddp / prior)
    assert recs[0]["world_size"] == 2 and recs[0]["prior"] == prior

@pytest.mark.slow
def test_ctrl_c_under_torchrun_saves_once_and_stops_every_rank(tmp_path):
    """torchrun forwards one SIGINT to each worker; the ranks agree on a step, rank 0 saves, all exit."""
    import time

    make_images(tmp_path / "images")
    run = tmp_path / "run"
    script = Path(sys.executable).parent / "vqgen"  # the installed console script, as `torchrun $(which vqgen)`
    entry = [script] if script.exists() else ["-m", "vqgen"]
    p = _torchrun(*entry, *_vq_args(tmp_path, run, 100_000), "--checkpoint-every", "100000")
    t0 = time.monotonic()
    metrics = run / "metrics.jsonl"
    while not (metrics.exists() and metrics.read_text().count('"loss"') >= 2):
        assert p.poll() is None, p.communicate()
        assert time.monotonic() - t0 < 120, "training did not start"
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=90)
    from vqgen.checkpoint import read_header

    step = int(read_header(run / "checkpoint.safetensors")[1]["step"])
    assert step >= 2 and step == _records(run)[-1]["step"]  # saved where the ranks stopped, after the last record
    assert err.count("interrupted at step") == 1 and f"interrupted at step {step};" in err  # said once, by rank 0
    assert "--resume" in err and out == ""
    assert (run / "vqvae.safetensors").exists()


# -- no torchrun needed --------------------------------------------------------------------------------------
def test_single_process_sets_nothing_up(monkeypatch):
    from vqgen.runtime import init_distributed

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    d, dev = init_distributed("cpu")
    assert (d.rank, d.world_size, d.main) == (0, 1, True) and dev.type == "cpu"
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_distributed("cpu")[0].world_size == 1
    assert not dist.is_initialized()


def test_batches_split_the_global_batch_by_rank():
    from vqgen.runtime import Dist
    from vqgen.train import TensorBatches

    x = torch.arange(22)
    one = TensorBatches((x,), 8, seed=3)
    two = [TensorBatches((x,), 8, seed=3, dist=Dist(r, 2)) for r in (0, 1)]
    for _ in range(7):  # across epoch boundaries (22 = 2 full batches + a dropped tail)
        (a,), (b0,), (b1,) = next(one), next(two[0]), next(two[1])
        assert torch.equal(torch.cat([b0, b1]), a)
    assert two[0].state_dict() == two[1].state_dict() == one.state_dict()
    # fewer examples than the batch: still equal shares
    small = [TensorBatches((torch.arange(5),), 8, seed=0, dist=Dist(r, 2)) for r in (0, 1)]
    assert [len(next(s)[0]) for s in small] == [2, 2]


def test_summary_is_printed_by_rank_0_only(monkeypatch, capsys):
    from vqgen.cli import emit

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    emit({"a": 1.0}, as_json=True)
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("RANK", "0")
    emit({"a": 1.0}, as_json=True)
    assert json.loads(capsys.readouterr().out) == {"a": 1.0}

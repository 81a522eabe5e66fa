"""Precision, memory format and threads picked by measurement; grids and PNGs without torchvision."""

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import TINY_VQVAE_ARGS, make_images
from vqgen import runtime

CPU = torch.device("cpu")


def fake_step(costs: dict, calls: list):
    """make_step for choose_speed whose steps 'take' costs[(amp, channels_last)] seconds (no real work)."""
    clock = {"now": 0.0}

    def make(amp, cl):
        calls.append((amp, cl))

        def step():
            clock["now"] += costs[(amp, cl)]
        return step

    return make, clock


@pytest.fixture
def fake_clock(monkeypatch):
    clocks = []

    def use(clock):
        clocks.append(clock)
        monkeypatch.setattr(runtime.time, "perf_counter", lambda: clock["now"])
    return use


@pytest.mark.parametrize("bf16_cost,expect_amp", [(0.5, True), (13.0, False)])
def test_the_faster_precision_is_picked_where_bf16_may_be_native(monkeypatch, fake_clock, bf16_cost, expect_amp):
    monkeypatch.setattr(runtime, "native_bf16_cpu", lambda: True)
    monkeypatch.setattr(runtime, "usable_cores", lambda: torch.get_num_threads())
    calls = []
    make, clock = fake_step({(False, True): 1.0, (False, False): 1.1, (True, True): bf16_cost,
                             (True, False): bf16_cost * 1.1}, calls)
    fake_clock(clock)
    s = runtime.choose_speed(CPU, "w", make)
    assert (s.amp, s.channels_last) == (expect_amp, True)
    assert "measured now" in s.how and len(s.probe) == 4
    # measured once per machine and workload: the next run reads the verdict
    calls.clear()
    again = runtime.choose_speed(CPU, "w", make)
    assert (again.amp, again.channels_last) == (s.amp, s.channels_last) and calls == []
    assert "measured earlier" in again.how
    runtime.choose_speed(CPU, "another network", make)
    assert calls  # a different workload is measured afresh


def test_no_native_bf16_means_fp32_without_timing_bf16(monkeypatch, fake_clock):
    monkeypatch.setattr(runtime, "native_bf16_cpu", lambda: False)
    monkeypatch.setattr(runtime, "usable_cores", lambda: torch.get_num_threads())
    calls = []
    make, clock = fake_step({(False, True): 1.0, (False, False): 0.9}, calls)
    fake_clock(clock)
    s = runtime.choose_speed(CPU, "w", make)
    assert not s.amp and not s.channels_last and "no native bf16" in s.how
    assert all(amp is False for amp, _ in calls)


def test_a_candidate_far_slower_than_the_best_is_not_finished(monkeypatch, fake_clock):
    monkeypatch.setattr(runtime, "native_bf16_cpu", lambda: True)
    monkeypatch.setattr(runtime, "usable_cores", lambda: torch.get_num_threads())
    make, clock = fake_step({(False, True): 1.0, (False, False): 1.0, (True, True): 20.0, (True, False): 20.0}, [])
    fake_clock(clock)
    s = runtime.choose_speed(CPU, "w", make)
    assert not s.amp and s.probe["bf16 channels_last %d threads" % s.threads] == float("inf")


def test_given_settings_are_kept_and_nothing_is_measured(monkeypatch):
    monkeypatch.setattr(runtime, "native_bf16_cpu", lambda: True)
    make = lambda amp, cl: pytest.fail("nothing should be measured")
    s = runtime.choose_speed(CPU, "w", make, amp=True, channels_last=False, threads=1)
    assert (s.amp, s.channels_last, s.threads) == (True, False, 1) and torch.get_num_threads() == 1
    s = runtime.choose_speed(CPU, "w", make, amp=False, memory_format_matters=False, threads=2)
    assert (s.amp, s.channels_last, s.threads) == (False, False, 2)


def test_omp_num_threads_is_respected(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    monkeypatch.setattr(runtime, "usable_cores", lambda: 2)
    s = runtime.choose_speed(CPU, "w", None, amp=False, channels_last=True)
    assert s.threads == 1


def test_capability_rules(monkeypatch):
    monkeypatch.setattr(runtime.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert runtime.native_bf16_cpu() is False  # AVX2: bf16 is emulated
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: {"avx512f", "avx512bw"})
    assert runtime.native_bf16_cpu() is False  # AVX-512 without its bf16 extension
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: {"avx512f", "amx_bf16"})
    assert runtime.native_bf16_cpu() is True
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert runtime.native_bf16_cpu() is None  # capped: only a measurement can tell
    assert runtime.inference_amp(CPU, None) is False and runtime.inference_amp(CPU, True) is True


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_vqvae_prints_and_records_its_choice_and_resume_keeps_it(cli, tmp_path, monkeypatch):
    data = make_images(tmp_path / "images")
    run = tmp_path / "run"
    res = cli("train-vqvae", "--data", data, "--out", run, "--steps", "4", "--batch-size", "8", *TINY_VQVAE_ARGS)
    assert res.stderr.count("computing in ") == 1
    speed = _records(run)[0]["speed"]
    assert {"amp", "channels_last", "threads", "how"} <= set(speed)
    assert _records(run)[0]["train"]["amp"] == speed["amp"]  # the run's config holds the resolved precision
    # a resumed run keeps the run's settings even where a new measurement would pick others
    (tmp_path / "_cache" / "speed.json").unlink(missing_ok=True)
    monkeypatch.setattr(runtime, "_measure", lambda *a, **k: pytest.fail("a resumed run measures nothing"))
    cli("train-vqvae", "--out", run, "--resume", "--steps", "6")
    resumed = [r for r in _records(run) if r.get("event") == "resume"][0]["speed"]
    assert (resumed["amp"], resumed["channels_last"], resumed["threads"]) == \
        (speed["amp"], speed["channels_last"], speed["threads"])


def test_forcing_precision_overrides_auto(cli, tmp_path):
    data = make_images(tmp_path / "images")
    for flag, amp in (("--amp", True), ("--no-amp", False)):
        run = tmp_path / flag
        cli("train-vqvae", "--data", data, "--out", run, "--steps", "2", "--batch-size", "8", flag, *TINY_VQVAE_ARGS)
        rec = _records(run)[0]
        assert rec["speed"]["amp"] is amp and rec["train"]["amp"] is amp and "precision given" in rec["speed"]["how"]

@pytest.mark.slow
def test_quick_commands_never_import_torchvision_or_the_compiler(trained_vqvae, tmp_path, cli):
    """sample, reconstruct, encode, evaluate and priors start without torchvision (~4 s) and without torch._dynamo
    and sympy (~1-2 s, which ops on the meta device pull in while a model's size is checked): one process runs all
    five, as the installed CLI would one by one, and reports what each added."""
    codes = tmp_path / "c.safetensors"
    vq = trained_vqvae["run"] / "vqvae.safetensors"
    cli("encode", "--vqvae", vq, "--data", trained_vqvae["data"], "--split", "all", "--out", codes)
    cli("train-prior", "--codes", codes, "--out", tmp_path / "p", "--steps", "2", "--batch-size", "8",
        "-o", "channels=8", "-o", "layers=3")
    commands = [["sample", "--prior", tmp_path / "p" / "prior.safetensors", "--vqvae", vq, "--n", "4",
                 "--out", tmp_path / "s.png"],
                ["reconstruct", "--vqvae", vq, trained_vqvae["data"], "--out", tmp_path / "r.png"],
                ["encode", "--vqvae", vq, "--data", trained_vqvae["data"], "--out", tmp_path / "e.safetensors"],
                ["evaluate", "--vqvae", vq, "--data", trained_vqvae["data"]],
                ["priors"]]
    script = ("import json, sys\nfrom vqgen.cli import app\nheavy = ('torchvision', 'sympy', 'torch._dynamo')\n"
              "for args in json.loads(sys.argv[1]):\n"
              "    try:\n        app(args)\n    except SystemExit as e:\n        assert not e.code, (args[0], e.code)\n"
              "    bad = sorted(m for m in sys.modules if m in heavy or m.startswith('torchvision.'))\n"
              "    print(json.dumps([args[0], bad]))\n")
    out = subprocess.run([sys.executable, "-c", script, json.dumps([[str(a) for a in c] for c in commands])],
                         capture_output=True, text=True, env={**__import__("os").environ, "VQGEN_QUIET": "1"})
    assert out.returncode == 0, out.stderr
    reports = [json.loads(line) for line in out.stdout.splitlines() if line.startswith('["')]
    assert reports == [[c[0], []] for c in commands]


@pytest.mark.parametrize("n,nrow", [(5, 2), (64, 8), (7, 3), (3, 10), (80, 8)])
def test_make_grid_has_torchvision_layout(n, nrow):
    from torchvision.utils import make_grid as tv_grid

    from vqgen.images import make_grid

    x = torch.randint(0, 256, (n, 3, 6, 5), dtype=torch.uint8)
    assert torch.equal(make_grid(x, nrow), tv_grid(x, nrow=nrow, padding=2, pad_value=255))
    one = make_grid(x[:1], nrow)  # a single image keeps its border (torchvision returns it bare)
    assert one.shape == (3, 10, 9) and torch.equal(one[:, 2:8, 2:7], x[0])

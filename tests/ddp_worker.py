"""Test helper, run under torchrun by tests/test_distributed.py (never collected by pytest itself).

    python -m torch.distributed.run --nproc_per_node=2 tests/ddp_worker.py SPEC.json

SPEC.json: {"dump": folder, "commands": [[vqgen CLI arguments...], ...]}. Every rank runs the commands in
order through the real CLI (the process group is set up by the first and reused by the next) and, for
command i, writes into `dump`:
  cmd{i}_rank{r}.safetensors  the objective's state (parameters and buffers) on this rank after training
  cmd{i}_rank{r}.out / .err   what the command printed on stdout / stderr on this rank
  cmd{i}_rank{r}.json         {"exit_code": ..., "picks": [rows drawn by each codebook init / restart]}
State and picks are taken by wrapping Trainer.fit and VectorQuantizer._pick_rows here, so the library needs
no debugging hook for them.
"""

import contextlib
import io
import json
import os
import sys
from pathlib import Path


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    dump = Path(spec["dump"])
    rank = int(os.environ["RANK"])

    import torch
    from safetensors.torch import save_file

    from vqgen import quantizer, train
    from vqgen.cli import app

    original_fit = train.Trainer.fit
    current = {"i": 0}

    def fit_and_dump(self, *args, **kwargs):
        result = original_fit(self, *args, **kwargs)
        state = {k: v.detach().cpu().contiguous() for k, v in self.objective.state_dict().items()}
        save_file(state, str(dump / f"cmd{current['i']}_rank{rank}.safetensors"))
        return result

    original_pick = quantizer.VectorQuantizer._pick_rows
    picks: list[int] = []

    def pick_and_count(self, flat, n):
        picks.append(n)
        return original_pick(self, flat, n)

    train.Trainer.fit = fit_and_dump
    quantizer.VectorQuantizer._pick_rows = pick_and_count
    torch.set_num_threads(1)
    for i, args in enumerate(spec["commands"]):
        current["i"] = i
        picks.clear()
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = app([str(a) for a in args], standalone_mode=False)
            except SystemExit as e:
                code = e.code
        stem = dump / f"cmd{i}_rank{rank}"
        stem.with_suffix(".out").write_text(out.getvalue())
        stem.with_suffix(".err").write_text(err.getvalue())
        stem.with_suffix(".json").write_text(json.dumps({"exit_code": code or 0, "picks": picks}))
        if code:
            sys.exit(code)


if __name__ == "__main__":
    main()

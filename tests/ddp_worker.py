"""Test helper, run under torchrun by tests/test_distributed.py (never collected by pytest itself).

    python -m torch.distributed.run --nproc_per_node=2 tests/ddp_worker.py SPEC.json

SPEC.json: {"dump": folder, "commands": [[vqgen CLI arguments...], ...], "chunk_images": files per decoded chunk}. Every rank runs the commands in
order through the real CLI (the process group is set up by the first and reused by the next) and, for
command i, writes into `dump`:
  cmd{i}_rank{r}.safetensors  the objective's state (parameters and buffers) on this rank after training
  cmd{i}_rank{r}.out / .err   what the command printed on stdout / stderr on this rank
  cmd{i}_rank{r}.json         {"exit_code": ..., "picks": [rows drawn by each codebook init / restart],
                               "decoded": [files decoded by each decoding of a folder on this rank],
                               "batches": the class of the batch source trained from}
State, picks and the rest are taken by wrapping Trainer.fit, VectorQuantizer._pick_rows and
data._decode_folder here, so the library needs no debugging hook for them.
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

    from vqgen import data, quantizer, train
    from vqgen.cli import app

    original_fit = train.Trainer.fit
    current = {"i": 0}
    batches: list[str] = []

    def fit_and_dump(self, *args, **kwargs):
        batches.append(type(self.batches).__name__)
        result = original_fit(self, *args, **kwargs)
        state = {k: v.detach().cpu().contiguous() for k, v in self.objective.state_dict().items()}
        save_file(state, str(dump / f"cmd{current['i']}_rank{rank}.safetensors"))
        return result

    original_pick = quantizer.VectorQuantizer._pick_rows
    picks: list[int] = []

    def pick_and_count(self, flat, n):
        picks.append(n)
        return original_pick(self, flat, n)

    original_decode = data._decode_folder
    decoded: list[int] = []

    def decode_and_count(root, rels, *args, **kwargs):
        decoded.append(len(rels))
        return original_decode(root, rels, *args, **kwargs)

    train.Trainer.fit = fit_and_dump
    quantizer.VectorQuantizer._pick_rows = pick_and_count
    data._decode_folder = decode_and_count
    data.CHUNK_IMAGES = spec.get("chunk_images", data.CHUNK_IMAGES)  # small: several chunks, decoded in parallel
    torch.set_num_threads(1)
    for i, args in enumerate(spec["commands"]):
        current["i"] = i
        picks.clear()
        decoded.clear()
        batches.clear()
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = app([str(a) for a in args], standalone_mode=False)
            except SystemExit as e:
                code = e.code
        stem = dump / f"cmd{i}_rank{rank}"
        stem.with_suffix(".out").write_text(out.getvalue())
        stem.with_suffix(".err").write_text(err.getvalue())
        stem.with_suffix(".json").write_text(json.dumps({"exit_code": code or 0, "picks": picks, "decoded": decoded,
                                                          "batches": batches[0] if batches else None}))
        if code:
            sys.exit(code)


if __name__ == "__main__":
    main()

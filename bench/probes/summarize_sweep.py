"""Held-out bits per code of each prior-sweep run at fixed wall-clock times, as a Markdown table."""
import json
import sys
from pathlib import Path

from priors import get_prior

root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/prior-sweep")
marks = [60, 120, 180, 240, 300, 360]
print("| run | params | steps | " + " | ".join(f"{m} s" for m in marks) + " |")
print("|---|---|---|" + "---|" * len(marks))
for run in sorted(p for p in root.iterdir() if (p / "metrics.jsonl").exists()):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    elapsed = {r["step"]: r["elapsed_s"] for r in rows if "elapsed_s" in r and "step" in r}
    evals = [(elapsed.get(r["step"]), r["val_bits_per_code"]) for r in rows if r.get("event") == "eval"]
    evals = [(t, b) for t, b in evals if t is not None]
    cfg = next(r for r in rows if r.get("event") == "config")
    prior_cls = get_prior(cfg["prior"])
    model = prior_cls(prior_cls.config_class(**cfg["prior_config"]))
    params = f"{sum(t.numel() for t in model.parameters()) / 1e6:.2f}M"
    cells = []
    for m in marks:
        seen = [b for t, b in evals if t <= m]
        cells.append(f"{seen[-1]:.3f}" if seen else "-")
    last_step = max((r["step"] for r in rows if "step" in r), default=0)
    print(f"| {run.name} | {params} | {last_step} | " + " | ".join(cells) + " |")

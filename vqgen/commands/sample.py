"""sample: draw images from a prior and its VQ-VAE and write them as a PNG grid or one PNG per sample."""

from __future__ import annotations

from pathlib import Path

from vqgen import log
from vqgen.codes import CodeSet, write_codes
from vqgen.errors import ConfigError, check_positive
from vqgen.images import make_grid, save_png
from vqgen.paths import check_outputs, out_file, out_folder, user_path
from vqgen.sampling import check_count, draw_samples
from vqgen.vqvae import read_vqvae_config
from vqgen.weights import shipped


def sample(
    n: int,
    out: str | Path,
    *,
    nrow: int = 8,
    save_codes: str | None = None,
    class_: str | None = None,
    **draw_options,
) -> dict:
    """Draw n samples and write a grid PNG (out ending in .png) or a folder of PNGs; optionally the grids."""
    check_positive("nrow", nrow)
    check_positive("n", n)
    draw_options = {**draw_options, "prior": draw_options.get("prior") or shipped("prior"),
                    "vqvae": draw_options.get("vqvae") or shipped("vqvae")}
    check_count(n, read_vqvae_config(draw_options["vqvae"]).image_size)  # before n names are made
    out = user_path(out)
    as_grid = out.suffix.lower() == ".png"
    width = len(str(n - 1))
    files = [] if as_grid else [f"sample_{i:0{width}d}.png" for i in range(n)]
    outputs = [out_file("out", out) if as_grid else out_folder("out", out, files)]
    if save_codes:
        outputs.append(out_file("save_codes", save_codes))
    inputs = {"prior": draw_options["prior"], "vqvae": draw_options["vqvae"]}
    if draw_options.get("weak_prior"):
        inputs["weak_prior"] = draw_options["weak_prior"]
    check_outputs(inputs, outputs)
    s = draw_samples(n, class_name=class_, class_run=nrow, **draw_options)
    num_classes = len(s.class_names)
    names = s.class_names or [str(i) for i in range(num_classes)]
    drawn = [] if s.labels is None or draw_options.get("unconditional") else \
        [names[c] for c in dict.fromkeys(s.labels.tolist())]  # in grid order
    if as_grid:
        save_png(make_grid(s.images, nrow=nrow), out)
    else:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create folder {out}: {e.strerror or e}") from None
        for name, img in zip(files, s.images):
            save_png(img, out / name)
    if class_ is None and 0 < len(drawn) < num_classes:  # said once the images are written, not before an error
        log.note(f"one class per row: the grid shows {len(drawn)} of {num_classes} classes ({', '.join(drawn)}); "
                 f"--n {nrow * num_classes} shows all of them, --class NAME picks one")
    if save_codes:
        labels = s.labels if s.labels is not None and not draw_options.get("unconditional") else None
        write_codes(save_codes, CodeSet(s.codes, s.num_codes, labels,
                                        s.class_names if labels is not None else [], s.vqvae_sha256,
                                        f"sample:{s.prior_path}"))
    return {"samples": n, "out": str(out), "seconds": s.seconds, "prior": s.prior_name,
            "seed": draw_options.get("seed", 0), "guidance": s.guidance, "guidance_schedule": s.guidance_schedule,
            "temperature": s.temperature, "autoguidance": s.autoguidance,
            "weak_prior": s.weak_prior_path or None, "classes": drawn}

"""Decoding throughput of a folder into a fresh image cache, 1 worker against 2 (twice each, alternating).

    python bench/bench_decode_workers.py FOLDER      # e.g. bench_stream.py's synthetic folder
"""
import shutil, sys, time, tempfile
from vqgen.data import load_images
folder = sys.argv[1]
for workers in (1, 2, 1, 2):
    cache = tempfile.mkdtemp(prefix="dec-cache-")
    t0 = time.perf_counter()
    s = load_images(folder, 64, cache_dir=cache, workers=workers)
    dt = time.perf_counter() - t0
    n = len(s.images)
    print(f"workers {workers}: {n} images in {dt:.1f} s = {n / dt:.0f} images/s", flush=True)
    shutil.rmtree(cache)

"""Scale: time and peak memory of build_dataset, near-duplicate grouping and `hf-model predict` as a folder grows.

Synthesizes folders of N small random JPEGs in 500 class folders (5,000 and 50,000 photos by default; one photo
in 50 is a re-encoded copy of the one before, a near-duplicate to group) under ``--work_dir`` and reuses a folder
already made. Each step then runs in a fresh process, so that its peak RSS is its own:

- ``build_dataset``: :func:`hf_model.data.build_dataset` on the folder (every photo decoded and hashed, grouped,
  split);
- ``near-duplicates``: :func:`hf_model.data.near_duplicate_groups` alone, on the folder's hashes (made once and
  kept in the work dir), next to the all-pairs search it replaced (``--no_all_pairs`` leaves that out);
- ``hf-model predict``: the command line, ``hf-model predict MODEL FOLDER --output predictions.csv``.

Prediction uses a tiny random-init ConvNeXt made here (224-pixel input, so decoding and preprocessing cost what
they cost for a real model, and the network almost nothing): a real model on 2 CPU cores would spend most of an
hour on 50,000 photos. ``--model`` gives a real model folder instead. Peak RSS of ``hf-model predict`` is that of
the command's process (``getrusage(RUSAGE_CHILDREN)``, which reports the largest process, not their sum).

    HF_HUB_OFFLINE=1 python benchmarks/bench_scale.py          # 5,000 and 50,000 photos: 2 cores, about 9 min
                                                               # (some 15 min more the first time, making the photos)
    HF_HUB_OFFLINE=1 python benchmarks/bench_scale.py --quick  # 2,000 and 5,000 photos (a few minutes)
    HF_HUB_OFFLINE=1 python benchmarks/bench_scale.py --sizes 5000 --model runs/bedrooms

Prints a table of seconds and peak RSS per step and size, and how each grows from the smallest size to the
largest, then ``name: value`` lines a script can read (``near-duplicate grouping of N photos s``, ...).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = 500
PHOTO_SIZE = (96, 72)  # small photos: the benchmark is about counts, not pixels
COPY_EVERY = 50  # one photo in COPY_EVERY is a near-duplicate of the photo before it
DEFAULT_SIZES = (5000, 50000)
QUICK_SIZES = (2000, 5000)  # at least 3 photos a class: train, validation, test
ALL_PAIRS = "near-duplicates, all pairs (before)"  # the step timing the search near_duplicate_groups replaced
HF_MODEL_CLI = Path(sys.executable).with_name("hf-model")  # the console script of this environment


# ---- the photos ----

def photo_folder(work_dir: Path, n: int) -> Path:
    """``work_dir/photos_N``: N photos in CLASSES class folders, made once (a folder already complete is reused)."""
    root = work_dir / f"photos_{n}"
    done = work_dir / f"photos_{n}.done"  # beside the folder: written last, so a half-made folder is made again
    if not done.exists():
        chunks = np.array_split(np.arange(n), max(1, n // 1000))
        with ProcessPoolExecutor(os.cpu_count()) as pool:
            list(pool.map(write_photos, [root] * len(chunks), chunks))
        done.write_text(f"{n}\n")
    return root


def write_photos(root: Path, ids: np.ndarray) -> None:
    """Photos ``ids``: photo i is a random 6x8 colour grid smoothed up to PHOTO_SIZE, in class folder i % CLASSES
    (a copy in its original's folder)."""
    for i in ids:
        original = i - 1 if i % COPY_EVERY == COPY_EVERY - 1 else i  # a copy re-draws the photo before it
        grid = np.random.default_rng(original).integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        photo = Image.fromarray(grid).resize(PHOTO_SIZE, Image.Resampling.BILINEAR)
        path = root / f"class_{original % CLASSES:03d}" / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        photo.save(path, quality=75 if original == i else 60)  # the copy differs in its JPEG encoding


def tiny_model(work_dir: Path) -> Path:
    """A random-init ConvNeXt of two small stages with a 224-pixel image processor, saved once in ``work_dir``."""
    import torch
    from transformers import ConvNextConfig, ConvNextForImageClassification, ConvNextImageProcessor

    out = work_dir / "tiny_convnext"
    if not (out / "model.safetensors").exists():
        torch.manual_seed(0)
        config = ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=CLASSES)
        ConvNextForImageClassification(config).save_pretrained(out)
        ConvNextImageProcessor(size={"shortest_edge": 224}, crop_pct=0.875).save_pretrained(out)
    return out


# ---- the steps, each in a fresh process ----

def measured(step: Callable[..., dict], *args) -> dict:
    """``step(*args)`` run in a fresh process: what it returns, with its peak RSS in MB (``peak_mb``)."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(step, *args).result()


def peak_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # kilobytes on Linux


def build_step(folder: Path) -> dict:
    from hf_model.data import build_dataset

    started = time.perf_counter()
    data = build_dataset(str(folder))
    return {"seconds": time.perf_counter() - started, "peak_mb": peak_mb(),
            "photos": sum(len(split) for split in data.values())}


def hash_step(folder: Path, out: Path) -> dict:
    """Hash every photo of ``folder`` once into ``out`` (.npy), for the grouping steps."""
    from hf_model.data import scan_images
    from hf_model.images import list_images

    hashes, _ = scan_images([str(path) for path in list_images(folder)])
    np.save(out, hashes)
    return {}


def imports_step() -> dict:
    """The floor under every Python step's peak: a process that has imported hf_model.data and scipy."""
    import scipy.sparse.csgraph  # noqa: F401

    import hf_model.data  # noqa: F401

    return {"seconds": 0.0, "peak_mb": peak_mb()}


def group_step(hashes_file: Path) -> dict:
    import scipy.sparse.csgraph  # noqa: F401  (imported before the clock starts, as the all-pairs step does)

    from hf_model.data import near_duplicate_groups

    hashes = np.load(hashes_file)
    started = time.perf_counter()
    groups = near_duplicate_groups(hashes)
    return {"seconds": time.perf_counter() - started, "peak_mb": peak_mb(), "groups": int(groups.max()) + 1}


def all_pairs_step(hashes_file: Path) -> dict:
    """The all-pairs search near_duplicate_groups used before multi-index hashing (timed for comparison); its code
    is the reference tests/test_data.py keeps."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_data import groups_by_comparing_every_pair

    from hf_model.data import NEAR_DUPLICATE_BITS

    hashes = np.load(hashes_file)
    started = time.perf_counter()
    groups = groups_by_comparing_every_pair(hashes, NEAR_DUPLICATE_BITS)
    return {"seconds": time.perf_counter() - started, "peak_mb": peak_mb(), "groups": int(groups.max()) + 1}


def predict_step(model: Path, folder: Path, output: Path) -> dict:
    started = time.perf_counter()
    subprocess.run([str(HF_MODEL_CLI), "predict", str(model), str(folder), "--output", str(output)], check=True,
                   stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    with output.open() as f:
        rows = sum(1 for _ in csv.DictReader(f))
    return {"seconds": seconds, "peak_mb": peak_mb(resource.RUSAGE_CHILDREN), "photos": rows,
            "photos_per_s": rows / seconds}


def run_size(n: int, work_dir: Path, model: Path, all_pairs: bool) -> dict[str, dict]:
    """Every step on the folder of ``n`` photos: ``{step name: {"seconds", "peak_mb", ...}}``."""
    folder = photo_folder(work_dir, n)
    hashes_file = work_dir / f"hashes_{n}.npy"
    if not hashes_file.exists():
        measured(hash_step, folder, hashes_file)
    results = {"build_dataset": measured(build_step, folder),
               "near-duplicates": measured(group_step, hashes_file)}
    if all_pairs:
        results[ALL_PAIRS] = measured(all_pairs_step, hashes_file)
    results["hf-model predict"] = measured(predict_step, model, folder, work_dir / f"predictions_{n}.csv")
    for name, row in results.items():
        print(f"  {n:>7,} photos  {name:<36} {row['seconds']:8.1f} s  {row['peak_mb']:7.0f} MB", flush=True)
    return results


# ---- the report ----

def print_table(by_size: dict[int, dict[str, dict]]) -> None:
    """Seconds and peak MB per step and size, and the growth from the smallest size to the largest."""
    sizes = sorted(by_size)
    small, large = sizes[0], sizes[-1]
    print(f"\n{'step':<38}" + "".join(f"{f'{n:,} photos':>22}" for n in sizes)
          + f"{f'growth {large // small}x photos':>26}")
    print(f"{'':<38}" + f"{'s':>12}{'peak MB':>10}" * len(sizes) + f"{'time':>14}{'memory':>12}")
    for step in by_size[small]:
        cells = "".join(f"{by_size[n][step]['seconds']:12.1f}{by_size[n][step]['peak_mb']:10.0f}" for n in sizes)
        time_ratio = by_size[large][step]["seconds"] / by_size[small][step]["seconds"]
        memory_ratio = by_size[large][step]["peak_mb"] / by_size[small][step]["peak_mb"]
        print(f"{step:<38}{cells}{time_ratio:13.1f}x{memory_ratio:11.2f}x")


def print_summary(by_size: dict[int, dict[str, dict]]) -> None:
    for n, steps in sorted(by_size.items()):
        print(f"build_dataset of {n} photos s: {steps['build_dataset']['seconds']:.1f}")
        print(f"near-duplicate grouping of {n} photos s: {steps['near-duplicates']['seconds']:.2f}")
        if ALL_PAIRS in steps:
            speedup = steps[ALL_PAIRS]["seconds"] / steps["near-duplicates"]["seconds"]
            print(f"near-duplicate grouping speedup vs all pairs at {n} photos: {speedup:.1f}x")
        print(f"predict of {n} photos img/s: {steps['hf-model predict']['photos_per_s']:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", help=f"photo counts (default {DEFAULT_SIZES})")
    parser.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES}")
    parser.add_argument("--work_dir", type=Path, default=Path(tempfile.gettempdir()) / "hf_model_bench_scale",
                        help="where the photo folders are made and kept for the next run")
    parser.add_argument("--model", type=Path, help="a real model folder for predict; default: a tiny random one")
    parser.add_argument("--no_all_pairs", action="store_true", help="leave out timing the all-pairs search")
    parser.add_argument("--output", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    sizes = args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    model = args.model or tiny_model(args.work_dir)
    print(f"photos in {args.work_dir}; predict with "
          + (str(model) if args.model else "a tiny random-init ConvNeXt (224 px input: decoding and preprocessing "
             "as for a real model, almost no network; a real model takes about an hour for 50,000 photos on "
             "2 cores)"), flush=True)
    floor = measured(imports_step)["peak_mb"]
    print(f"a process that imports hf_model.data peaks at {floor:.0f} MB: the floor of the Python steps' peaks",
          flush=True)
    by_size = {n: run_size(n, args.work_dir, model, not args.no_all_pairs) for n in sizes}
    print_table(by_size)
    print()
    print_summary(by_size)
    if args.output:
        args.output.write_text(json.dumps({str(n): steps for n, steps in by_size.items()}, indent=2))


if __name__ == "__main__":
    main()

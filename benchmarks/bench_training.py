"""Training speed on the bedroom preset: seconds per epoch three ways, data loading on its own, peak memory.

On the real bedrooms (``--data_dir``, default ``../shared/data/bedrooms``) with the bedroom preset's backbone,
input size, batch and augmentation, each in a fresh process (so that its peak RSS is its own):

- **full fine-tuning**: plain ``Trainer``, every block and the head training (``--unfreeze_top_blocks -1
  --stages 1``; BatchNorm statistics stay frozen, as the preset keeps them);
- **frozen backbone**: ``Trainer`` on the photos with the backbone frozen, the head alone training (stage 1 with
  ``--no_feature_cache --head sgd``): each epoch still decodes, augments and runs every photo through the backbone;
- **cached-feature head**: the backbone's pooled features extracted once (timed apart, from an empty cache), then
  the ``sgd`` head trained on them; and the preset's own logistic head fitted on the same features.

Seconds per epoch are the mean step time after the first step (warm-up), times the steps of an epoch; a step's
time includes loading its batch, in the training process as on a CPU run. Data loading on its own: img/s of the
train split through the preset's train transform (decode + augment) in a ``DataLoader``, in-process and with
worker processes, and with the photos resized once up front (decoded once, shrunk so that RandomResizedCrop's
smallest crop still spans the model's input, kept as JPEG bytes). Serving: ``serving.Classifier`` answering
photos one at a time (``--model``; default: the preset model fitted here, without a calibration, so without the
out-of-domain gate).

    HF_HUB_OFFLINE=1 python benchmarks/bench_training.py           # one epoch each (about 4 min on 2 cores)
    HF_HUB_OFFLINE=1 python benchmarks/bench_training.py --quick   # a few steps each (about 2.5 min)

Ends with ``name: value`` lines a script can read (``full fine-tuning s/epoch``, ``loader in-process img/s``,
``training peak MB``, ``serving peak MB``, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import resource
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "bedrooms"
PRESIZED_QUALITY = 95  # JPEG quality of the photos resized up front
SMALLEST_CROP_RATIO = 3 / 4  # RandomResizedCrop's default aspect range is (3/4, 4/3)
TRAINING = ("full fine-tuning", "frozen backbone", "cached-feature head")
IN_PROCESS = "in-process"


# ---- helpers shared by the steps (each runs in a fresh process, which imports only what its step needs) ----

def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def measured(step, *args) -> dict:
    """``step(*args)`` run in a fresh process (its peak RSS its own): what it returns."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(step, *args).result()


def preset(data_dir: str, output_dir: str, *flags: str):
    """The bedroom preset's (TrainConfig, TrainingArguments), with ``flags`` on top; no evaluation, no checkpoints."""
    from hf_model.config import parse_args

    return parse_args(["--preset", "bedrooms", "--data_dir", data_dir, "--output_dir", output_dir,
                       "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
                       "--logging_strategy", "no", "--disable_tqdm", "true", *flags])


def step_timer():
    """A ``TrainerCallback`` that keeps the wall-clock seconds of every optimizer step (loading its batch included)."""
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []
            self.last = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            self.seconds.append(now - self.last)
            self.last = now

    return StepTimes()


def per_epoch(step_seconds: list[float], steps_per_epoch: int, photos: int) -> dict:
    """Seconds per epoch of ``photos`` and img/s from step times, the first (warm-up) step left out when there are
    others."""
    steady = step_seconds[1:] or step_seconds
    seconds = statistics.fmean(steady) * steps_per_epoch
    return {"seconds_per_epoch": seconds, "images_per_s": photos / seconds, "steps_timed": len(steady)}


# ---- the steps ----

def trainer_epoch_step(data, data_dir: str, blocks: int, max_steps: int) -> dict:
    """Seconds per epoch of ``Trainer`` on the photos, ``blocks`` blocks training (-1 all, 0 the head alone)."""
    from hf_model.training import blocks_trainer, cross_entropy_loss, setup_model

    with tempfile.TemporaryDirectory() as out:
        cfg, args = preset(data_dir, out, "--unfreeze_top_blocks", str(blocks), "--stages", "1",
                           *(["--max_steps", str(max_steps)] if max_steps else ["--num_train_epochs", "1"]))
        setup = setup_model(cfg, data["train"].features["label"].names)
        trainer = blocks_trainer(cfg, args, setup, data["train"], None, cross_entropy_loss(None))
        timer = step_timer()
        trainer.add_callback(timer)
        trainer.train()
    steps_per_epoch = math.ceil(len(data["train"]) / args.per_device_train_batch_size)
    return {**per_epoch(timer.seconds, steps_per_epoch, len(data["train"])), "peak_mb": peak_mb()}


def cached_head_step(data, data_dir: str, head_epochs: int, model_out: str) -> dict:
    """Feature extraction from an empty cache, then the sgd head's seconds per epoch and the logistic head's fit.

    The fitted preset model (logistic head) is saved to ``model_out`` for the serving step.
    """
    from hf_model.adapters import adapter_for
    from hf_model.training import cached_features, cross_entropy_loss, fit_closed_form_head, setup_model, train_head

    with tempfile.TemporaryDirectory() as out, tempfile.TemporaryDirectory() as cache:
        cfg, args = preset(data_dir, out, "--head", "sgd", "--head_epochs", str(head_epochs))
        setup = setup_model(cfg, data["train"].features["label"].names)  # the backbone converted to the user cache
        cfg = dataclasses.replace(cfg, cache_dir=cache)  # features from an empty cache
        started = time.perf_counter()
        cached_features(cfg, args, setup, data["train"], cfg.feature_views)
        extraction = time.perf_counter() - started
        timer = step_timer()
        train_head(cfg, args, setup, data["train"], None, cross_entropy_loss(None), timer)
        sgd = per_epoch(timer.seconds, len(timer.seconds) // head_epochs, len(data["train"]))
        classifier = adapter_for(setup.model).classifier(setup.model)
        started = time.perf_counter()
        fit_closed_form_head(dataclasses.replace(cfg, head="logistic"), args, setup, data["train"], None, classifier,
                             fit_validation=False, fixed=None)
        logistic = time.perf_counter() - started
    setup.model.save_pretrained(model_out)
    if adapter_for(setup.model).saves_processor:
        setup.processor.save_pretrained(model_out)
    return {**sgd, "extraction_s": extraction, "logistic_fit_s": logistic, "peak_mb": peak_mb()}


def loading_step(data, data_dir: str, workers: int, presize: bool, photos: int | None) -> dict:
    """img/s of the first ``photos`` train photos (None: all) through the preset's train transform in a DataLoader,
    the second pass timed."""
    from torch.utils.data import DataLoader

    from hf_model.backbones import default_image_size
    from hf_model.training import setup_model
    from hf_model.transforms import batch_transform, collate

    with tempfile.TemporaryDirectory() as out:
        cfg, args = preset(data_dir, out)
    setup = setup_model(cfg, data["train"].features["label"].names)
    split = data["train"].select(range(min(photos or len(data["train"]), len(data["train"]))))
    presize_s = 0.0
    if presize:
        started = time.perf_counter()
        split = presized(split, presized_side(cfg.image_size or default_image_size(cfg.backbone), cfg.zoom))
        presize_s = time.perf_counter() - started
    loader = DataLoader(split.with_transform(batch_transform(setup.train_transform)), collate_fn=collate,
                        batch_size=args.per_device_train_batch_size, num_workers=workers,
                        persistent_workers=workers > 0,
                        # as Trainer's workers start on Linux; this process was spawned, and the transforms are
                        # closures that spawned workers could not unpickle
                        multiprocessing_context="fork" if workers else None)
    for _ in loader:  # first pass: workers start, files come into the page cache
        pass
    started = time.perf_counter()
    for _ in loader:
        pass
    return {"images_per_s": len(split) / (time.perf_counter() - started), "presize_s": presize_s,
            "peak_mb": peak_mb()}


def presized_side(image_size: int, zoom: float) -> int:
    """Shorter side a photo can be shrunk to up front while RandomResizedCrop's smallest crop (area share ``zoom``,
    narrowest aspect) still spans ``image_size`` pixels."""
    return math.ceil(image_size / math.sqrt(zoom * SMALLEST_CROP_RATIO))


def presized(split, side: int):
    """``split`` with each photo decoded once, shrunk to shorter side ``side`` (never enlarged), kept as JPEG bytes."""
    from PIL import Image

    from hf_model.transforms import to_rgb

    def shrink(batch: dict) -> dict:
        images = []
        for image in batch["image"]:
            image = to_rgb(image)
            scale = side / min(image.size)
            if scale < 1:
                image = image.resize((round(image.width * scale), round(image.height * scale)),
                                     Image.Resampling.BICUBIC, reducing_gap=3.0)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=PRESIZED_QUALITY)
            images.append({"bytes": buffer.getvalue(), "path": None})
        return {"image": images}

    return split.map(shrink, batched=True, batch_size=64, features=split.features)


def loading_variants(data, data_dir: str, workers: int, photos: int | None) -> dict[str, dict]:
    """:func:`loading_step` in-process and with ``workers`` workers, on the photos as they are and resized up front."""
    results = {}
    for presize in (False, True):
        for count in (0, workers):
            name = (f"{count} workers" if count else IN_PROCESS) + (", resized up front" if presize else "")
            results[name] = measured(loading_step, data, data_dir, count, presize, photos)
    return results


def serving_step(model_dir: str, photo_files: list[str]) -> dict:
    """``serving.Classifier`` answering each photo (opened from disk) in turn: peak RSS and latency."""
    from hf_model.serving import Classifier, open_photo

    classifier = Classifier.from_pretrained(model_dir, warn_uncalibrated=False)
    seconds = []
    for file in photo_files:
        started = time.perf_counter()
        classifier.predict(open_photo(file))
        seconds.append(time.perf_counter() - started)
    return {"p50_ms": 1000 * statistics.median(seconds[1:] or seconds), "peak_mb": peak_mb(),
            "exported_graph": classifier.graph is not None, "gate": classifier.gate is not None}


# ---- the report ----

def print_report(results: dict) -> None:
    print_training(results)
    print_loading(results["loading"])
    serving = results["serving"]
    print(f"\nserving ({'exported graph' if serving['exported_graph'] else 'PyTorch'}, "
          f"{'with' if serving['gate'] else 'no'} gate): p50 {serving['p50_ms']:.1f} ms a photo, "
          f"peak {serving['peak_mb']:.0f} MB\n")
    for name in TRAINING:
        print(f"{name} s/epoch: {results[name]['seconds_per_epoch']:.2f}")
    for name, row in results["loading"].items():
        print(f"loader {name} img/s: {row['images_per_s']:.1f}")
    print(f"training peak MB: {max(results[name]['peak_mb'] for name in TRAINING):.0f}")
    print(f"serving peak MB: {serving['peak_mb']:.0f}")


def print_training(results: dict) -> None:
    """s/epoch, img/s and peak MB of each way to train, and the share of its time that in-process loading takes."""
    loader = results["loading"][IN_PROCESS]["images_per_s"]
    print(f"\n{'training (bedroom preset)':<44}{'s/epoch':>10}{'img/s':>10}{'peak MB':>10}{'loading share':>15}")
    for name in TRAINING[:2]:
        row = results[name]
        print(f"{name:<44}{row['seconds_per_epoch']:10.2f}{row['images_per_s']:10.1f}{row['peak_mb']:10.0f}"
              f"{row['images_per_s'] / loader:14.0%}")
    cached = results[TRAINING[2]]
    print(f"{TRAINING[2]:<44}{cached['seconds_per_epoch']:10.2f}{cached['images_per_s']:10.1f}"
          f"{cached['peak_mb']:10.0f}{'none':>15}")
    print(f"  (its features extracted once: {cached['extraction_s']:.1f} s; the preset's logistic head fits on them "
          f"in {cached['logistic_fit_s']:.1f} s)")


def print_loading(loading: dict) -> None:
    print(f"\n{'data loading (decode + augment)':<44}{'img/s':>10}{'peak MB':>10}")
    for name, row in loading.items():
        once = f"  (resizing once took {row['presize_s']:.1f} s)" if row["presize_s"] else ""
        print(f"{name:<44}{row['images_per_s']:10.1f}{row['peak_mb']:10.0f}{once}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=str(DEFAULT_DATA))
    parser.add_argument("--quick", action="store_true", help="a few steps, epochs and photos each")
    parser.add_argument("--model", help="a model folder to serve; default: the preset model fitted here")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="DataLoader workers to compare")
    parser.add_argument("--output", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    max_steps, head_epochs, photos, served = (4, 5, 64, 20) if args.quick else (0, 30, None, 100)

    from hf_model.data import load_data
    from hf_model.images import list_images

    with tempfile.TemporaryDirectory() as out:
        cfg, train_args = preset(args.data_dir, out)
    data = load_data(cfg, train_args.seed)  # built once; every step gets the same splits
    print(f"bedrooms: {len(data['train'])} training photos, batch {train_args.per_device_train_batch_size}, "
          f"{cfg.backbone}; {'quick: a few steps each' if args.quick else 'one epoch each'}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as model_dir:
        for name, blocks in zip(TRAINING, (-1, 0)):  # every block, then the head alone
            results[name] = measured(trainer_epoch_step, data, args.data_dir, blocks, max_steps)
            print(f"  {name}: {results[name]['seconds_per_epoch']:.1f} s/epoch", flush=True)
        results[TRAINING[2]] = measured(cached_head_step, data, args.data_dir, head_epochs, model_dir)
        results["loading"] = loading_variants(data, args.data_dir, args.workers, photos)
        photo_files = [str(path) for path in list_images(args.data_dir)[:served]]
        results["serving"] = measured(serving_step, args.model or model_dir, photo_files)
    print_report(results)
    if args.output:
        args.output.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Inference speed and fidelity: plain pipeline() vs eager PyTorch vs exported graphs, side by side in one run.

Every timing starts from a JPEG on disk, so decoding and preprocessing are included. All variants run in this one
process, taking turns photo by photo, which means a busy machine slows them all alike and the ratios hold.

- one photo: p50/p95 latency, file to top-k, for ``pipeline("image-classification")``, eager PyTorch (channels_last,
  the processor), and each exported variant (lean preprocessing, :mod:`hf_model.runtime`): ONNX Runtime fp32 (what
  serving uses), OpenVINO fp32, and int8 (onnxruntime.quantization static QDQ calibrated on training photos, run by
  ONNX Runtime and by OpenVINO; dynamic, by ONNX Runtime), which lost (:mod:`hf_model.export`).
- batch 32: img/s of the model alone (preprocessed photos in memory) and end to end from JPEG files
  (``hf-model predict``'s path, :func:`hf_model.predict.label_files`: decoding in worker threads).
- the Space's full answer (file -> open_photo -> top-k, verdict and sentence with the out-of-domain gate), without
  and with the heat map, served fast and, for comparison, as before (PyTorch for the model and the gate).
- fidelity: top-1 agreement with eager PyTorch and the largest class-probability difference, on ``--agreement``
  real photos.

    HF_HUB_OFFLINE=1 python benchmarks/bench_inference.py --model runs/bedrooms --data_dir ../shared/data
    HF_HUB_OFFLINE=1 python benchmarks/bench_inference.py --quick        # a small run, a few minutes

The model folder is copied to a temporary folder and exported there (the original is never written); a model
without ``calibration.json`` gets a stand-in one (uniform profile, threshold 0) so that the gate runs. The last two
lines are for scripts: ``p50 speedup vs plain pipeline: N.Nx`` (ONNX Runtime fp32 serving, no gate) and
``batch img/s: N`` (end to end from JPEG files at batch 32, ONNX Runtime fp32).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hf_model.backbones import DEFAULT_BACKBONE, class_names, load_image_processor, resolve_backbone
from hf_model.export import export_model
from hf_model.images import list_images
from hf_model.predict import Labeler, label_files
from hf_model.runtime import ONNX_FILE, OnnxModel, TorchModel, lean_preprocessing, load_exported, softmax
from hf_model.serving import Calibration, Classifier, DomainGate, open_photo

BATCH = 32
TOP_K = 2  # what the bedrooms tab shows


@dataclass
class Variant:
    """One way to run the model: a per-photo preprocessing and a model on preprocessed batches."""

    name: str
    preprocess: Callable[[Image.Image], np.ndarray]  # one photo -> (3, H, W) float32
    probabilities: Callable[[np.ndarray], np.ndarray]  # (n, 3, H, W) -> (n, classes)

    def answer(self, path: Path) -> list[int]:
        """File -> top-k class indices, as serving does it (the latency measured)."""
        probs = self.probabilities(self.preprocess(open_photo(path))[None])[0]
        return np.argsort(-probs, kind="stable")[:TOP_K].tolist()


class PipelineVariant:
    """``pipeline("image-classification")`` as a user would call it: on the file path."""

    name = "plain pipeline()"

    def __init__(self, model_dir: Path, labels: list[str]):
        from transformers import pipeline

        self.pipe = pipeline("image-classification", model=str(model_dir), device=-1)
        self.index = {label: i for i, label in enumerate(labels)}

    def answer(self, path: Path) -> list:
        return self.pipe(str(path), top_k=TOP_K)

    def file_probabilities(self, paths: list[Path]) -> np.ndarray:
        out = self.pipe([str(p) for p in paths], top_k=len(self.index), batch_size=BATCH)
        probs = np.zeros((len(paths), len(self.index)), dtype=np.float32)
        for row, scores in enumerate(out):
            for entry in scores:
                probs[row, self.index[entry["label"]]] = entry["score"]
        return probs


def onnx_variants(graph: Path, int8: Path, int8_dynamic: Path, preprocess, threads: int) -> list[Variant]:
    """The exported variants: ONNX Runtime and OpenVINO, fp32 and int8 (OpenVINO where installed)."""
    variants = [Variant(name, preprocess, OnnxModel(path, threads=threads).probabilities)
                for name, path in (("ONNX Runtime fp32 (serving)", graph), ("ONNX Runtime int8 static", int8),
                                   ("ONNX Runtime int8 dynamic", int8_dynamic))]
    try:
        import openvino as ov
    except ImportError:
        print("openvino is not installed: its variants are left out (pip install openvino)")
        return variants
    core = ov.Core()
    for name, path in (("OpenVINO fp32", graph), ("OpenVINO int8 static", int8)):
        compiled = core.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                         "PERFORMANCE_HINT": "LATENCY"})
        variants.append(Variant(name, preprocess, lambda x, c=compiled: softmax(c(x)[0])))
    return variants


def quantized(graph: Path, photos: list[np.ndarray], out_dir: Path) -> tuple[Path, Path]:
    """(static int8 QDQ graph calibrated on ``photos``, dynamic int8 graph), with onnxruntime.quantization.

    Static: per-channel, unsigned 8-bit weights and activations (of the settings tried, the one that kept the most
    top-1 agreement on this CPU without VNNI), MinMax calibration. Dynamic: weights only, activations at run time.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Photos(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(photos)

        def get_next(self):
            pixels = next(self.batches, None)
            return None if pixels is None else {"pixel_values": pixels[None]}

    prepared, static, dynamic = out_dir / "prepared.onnx", out_dir / "int8.onnx", out_dir / "int8_dynamic.onnx"
    logging.disable(logging.WARNING)  # a warning per layer whose int32 bias overflows: the figures say it all
    try:
        quant_pre_process(str(graph), str(prepared))
        quantize_static(str(prepared), str(static), Photos(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QUInt8)
        quantize_dynamic(str(prepared), str(dynamic), weight_type=QuantType.QUInt8)
    finally:
        logging.disable(logging.NOTSET)
    return static, dynamic


def latencies(answers: dict[str, Callable[[Path], object]], paths: list[Path], warm_up: int = 3) -> dict:
    """p50/p95 milliseconds of each answer over ``paths``, the answers taking turns on every photo."""
    for path in paths[:warm_up]:
        for answer in answers.values():
            answer(path)
    times: dict[str, list[float]] = {name: [] for name in answers}
    for path in paths:
        for name, answer in answers.items():
            started = time.perf_counter()
            answer(path)
            times[name].append(time.perf_counter() - started)
    return {name: {"p50 ms": 1e3 * float(np.percentile(t, 50)), "p95 ms": 1e3 * float(np.percentile(t, 95))}
            for name, t in times.items()}


def model_only_rate(probabilities: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray, rounds: int) -> float:
    """Images per second of the model alone on a preprocessed batch (median of ``rounds`` runs)."""
    probabilities(pixels)
    runs = []
    for _ in range(rounds):
        started = time.perf_counter()
        probabilities(pixels)
        runs.append(time.perf_counter() - started)
    return len(pixels) / float(np.median(runs))


def end_to_end_rate(labeler: Labeler, paths: list[Path]) -> float:
    """Images per second from JPEG files through ``hf-model predict``'s path at batch 32."""
    started = time.perf_counter()
    rows = list(label_files(labeler, paths, TOP_K, BATCH))
    assert all("predictions" in row for row in rows), "a benchmark photo did not decode"
    return len(paths) / (time.perf_counter() - started)


def fidelity(probs: np.ndarray, eager: np.ndarray) -> dict:
    return {"top-1 agreement": float((probs.argmax(-1) == eager.argmax(-1)).mean()),
            "max prob diff": float(np.abs(probs - eager).max())}


def batched(variant: Variant, photos: list[Image.Image]) -> np.ndarray:
    return np.concatenate([variant.probabilities(np.stack([variant.preprocess(p) for p in photos[i:i + BATCH]]))
                           for i in range(0, len(photos), BATCH)])


def spread(items: list, n: int) -> list:
    """``n`` items spread evenly over ``items`` (all of them when there are fewer)."""
    return items if len(items) <= n else [items[i * len(items) // n] for i in range(n)]


def training_photos(model_dir: Path, fallback: list[Path]) -> list[Path]:
    """The photos of the training folder the run record names (int8 calibrates on them), else ``fallback``."""
    record = model_dir / "hf_model_config.json"
    data_dir = json.loads(record.read_text()).get("config", {}).get("data_dir") if record.is_file() else None
    return list_images(data_dir) if data_dir and Path(data_dir).is_dir() else fallback


def prepare_model(source: Path, work: Path, calibration_photos: list[Image.Image]) -> tuple[Path, str]:
    """A copy of the model folder in ``work`` with an up-to-date graph and a calibration; and a note on both."""
    from transformers import AutoConfig

    model_dir = Path(shutil.copytree(source, work / "model", ignore=shutil.ignore_patterns("checkpoint-*")))
    notes = []
    config = AutoConfig.from_pretrained(model_dir)
    preprocess = lean_preprocessing(load_image_processor(str(model_dir), config))
    size = preprocess(calibration_photos[0]).shape[1:]
    if load_exported(model_dir, torch.device("cpu"), size, config.num_labels) is None:
        check = export_model(model_dir, calibration_photos[:16], "training photos")
        notes.append(f"exported here ({check.max_probability_difference:.1e} max difference on 16 photos)")
    if Calibration.load(model_dir) is None:
        Calibration(DEFAULT_BACKBONE, [1e-3] * 1000, domain_threshold=0.0).save(model_dir)
        notes.append("stand-in calibration (the gate runs, every photo passes)")
    return model_dir, "; ".join(notes) or "its own graph and calibration"


def eager_gate(backbone: str, work: Path) -> DomainGate:
    """The gate as before: in PyTorch (from a copy of the backbone folder without its graph)."""
    source = resolve_backbone(backbone)
    folder = Path(shutil.copytree(source, work / "gate_eager", ignore=shutil.ignore_patterns("*.onnx")))
    return DomainGate(str(folder), "cpu")


def print_report(report: dict) -> None:
    print(f"\nmodel {report['model']} ({report['model note']}); {report['threads']} threads; "
          f"{report['latency photos']} photos timed one at a time, {report['batch photos']} in batches of {BATCH}, "
          f"fidelity on {report['agreement photos']} real photos")
    header = (f"{'variant':<30} {'p50 ms':>8} {'p95 ms':>8} {'model img/s':>12} {'file img/s':>11} "
              f"{'top-1 agree':>12} {'max diff':>9}")
    print(header)
    print("-" * len(header))
    for name, row in report["variants"].items():
        cells = [f"{row[key]:>{width}.{digits}f}" if key in row else f"{'-':>{width}}" for key, width, digits in
                 (("p50 ms", 8, 1), ("p95 ms", 8, 1), ("model img/s", 12, 0), ("file img/s", 11, 0))]
        agree = f"{row['top-1 agreement']:>12.2%}" if "top-1 agreement" in row else f"{'-':>12}"
        diff = f"{row['max prob diff']:>9.1e}" if "max prob diff" in row else f"{'-':>9}"
        print(f"{name:<30} {' '.join(cells)} {agree} {diff}")
    print("\nthe Space's full answer (file -> top-k + gate verdict + sentence):")
    for name, row in report["space"].items():
        print(f"  {name:<44} p50 {row['p50 ms']:7.1f} ms   p95 {row['p95 ms']:7.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/bedrooms", help="trained model folder (read only)")
    parser.add_argument("--data_dir", default="../shared/data", help="real JPEGs, searched recursively")
    parser.add_argument("--latency", type=int, default=200, help="photos timed one at a time")
    parser.add_argument("--batches", type=int, default=8, help="batches of 32 for the img/s figures")
    parser.add_argument("--agreement", type=int, default=600, help="photos for top-1 agreement (at least 500)")
    parser.add_argument("--quick", action="store_true", help="a small run: 30 photos timed, 2 batches, 64 compared")
    parser.add_argument("--output", help="also write the figures as JSON here")
    args = parser.parse_args()
    if args.quick:
        args.latency, args.batches, args.agreement = 30, 2, 64
    threads = torch.get_num_threads()
    paths = list_images(args.data_dir)
    calibration_photos = [open_photo(p) for p in spread(training_photos(Path(args.model), paths), 64)]
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as scratch:
        work = Path(scratch)
        model_dir, note = prepare_model(Path(args.model), work, calibration_photos)
        report = run(model_dir, note, paths, work, calibration_photos, threads, args)
    print_report(report)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2))
    serving, plain = report["variants"]["ONNX Runtime fp32 (serving)"], report["variants"]["plain pipeline()"]
    print(f"p50 speedup vs plain pipeline: {plain['p50 ms'] / serving['p50 ms']:.1f}x")
    print(f"batch img/s: {serving['file img/s']:.0f}")


def run(model_dir: Path, note: str, paths: list[Path], work: Path, calibration_photos: list[Image.Image],
        threads: int, args) -> dict:
    """Every figure of the report, measured side by side."""
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(model_dir).eval().to(memory_format=torch.channels_last)
    processor = load_image_processor(str(model_dir), model.config)
    labels = class_names(model.config)
    lean = lean_preprocessing(processor)
    int8, int8_dynamic = quantized(model_dir / ONNX_FILE, [lean(p) for p in calibration_photos], work)
    eager = Variant("eager PyTorch channels_last",
                    lambda image: processor(image, return_tensors="pt")["pixel_values"][0].numpy(),
                    TorchModel(model).probabilities)
    variants = [eager, *onnx_variants(model_dir / ONNX_FILE, int8, int8_dynamic, lean, threads)]
    pipe = PipelineVariant(model_dir, labels)

    timed = spread(paths, args.latency)
    rows = latencies({pipe.name: pipe.answer, **{v.name: v.answer for v in variants}}, timed)
    batch_paths = spread(paths, args.batches * BATCH)
    pixels = np.stack([lean(open_photo(p)) for p in batch_paths[:BATCH]])
    started = time.perf_counter()
    pipe.file_probabilities(batch_paths)
    rows[pipe.name]["file img/s"] = len(batch_paths) / (time.perf_counter() - started)
    for variant in variants:
        rows[variant.name]["model img/s"] = model_only_rate(variant.probabilities, pixels, args.batches)
        rows[variant.name]["file img/s"] = end_to_end_rate(Labeler(labels, variant.preprocess, variant), batch_paths)

    compared = [open_photo(p) for p in spread(paths, args.agreement)]
    reference = batched(eager, compared)
    rows[pipe.name].update(fidelity(pipe.file_probabilities(spread(paths, args.agreement)), reference))
    for variant in variants[1:]:
        rows[variant.name].update(fidelity(batched(variant, compared), reference))

    return {"model": str(args.model), "model note": note, "threads": threads, "latency photos": len(timed),
            "batch photos": len(batch_paths), "agreement photos": len(compared), "variants": rows,
            "space": space_answers(model_dir, work, timed)}


def space_answers(model_dir: Path, work: Path, paths: list[Path]) -> dict:
    """p50/p95 of the Space's answer to one uploaded file: served fast and as before, without and with heat map."""
    fast = Classifier.from_pretrained(str(model_dir), "a bedroom", device="cpu")
    before = Classifier(fast.model, fast.processor, fast.calibration, "a bedroom", device="cpu")  # no graph
    before.gate = eager_gate(fast.calibration.gate_backbone, work)
    no_gate = Classifier(fast.model, fast.processor, None, "a bedroom", device="cpu", graph=fast.graph)
    answers = {
        "fast, no gate": lambda p: no_gate.predict(open_photo(p), top_k=TOP_K),
        "fast, with gate": lambda p: fast.predict(open_photo(p), top_k=TOP_K),
        "fast, with gate and heat map": lambda p: fast.predict(open_photo(p), top_k=TOP_K, heatmap=True),
        "before (PyTorch), with gate": lambda p: before.predict(open_photo(p), top_k=TOP_K),
        "before (PyTorch), with gate and heat map": lambda p: before.predict(open_photo(p), top_k=TOP_K, heatmap=True),
    }
    return latencies(answers, paths)


if __name__ == "__main__":
    main()

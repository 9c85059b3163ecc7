"""The Space: bedroom style and bird species from a photo, one tab and one API endpoint per task.

Run it from the repository root::

    python space/app.py                                   # the Hub models, else runs/bedrooms and runs/birds
    python space/app.py --bedroom_model runs/bedrooms --examples_dir ~/demo_photos

Each model is a trained folder (``train.py --output_dir``) or a Hub id, from ``--bedroom_model`` /
``--bird_model`` or the ``BEDROOM_MODEL`` / ``BIRD_MODEL`` environment variables. The models run on
``--device`` (default ``auto``: the GPU when present; a free Space has none, so the CPU). Call it from Python::

    from gradio_client import Client, handle_file
    Client("http://127.0.0.1:7860/").predict(handle_file("bed.jpg"), api_name="/predict_bedroom")
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import functools
import io
import logging
import os
import platform
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import torch

from hf_model.backbones import not_a_model_reason
from hf_model.devices import Device, DeviceError, add_device_argument, resolve_device
from hf_model.exit_status import exit_statuses
from hf_model.images import list_images
from hf_model.serving import (
    OUT_OF_DOMAIN,
    Classifier,
    UnreadablePhotoError,
    available_cpus,
    open_photo,
    shown_scores,
)
from hf_model.space_tasks import MAX_EXAMPLES, TASKS, Task

logger = logging.getLogger("space")

APP_DIR = Path(__file__).resolve().parent
REPO_ROOT = APP_DIR.parent
MAX_FILE_SIZE = "20mb"  # a phone photo is 3-15 MB; larger uploads are refused before they reach the model
# One torch thread per request and as many requests at once as there are cores: requests that share
# the cores with several threads each spin-wait on one another (measured 25x slower on 2 cores).
TORCH_THREADS = 1
CONCURRENT_PREDICTIONS = available_cpus()
# Waiting requests beyond this get "queue full" at once instead of a long wait; 50 users at once are
# queued, not refused (benchmarks/bench_space_load.py).
QUEUE_MAX_SIZE = 64
# Memory under load (benchmarks/bench_space_load.py, EfficientNet-Lite0): glibc keeps the pages of freed
# tensors inside its heaps, one heap per thread that allocates (up to 8 per core), and gradio runs requests
# on many threads: the Space grew by 480 MB over 500 requests, nearly all of it free memory. Two heaps and
# handing free pages back every TRIM_EVERY_S seconds (about 60 ms of work each time) keep it flat.
MALLOC_ARENAS = 2
TRIM_EVERY_S = 10
M_ARENA_MAX = -8  # glibc's mallopt() parameter for the number of heaps
# Uploads and heat maps live only in gradio's temporary folder (GRADIO_TEMP_DIR, else <tmp>/gradio); every
# 15 minutes those older than an hour are deleted, and all of them when the server stops.
DELETE_CACHE = (15 * 60, 60 * 60)  # (how often, age) in seconds, as gr.Blocks(delete_cache=...) takes them


@dataclass
class TaskModel:
    """A task's loaded classifier (None when none could be loaded) and a note on where it came from."""

    classifier: Classifier | None
    note: str


def load_task_model(task: Task, requested: str | None = None, device: Device = None) -> TaskModel:
    """The model named on the command line; else the task's env var or published model; else the local one.

    A model named on the command line that fails to load stops the app (the user asked for it). The
    env var (a Space variable) or the default Hub model falls back to the local folder with a note,
    so that a Hub hiccup at start-up does not take both tabs down. The model runs on ``device`` (default:
    the GPU when present); one this machine does not have raises :class:`~hf_model.devices.DeviceError`.
    """
    device = resolve_device(device)  # before the fallback below, which would take a DeviceError for a Hub failure
    if requested:
        return TaskModel(Classifier.from_pretrained(requested, task.subject, device=device), f"Model: `{requested}`.")
    preferred = os.environ.get(task.env_var) or task.hub_id
    try:
        return TaskModel(Classifier.from_pretrained(preferred, task.subject, device=device), f"Model: `{preferred}`.")
    except Exception as err:  # offline, not published yet, or a Hub error: all mean "try the local model"
        reason = f"{type(err).__name__}: {textwrap.shorten(str(err), 160)}"
    local = REPO_ROOT / task.local_fallback
    if not (local / "config.json").is_file():
        note = (
            f"No {task.title.lower()} model: `{preferred}` could not be loaded ({reason}) and "
            f"`{task.local_fallback}` holds no trained model. Train one with `python train.py --preset ...` "
            f"or set `{task.env_var}` to a model folder."
        )
        logger.warning(note)
        return TaskModel(None, note)
    logger.warning("%s: could not load %s (%s); using the local model %s", task.title, preferred, reason, local)
    note = f"Model: the local `{task.local_fallback}` (`{preferred}` could not be loaded)."
    return TaskModel(Classifier.from_pretrained(str(local), task.subject, device=device), note)


def make_predict(task: Task, model: TaskModel):
    """The endpoint of one tab: photo (+ heat map choice) -> label, one sentence, heat map."""

    def predict(photo, show_heatmap: bool = True):
        if model.classifier is None:
            raise gr.Error(model.note, title="No model", print_exception=False)
        if photo is None:
            return None, "Upload, paste or take a photo to classify it.", None
        try:
            image = open_photo(uploaded_file(photo))
            prediction = model.classifier.predict(image, top_k=task.top_k, heatmap=show_heatmap)
        except UnreadablePhotoError as err:
            raise gr.Error(str(err), title="Cannot read this photo", print_exception=False) from None
        except Exception:  # a clear message in the page, the traceback in the log
            logger.exception("%s: classifying %s failed", task.title, photo)
            raise gr.Error("Something went wrong while classifying this photo. Please try another one.") from None
        # the label prints what it gets as whole percents: shown_scores keeps it to 1-99%, like the sentence
        label = task.rejection_label if prediction.verdict == OUT_OF_DOMAIN else shown_scores(prediction.scores)
        return label, prediction.message, prediction.heatmap

    return predict


def uploaded_file(photo) -> str | io.BytesIO:
    """What the image input sends, unprocessed: a FileData dict (upload, paste, webcam) or a path."""
    if isinstance(photo, dict):
        url = photo.get("url") or ""
        if not photo.get("path") and url.startswith("data:"):
            return io.BytesIO(base64.b64decode(url.split(",", 1)[1]))
        return photo["path"]
    return photo


def build_demo(models: dict[str, TaskModel], examples_dir: str | Path | None = None) -> gr.Blocks:
    """The Blocks app, queued; ``models`` maps each task key to its loaded model."""
    title = "What's in the photo? Bedroom style and bird species"
    with gr.Blocks(title=title, delete_cache=DELETE_CACHE) as demo:
        gr.Markdown(
            "# What's in the photo?\n"
            "Two image classifiers fine-tuned with the Hugging Face stack. Each says how sure it is, says so "
            "when a photo does not look like what it was trained on, and can show what it looked at."
        )
        with gr.Tabs():
            for task in TASKS:
                with gr.Tab(task.title, id=task.key):
                    task_tab(task, models[task.key], example_photos(examples_dir, task))
    return demo.queue(default_concurrency_limit=CONCURRENT_PREDICTIONS, max_size=QUEUE_MAX_SIZE)


def task_tab(task: Task, model: TaskModel, examples: list[str]) -> None:
    gr.Markdown(f"{task.about}\n\n{model.note} {calibration_note(task, model)}".strip())
    with gr.Row():
        with gr.Column():
            photo = gr.Image(
                label="Photo",
                sources=["upload", "clipboard", "webcam"],
                type="filepath",
                image_mode=None,
                elem_id=f"{task.key}-photo",
            )
            show_heatmap = gr.Checkbox(value=True, label="Show what the model looked at (heat map)")
            button = gr.Button("Classify", variant="primary")
            if examples:
                gr.Examples(examples=[[p] for p in examples], inputs=[photo], label="Example photos")
        with gr.Column():
            label = gr.Label(num_top_classes=task.top_k, label="Prediction", elem_id=f"{task.key}-label")
            sentence = gr.Markdown(elem_id=f"{task.key}-sentence")
            heatmap = gr.Image(label="What the model looked at", interactive=False, elem_id=f"{task.key}-heatmap")
    outputs = [label, sentence, heatmap]
    # A new photo first clears the last answer, so an error never sits beside the previous photo's label.
    gr.on(
        [photo.change, button.click],
        fn=lambda: (None, "", None),
        outputs=outputs,
        queue=False,
        api_visibility="private",
    ).then(
        make_predict(task, model),
        inputs=[photo, show_heatmap],
        outputs=outputs,
        api_name=task.api_name,
        preprocess=False,  # the photo arrives as a file: serving's open_photo reads it and explains failures
        concurrency_id="predict",  # one limit shared by all tabs: the cores are shared too
    )


def calibration_note(task: Task, model: TaskModel) -> str:
    """What the tab says about its out-of-domain check: the rates calibration.json measured, with their intervals
    and sample sizes, and a warning when it was calibrated on fewer photos than ``hf-model calibrate`` asks for.

    calibration.json files written before the intervals (or before the report) are described without them.
    """
    calibration = model.classifier.calibration if model.classifier else None
    if calibration is None:
        return f"This model has no calibration.json, so it does not check that photos show {task.subject}."
    held_out = calibration.report.get("held_out")
    if not held_out:
        return f"Photos that do not look like {task.subject} get “{task.rejection_label}”."
    other, same = held_out["out_of_domain"], held_out["in_domain"]
    note = (
        f"Photos that do not look like {task.subject} get “{task.rejection_label}”: on held-out photos, "
        f"{held_out_rate(other)} other photos and {held_out_rate(same)} photos like the training set"
        f"{' (95% intervals in brackets)' if 'rejected_ci95' in other else ''}."
    )
    sizes = calibration.report.get("sample_sizes", {})
    if sizes.get("below_required"):
        required = sizes["required"]
        note += (
            f" **Calibrated on few photos** ({sizes['validation']} like the training set and "
            f"{sizes['out_of_domain']} others, where at least {required['validation']} and "
            f"{required['out_of_domain']} are asked for): these rates are rough."
        )
    return note


def held_out_rate(entry: dict) -> str:
    """``87% [78-93%] of 75``: a share of held-out photos turned away, with its interval when recorded."""
    interval = entry.get("rejected_ci95")
    if entry["rejected"] is None:
        return f"none of {entry['photos']}"
    bracket = f" [{interval[0] * 100:.0f}-{interval[1]:.0%}]" if interval else ""
    return f"{entry['rejected']:.0%}{bracket} of {entry['photos']}"


def example_photos(examples_dir: str | Path | None, task: Task) -> list[str]:
    """Up to MAX_EXAMPLES photos from ``<examples_dir>/<task key>/``; none when there is no such folder."""
    if not examples_dir or not (Path(examples_dir) / task.key).is_dir():
        return []
    return [str(p) for p in list_images(Path(examples_dir) / task.key)[:MAX_EXAMPLES]]


def launch(demo: gr.Blocks, **kwargs):
    """``demo.launch`` with the serving limits; ``kwargs`` go to it (server_port, prevent_thread_lock, ...)."""
    return demo.launch(max_file_size=MAX_FILE_SIZE, **kwargs)


def configure_serving() -> None:
    """Process-wide settings for serving, made before models load: TORCH_THREADS; where the C library is glibc
    (Linux, as on a Space), at most MALLOC_ARENAS heaps and free memory handed back every TRIM_EVERY_S seconds."""
    torch.set_num_threads(TORCH_THREADS)
    if platform.libc_ver()[0] == "glibc":
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, MALLOC_ARENAS)
        start_trimming()


@functools.cache  # one thread per process, however often the server is configured
def start_trimming() -> None:
    """A thread that hands glibc's free memory back to the system every TRIM_EVERY_S seconds."""
    libc = ctypes.CDLL(None)

    def trim_forever() -> None:
        while True:
            time.sleep(TRIM_EVERY_S)
            libc.malloc_trim(0)

    threading.Thread(target=trim_forever, name="malloc-trim", daemon=True).start()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=exit_statuses("the server was stopped", "a model named with a flag does not load"),
    )
    for task in TASKS:
        parser.add_argument(
            f"--{task.flag}",
            help=f"model folder or Hub id; without it: env {task.env_var}, else {task.hub_id}, falling back to "
            f"{task.local_fallback}",
        )
    default_examples = os.environ.get("EXAMPLES_DIR") or (
        APP_DIR / "examples" if (APP_DIR / "examples").is_dir() else None
    )
    parser.add_argument(
        "--examples_dir",
        default=default_examples,
        help="folder with bedroom/ and bird/ subfolders of example photos (env EXAMPLES_DIR)",
    )
    parser.add_argument("--server_name", default=None, help="e.g. 0.0.0.0 to serve on the network")
    parser.add_argument("--server_port", type=int, default=None)
    add_device_argument(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = parse_args(argv)
    try:
        device = resolve_device(args.device)
    except DeviceError as err:
        raise SystemExit(f"space/app.py: error: {err}") from None
    logger.info("serving on %s", device)
    configure_serving()
    models = {}
    for task in TASKS:
        try:
            models[task.key] = load_task_model(task, getattr(args, task.flag), device)
        except Exception as err:  # the model the user named: why it does not load, in one line
            raise SystemExit(
                f"space/app.py: error: could not load the {task.title.lower()} model: "
                f"{not_a_model_reason(getattr(args, task.flag), err)}"
            ) from None
    demo = build_demo(models, args.examples_dir)
    launch(demo, server_name=args.server_name, server_port=args.server_port)


if __name__ == "__main__":
    main()

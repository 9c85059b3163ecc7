"""Load on the Space: many users at once through gradio_client, on loopback; errors, queue, latency, memory.

Starts the Space (``space/app.py``'s ``build_demo`` and ``launch``, with its serving limits) in this process
on 127.0.0.1 at a free port with a bedroom model. The users run in a second process (so that this one's
memory is the server's alone): ``--concurrency`` of them, one ``gradio_client.Client`` each, send photos to
``/predict_bedroom`` until ``--requests`` have been answered or ``--time_limit`` seconds have passed; then
the server stops. ``--warm_up`` requests first bring the server to its steady state; they count as errors
when they fail but not in the latencies. Photos: the real JPEGs in ``../shared/data/bedrooms`` when present,
else photos made up here.

Memory: the server's RSS is read after the warm-up, halfway and at the end, each time after ``--settle_s``
seconds of rest (by then the Space has handed freed memory back: TRIM_EVERY_S in space/app.py); it is flat
when the second half of the requests grows it by less than RSS_GROWTH_FLAT_MB.

    HF_HUB_OFFLINE=1 python benchmarks/bench_space_load.py                         # a tiny random model
    HF_HUB_OFFLINE=1 python benchmarks/bench_space_load.py --model runs/bedrooms   # the trained one

Ends with ``name: value`` lines a script can read: ``errors``, ``refused (queue full)``, ``largest queue``,
``p50 ms``, ``p95 ms``, ``throughput req/s``, ``rss before MB``, ``rss halfway MB``, ``rss after MB`` and
``rss flat``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil
from gradio_client import Client, handle_file
from PIL import Image

from hf_model.images import list_images

REPO = Path(__file__).resolve().parents[1]
APP_FILE = REPO / "space" / "app.py"
REAL_PHOTOS = REPO.parent / "shared" / "data" / "bedrooms"
PHOTOS_USED = 64  # distinct photos, sent in turn
QUEUE_POLL_S = 0.05
RSS_GROWTH_FLAT_MB = 20  # growth under this over the second half of the counted requests reads as flat


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a trained bedroom model folder; default: a tiny random model made here")
    parser.add_argument("--concurrency", type=positive_int, default=50, help="users sending requests at once")
    parser.add_argument("--requests", type=positive_int, default=500, help="requests counted, after the warm-up")
    parser.add_argument("--warm_up", type=positive_int, default=250, help="requests sent first, not counted")
    parser.add_argument("--time_limit", type=positive_float, default=600.0,
                        help="seconds for the counted requests (the warm-up round gets as long); then none are sent")
    parser.add_argument("--request_timeout", type=positive_float, default=120.0,
                        help="seconds a user waits for each step of a request (upload, place in the queue, answer)")
    parser.add_argument("--photos_dir", default=str(REAL_PHOTOS), help="JPEGs to send; made-up photos when absent")
    parser.add_argument("--no_heatmap", action="store_true", help="ask for no heat map (the page asks for one)")
    parser.add_argument("--settle_s", type=non_negative_float, default=None,
                        help="seconds the server rests before each memory reading; default: TRIM_EVERY_S + 1")
    parser.add_argument("--send_to", help=argparse.SUPPRESS)  # the users' process: the server's URL
    args = parser.parse_args(argv)
    if args.model and not (Path(args.model) / "config.json").is_file():
        parser.error(f"--model {args.model}: not a model folder (no config.json); give a train.py --output_dir")
    return args


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def positive_float(text: str) -> float:
    if not seconds(text) > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return float(text)


def non_negative_float(text: str) -> float:
    if not seconds(text) >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds, 0 or more")
    return float(text)


def seconds(text: str) -> float:
    """``text`` as a number; NaN when it is none (which fails every comparison)."""
    try:
        return float(text)
    except ValueError:
        return float("nan")


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print its report and return its figures (the ``name: value`` lines, as a dict)."""
    args = parse_args(argv)
    if args.send_to:
        print(json.dumps(send_requests(args.send_to, args)))
        return {}
    app = load_app()
    settle_s = app.TRIM_EVERY_S + 1 if args.settle_s is None else args.settle_s
    with tempfile.TemporaryDirectory(prefix="space-load-") as scratch:
        model = args.model or str(make_tiny_model(Path(scratch) / "tiny_model"))
        photos_dir, photos_note = bench_photos(Path(args.photos_dir), Path(scratch) / "photos")
        with running_space(app, model) as url:
            warm_up = users(url, photos_dir, args.warm_up, args.time_limit, args)
            rss = [rss_mb_at_rest(settle_s)]
            first_half = users(url, photos_dir, args.requests // 2, args.time_limit, args)
            rss.append(rss_mb_at_rest(settle_s))
            time_left = args.time_limit - first_half["wall s"]
            second_half = users(url, photos_dir, args.requests - args.requests // 2, time_left, args)
            rss.append(rss_mb_at_rest(settle_s))
    counted = {key: first_half[key] + second_half[key] for key in ("seconds", "errors", "wall s")}
    counted["largest queue"] = max(first_half["largest queue"], second_half["largest queue"])
    report = {
        "model": args.model or "a tiny random ConvNeXt made here",
        "photos": photos_note,
        "concurrency": args.concurrency,
        "queue bound": f"{app.QUEUE_MAX_SIZE} waiting (QUEUE_MAX_SIZE), {app.CONCURRENT_PREDICTIONS} predicting",
        **figures(warm_up, counted, args.requests),
        "rss before MB": round(rss[0], 1),
        "rss halfway MB": round(rss[1], 1),
        "rss after MB": round(rss[2], 1),
        "rss flat": rss[2] - rss[1] < RSS_GROWTH_FLAT_MB,
    }
    print_report(report)
    return report


def figures(warm_up: dict, counted: dict, requested: int) -> dict:
    """The report's figures from the two rounds of :func:`send_requests` (latencies of the counted one)."""
    errors = warm_up["errors"] + counted["errors"]
    latencies_ms = 1000 * np.array(counted["seconds"])
    answered = len(latencies_ms)
    return {
        "first errors": errors[:5],
        "answered": answered,
        "requests": requested,
        "warm-up requests": len(warm_up["seconds"]) + len(warm_up["errors"]),
        "errors": len(errors),
        "refused (queue full)": sum("queue is full" in error.lower() for error in errors),
        "largest queue": max(warm_up["largest queue"], counted["largest queue"]),
        "p50 ms": round(float(np.percentile(latencies_ms, 50)), 1) if answered else None,
        "p95 ms": round(float(np.percentile(latencies_ms, 95)), 1) if answered else None,
        "throughput req/s": round(answered / counted["wall s"], 2),
        "wall s": round(counted["wall s"], 1),
    }


def users(url: str, photos_dir: Path, count: int, seconds: float, args: argparse.Namespace) -> dict:
    """One round of ``count`` requests in ``seconds``, sent from a separate process by ``args.concurrency`` users
    (what :func:`send_requests` returns; nothing sent when ``count`` or ``seconds`` is not above 0)."""
    if count < 1 or seconds <= 0:
        return {"seconds": [], "errors": [], "largest queue": 0, "wall s": 0.0}
    command = [sys.executable, __file__, "--send_to", url, "--photos_dir", str(photos_dir), "--requests", str(count),
               "--concurrency", str(args.concurrency), "--time_limit", str(seconds),
               "--request_timeout", str(args.request_timeout), *(["--no_heatmap"] if args.no_heatmap else [])]
    limit = seconds + args.request_timeout * 3 + 120  # the round's time, its last requests, start-up
    done = subprocess.run(command, capture_output=True, text=True, timeout=limit, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"the users' process failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def send_requests(url: str, args: argparse.Namespace) -> dict:
    """The users' side: ``args.requests`` requests, ``args.concurrency`` at a time, none started after
    ``args.time_limit`` seconds. Returns the latencies (seconds) of the answered ones, the errors, the
    largest queue seen and the round's wall time."""
    photos = list_images(args.photos_dir)[:PHOTOS_USED]
    timeout = httpx.Timeout(args.request_timeout)  # a browser waits; gradio_client's default is 5 s a step
    clients: queue.Queue[Client] = queue.Queue()
    for _ in range(args.concurrency):
        clients.put(Client(url, verbose=False, download_files=False, analytics_enabled=False,
                           httpx_kwargs={"timeout": timeout}))
    heatmap = not args.no_heatmap
    started = time.monotonic()
    deadline = started + args.time_limit
    with QueueWatch(url) as watch, ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        turns = [photos[i % len(photos)] for i in range(args.requests)]
        outcomes = list(pool.map(lambda photo: one_request(clients, photo, heatmap, deadline, timeout), turns))
    return {
        "seconds": [o for o in outcomes if isinstance(o, float)],
        "errors": [o for o in outcomes if isinstance(o, str)],
        "largest queue": watch.largest,
        "wall s": time.monotonic() - started,
    }


def one_request(clients: queue.Queue[Client], photo: Path, heatmap: bool, deadline: float,
                timeout: httpx.Timeout) -> float | str | None:
    """A free user sends ``photo``: its latency in seconds, or the error as text; None when time was up."""
    if time.monotonic() > deadline:
        return None
    client = clients.get()
    started = time.perf_counter()
    try:
        job = client.submit(handle_file(str(photo)), heatmap, api_name="/predict_bedroom")
        label, _sentence, _heatmap = job.result(timeout=timeout.read)
        if not (isinstance(label, dict) and label.get("label")):
            return f"{photo.name}: an answer without a label: {label!r}"
        return time.perf_counter() - started
    except Exception as err:  # every failure is a figure of the report, not a crash of the benchmark
        return f"{photo.name}: {type(err).__name__}: {err}"
    finally:
        clients.put(client)


class QueueWatch:
    """Polls the server's queue size (``/gradio_api/queue/status``) in a thread; ``largest`` is the most seen."""

    def __init__(self, url: str):
        self.url, self.largest = f"{url}gradio_api/queue/status", 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> QueueWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        with httpx.Client(timeout=5) as http:
            while not self._stop.wait(QUEUE_POLL_S):
                try:
                    self.largest = max(self.largest, http.get(self.url).json()["queue_size"])
                except (httpx.HTTPError, KeyError, ValueError):  # a busy server answers late: poll again
                    continue


@contextlib.contextmanager
def running_space(app, model: str) -> Iterator[str]:
    """The Space as ``space/app.py``'s main serves it (its process settings, queue and upload limits), on
    127.0.0.1 at a free port, with the bedroom tab only; yields its URL, then stops it."""
    import torch  # the server side only: the users' process stays light

    bedroom, bird = app.TASKS
    models = {bedroom.key: app.load_task_model(bedroom, model), bird.key: app.TaskModel(None, "Not loaded here.")}
    threads = torch.get_num_threads()
    app.configure_serving()
    demo = app.build_demo(models)
    try:
        app.launch(demo, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                   ssr_mode=False)
        yield demo.local_url
    finally:
        demo.close()
        torch.set_num_threads(threads)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mb_at_rest(settle_s: float) -> float:
    """Resident memory of this process (the server) after ``settle_s`` seconds without requests, in MB (2**20 B)."""
    time.sleep(settle_s)
    return psutil.Process().memory_info().rss / 2**20


def make_tiny_model(folder: Path) -> Path:
    """A random-init 2-class ConvNeXt with its image processor: a model folder the Space loads in a second."""
    import torch
    from transformers import ConvNextConfig, ConvNextForImageClassification, ConvNextImageProcessor

    torch.manual_seed(0)
    labels = {0: "Modern", 1: "Old"}
    config = ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, id2label=labels,
                            label2id={name: i for i, name in labels.items()})
    ConvNextForImageClassification(config).save_pretrained(folder)
    ConvNextImageProcessor(size={"shortest_edge": 64}, crop_pct=0.875).save_pretrained(folder)
    return folder


def bench_photos(photos_dir: Path, scratch: Path) -> tuple[Path, str]:
    """``photos_dir`` when it holds photos, else ``scratch`` with PHOTOS_USED made-up 640 x 480 JPEGs; a note."""
    found = len(list_images(photos_dir)[:PHOTOS_USED]) if photos_dir.is_dir() else 0
    if found:
        return photos_dir, f"{found} photos from {photos_dir}"
    scratch.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(PHOTOS_USED):
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(scratch / f"photo_{i}.jpg")
    return scratch, f"{PHOTOS_USED} made-up 640 x 480 JPEGs ({photos_dir} holds no photos)"


def load_app():
    """space/app.py as a module (space/ is the Space repo, not a package)."""
    spec = importlib.util.spec_from_file_location("space_app_under_load", APP_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def print_report(report: dict) -> None:
    for error in report["first errors"]:
        print(f"error: {error}")
    for name, value in report.items():
        if name != "first errors":
            print(f"{name}: {value}")


if __name__ == "__main__":
    main()

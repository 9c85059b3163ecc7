"""The Space under load (benchmarks/bench_space_load.py) at a small size: every request answered, none refused."""

from __future__ import annotations

import importlib.util
import platform
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_photo

BENCH_FILE = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_space_load.py"
APP_FILE = Path(__file__).resolve().parents[1] / "space" / "app.py"


def load_bench():
    """benchmarks/bench_space_load.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_space_load", BENCH_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


bench = load_bench()


@pytest.fixture
def photos_dir(tmp_path) -> Path:
    for i, colour in enumerate([(200, 180, 160), (60, 40, 20), (120, 140, 200), (30, 160, 90)]):
        make_photo(tmp_path / "photos" / f"bed_{i}.jpg", colour, size=96, seed=i)
    return tmp_path / "photos"


def script_lines(output: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in output.splitlines() if ": " in line)


def test_eight_users_at_once_get_every_answer_and_no_error(photos_dir, capsys):
    report = bench.main(["--concurrency", "8", "--requests", "24", "--warm_up", "8", "--settle_s", "0",
                         "--photos_dir", str(photos_dir)])
    assert report["errors"] == 0 and report["first errors"] == []
    assert report["answered"] == 24 and report["warm-up requests"] == 8
    assert report["refused (queue full)"] == 0
    assert 0 <= report["largest queue"] <= bench.load_app().QUEUE_MAX_SIZE
    assert 0 < report["p50 ms"] <= report["p95 ms"] and report["throughput req/s"] > 0
    assert 0 < report["rss before MB"] and 0 < report["rss halfway MB"] and 0 < report["rss after MB"]
    lines = script_lines(capsys.readouterr().out)
    assert lines["errors"] == "0" and float(lines["p95 ms"]) == report["p95 ms"]
    assert {"p50 ms", "rss before MB", "rss after MB", "rss flat", "largest queue", "throughput req/s"} <= set(lines)


def test_the_benchmark_stops_by_itself_at_its_time_limit(photos_dir):
    report = bench.main(["--concurrency", "2", "--requests", "100000", "--warm_up", "2", "--time_limit", "2",
                         "--settle_s", "0", "--photos_dir", str(photos_dir)])
    assert report["errors"] == 0
    assert 0 < report["answered"] < 100000 and report["wall s"] < 2 + 60  # in-flight requests finish, no new ones


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--concurrency", "0"], "'0' is not a whole number of at least 1"),
        (["--time_limit", "-1"], "'-1' is not a number of seconds above 0"),
        (["--settle_s", "soon"], "'soon' is not a number of seconds, 0 or more"),
        (["--model", "nowhere"], "--model nowhere: not a model folder"),
    ],
)
def test_bad_flags_stop_with_the_flag_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert message in capsys.readouterr().err


# The server's memory under load, in a fresh process: 8 threads allocate at once, as gradio's workers do
# (prints the C heaps before and during), then 256 MB is freed under a block that glibc cannot trim past
# (prints the RSS in MB at once and once it has dropped by 200 MB, or 3 s later).
SERVER_MEMORY = """
import ctypes, importlib.util, sys, tempfile, threading, time
import psutil
if sys.argv[1] == "configured":
    spec = importlib.util.spec_from_file_location("space_app", sys.argv[2])
    app = importlib.util.module_from_spec(spec)
    sys.modules["space_app"] = app
    spec.loader.exec_module(app)
    app.TRIM_EVERY_S = 0.1
    app.configure_serving()
libc = ctypes.CDLL(None)
libc.fopen.restype = libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def heaps():
    with tempfile.NamedTemporaryFile("r") as report:
        stream = ctypes.c_void_p(libc.fopen(report.name.encode(), b"w"))
        libc.malloc_info(0, stream)
        libc.fclose(stream)
        return report.read().count("<heap nr=")

def rss_mb():
    return psutil.Process().memory_info().rss >> 20

before = heaps()
ready, done = threading.Barrier(9), threading.Event()

def allocate():
    buffer = bytearray(4096)  # a thread's first malloc gives it a heap
    ready.wait()
    done.wait()

threads = [threading.Thread(target=allocate) for _ in range(8)]
for thread in threads:
    thread.start()
ready.wait()
print(before, heaps())
done.set()
blocks = [libc.malloc(1 << 16) for _ in range(4096)]
for block in blocks:
    ctypes.memset(block, 1, 1 << 16)
for block in blocks[:-1]:
    libc.free(block)
freed = rss_mb()
deadline = time.monotonic() + 3  # the trimmer runs every 0.1 s; a loaded machine may delay it past half a second
while rss_mb() >= freed - 200 and time.monotonic() < deadline:
    time.sleep(0.1)
print(freed, rss_mb())
"""


def server_memory(mode: str) -> tuple[int, int, int, int]:
    """Heaps before and during 8 threads, RSS in MB just after freeing 256 MB and once it has dropped by 200 MB
    (at most 3 s later)."""
    done = subprocess.run([sys.executable, "-c", SERVER_MEMORY, mode, str(APP_FILE)], capture_output=True,
                          text=True, check=True, timeout=300)
    return tuple(int(n) for n in done.stdout.split()[-4:])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the heaps of glibc's malloc")
def test_the_space_keeps_few_heaps_and_hands_freed_memory_back():
    heaps_before, heaps_during, freed, later = server_memory("plain")
    assert heaps_during > max(heaps_before, 2) and later > freed - 50  # glibc alone: a heap a thread, pages kept
    heaps_before, heaps_during, freed, later = server_memory("configured")
    assert heaps_during <= max(heaps_before, bench.load_app().MALLOC_ARENAS)
    assert later < freed - 200  # the 256 MB freed went back to the system

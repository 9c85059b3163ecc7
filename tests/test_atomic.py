import json

import pytest

from hf_model.atomic import atomic_write, write_json_atomic


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")
    write_json_atomic(path, {"accuracy": 0.9})
    assert json.loads(path.read_text()) == {"accuracy": 0.9}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left


def test_failed_write_keeps_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "predictions.csv"
    path.write_text("old,rows\n")
    with pytest.raises(RuntimeError), atomic_write(path, newline="") as f:
        f.write("half,")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old,rows\n"
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.csv"]


def test_a_locked_folder_refuses_a_second_writer_and_frees_itself(tmp_path):
    import subprocess
    import sys

    from hf_model.atomic import FolderBusyError, folder_lock

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom hf_model.atomic import folder_lock\n"
                               f"with folder_lock({str(tmp_path)!r}, 'test'):\n    print('held', flush=True)\n"
                               "    sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(FolderBusyError, match=f"another hf-model study is running in {tmp_path}"):
        with folder_lock(tmp_path, "hf-model study"):
            pass
    holder.communicate("")  # the holder exits, and the lock goes with it
    with folder_lock(tmp_path, "hf-model study"):
        assert (tmp_path / ".lock").exists()

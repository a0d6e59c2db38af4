"""The one file writer: atomic replacement, clean-up on failure, one-line disk errors."""
import os
import subprocess
import sys

import pytest

from conftest import REPO
from res2net_ms.fileio import TEMP_MARK, WriteError, atomic_write, write_text


def test_replaces_atomically_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "sub" / "file.txt"
    write_text(target, "first")
    write_text(target, "second")
    assert target.read_text() == "second"
    assert os.listdir(tmp_path / "sub") == ["file.txt"]


def test_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "file.txt"
    write_text(target, "good")

    def broken(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_text() == "good"
    assert os.listdir(tmp_path) == ["file.txt"]


def test_folders_are_written_whole(tmp_path):
    target = tmp_path / "data"

    def write(tmp):
        os.makedirs(os.path.join(tmp, "a"))
        with open(os.path.join(tmp, "a", "x"), "w") as f:
            f.write("x")

    atomic_write(target, write)
    atomic_write(target, write)  # replaces an existing folder
    assert os.listdir(target) == ["a"] and not [n for n in os.listdir(tmp_path) if TEMP_MARK in n]


def test_unwritable_folder_is_one_line(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    with pytest.raises(WriteError, match="permission denied"):
        write_text(folder / "x.txt", "x")


def test_folder_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "ckpt").write_text("not a folder")
    with pytest.raises(WriteError) as info:
        write_text(tmp_path / "ckpt" / "x.txt", "x")
    assert "cannot write" in str(info.value) and "\n" not in str(info.value)


def test_file_size_limit_is_one_line_and_harmless(tmp_path):
    """A full disk, simulated by RLIMIT_FSIZE in a child process."""
    target = tmp_path / "big.bin"
    target.write_bytes(b"old")
    code = ("import resource, sys\n"
            "from res2net_ms.fileio import write_bytes, WriteError\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
            "try:\n"
            f"    write_bytes({str(target)!r}, b'x' * 100000)\n"
            "except WriteError as exc:\n"
            "    print(exc); sys.exit(3)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert run.returncode == 3, run.stderr
    assert run.stdout.count("\n") == 1 and "larger than the system allows" in run.stdout
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["big.bin"]

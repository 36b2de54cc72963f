"""Untrusted input: malicious pickles, hostile archive members, and bad sources give one clear error line."""

from __future__ import annotations

import os
import pickle
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fixtures_data import add_bytes, encode, error_lines, make_cifar10, make_imagefolder, py2_pickle, run_ssrr

from ssrr.data import download
from ssrr.data.safety import load_pickle, open_members
from ssrr.errors import SsrrError

# ------------------------------------------------------------------------------------------ pickles


class _Exploit:
    def __init__(self, call, arg) -> None:  # type: ignore[no-untyped-def]
        self.call, self.arg = call, arg

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return self.call, (self.arg,)


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_malicious_pickle_is_refused_without_running(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    payloads = [
        pickle.dumps({"data": _Exploit(os.system, f"touch {marker}")}, protocol=protocol),
        pickle.dumps(_Exploit(eval, f"open({str(marker)!r}, 'w')"), protocol=protocol),
        pickle.dumps(_Exploit(exec, f"open({str(marker)!r}, 'w')"), protocol=protocol),
    ]
    for payload in payloads:
        with pytest.raises(
            SsrrError, match=r"evil\.pkl: refused to unpickle global (posix|os|nt|builtins|__builtin__)\."
        ):
            load_pickle(payload, "evil.pkl")
    assert not marker.exists()


def test_only_the_numpy_array_globals_are_admitted() -> None:
    # a hand-written py2 pickle that asks for numpy's _reconstruct with a non-ndarray subtype
    evil = b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\ndtype\nK\x00\x85U\x01b\x87R."
    with pytest.raises(SsrrError, match="not a valid CIFAR pickle"):
        load_pickle(evil, "x")
    for module, name in [("numpy", "load"), ("numpy.lib.npyio", "load"), ("subprocess", "Popen"), ("io", "open")]:
        payload = b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n."
        with pytest.raises(SsrrError, match=f"refused to unpickle global {module}.{name}"):
            load_pickle(payload, "x")
    # object arrays are refused too
    with pytest.raises(SsrrError):
        load_pickle(pickle.dumps(np.array([1, "a"], dtype=object), protocol=2), "x")
    # and the real CIFAR structure loads
    data = load_pickle(py2_pickle({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2]}), "x")
    assert data[b"data"].shape == (2, 3072) and data[b"labels"] == [1, 2]


def test_malicious_pickle_in_a_cifar_archive_through_the_cli(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil-cifar.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        add_bytes(tar, "cifar-10-batches-py/data_batch_1", pickle.dumps(_Exploit(os.system, f"touch {marker}")))
    result = run_ssrr("shard", "cifar10", "--source", path, "--out", tmp_path / "out")
    assert result.exit_code == 1
    assert len(error_lines(result)) == 1
    assert "data_batch_1: refused to unpickle global" in error_lines(result)[0]
    assert not marker.exists()
    assert not (tmp_path / "out" / "cifar10").exists()


# ------------------------------------------------------------------------------------------ archives


def _tar_with(path: Path, name: str, **attrs) -> Path:  # type: ignore[no-untyped-def]
    with tarfile.open(path, "w") as tar:
        add_bytes(tar, "train/cat/ok.png", encode(np.zeros((4, 4, 3), np.uint8), "PNG"))
        add_bytes(tar, name, b"" if attrs else b"payload", **attrs)
    return path


@pytest.mark.parametrize(
    "name,attrs,reason",
    [
        ("../escape.png", {}, "'..' path component"),
        ("train/../../escape.png", {}, "'..' path component"),
        ("/etc/escape.png", {}, "absolute path"),
        ("train/cat/link.png", {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}, "symlink"),
        ("train/cat/hard.png", {"type": tarfile.LNKTYPE, "linkname": "train/cat/ok.png"}, "hardlink"),
        ("train/cat/dev.png", {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}, "device file"),
        ("train/cat/blk.png", {"type": tarfile.BLKTYPE, "devmajor": 8, "devminor": 0}, "device file"),
        ("train/cat/fifo.png", {"type": tarfile.FIFOTYPE}, "fifo"),
    ],
)
def test_hostile_tar_members_are_refused(tmp_path: Path, name: str, attrs: dict, reason: str) -> None:
    path = _tar_with(tmp_path / "hostile.tar", name, **attrs)
    with pytest.raises(SsrrError, match=f"hostile.tar: refused member .*{reason}"), open_members(path) as members:
        for member in members:
            member.read()
    result = run_ssrr("shard", "imagefolder", path, "--out", tmp_path / "out")
    assert result.exit_code == 1 and len(error_lines(result)) == 1
    assert "refused member" in error_lines(result)[0] and reason in error_lines(result)[0]
    assert not (tmp_path / "escape.png").exists() and not (tmp_path / "out" / "hostile").exists()


def test_hostile_zip_members_are_refused(tmp_path: Path) -> None:
    traversal = tmp_path / "traversal.zip"
    with zipfile.ZipFile(traversal, "w") as archive:
        archive.writestr("train/a/ok.png", b"x")
        archive.writestr("../../escape.png", b"x")
    with (
        pytest.raises(SsrrError, match=r"traversal\.zip: refused member '\.\./\.\./escape\.png'"),
        open_members(traversal) as members,
    ):
        list(members)
    symlink = tmp_path / "symlink.zip"
    with zipfile.ZipFile(symlink, "w") as archive:
        info = zipfile.ZipInfo("train/a/link.png")
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")
    with (
        pytest.raises(SsrrError, match=r"symlink\.zip: refused member 'train/a/link\.png': symlink"),
        open_members(symlink) as members,
    ):
        list(members)


# ---------------------------------------------------------------------------------- bad sources


def test_missing_source(tmp_path: Path) -> None:
    result = run_ssrr("shard", "cifar10", "--source", tmp_path / "nope.tar.gz", "--out", tmp_path)
    assert result.exit_code == 1
    assert error_lines(result) == [f"Error: {tmp_path / 'nope.tar.gz'}: no such file or folder"]


def test_truncated_archive(tmp_path: Path) -> None:
    path, _ = make_cifar10(tmp_path)
    data = path.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[: len(data) // 2])
    result = run_ssrr("shard", "cifar10", "--source", cut, "--out", tmp_path / "out")
    assert result.exit_code == 1 and len(error_lines(result)) == 1
    assert f"{cut}: truncated or corrupt archive" in error_lines(result)[0]
    assert not (tmp_path / "out" / "cifar10").exists()


def test_truncated_uncompressed_tar(tmp_path: Path) -> None:
    root, _ = make_imagefolder(tmp_path)
    whole = tmp_path / "pets.tar"
    with tarfile.open(whole, "w") as tar:
        tar.add(root, arcname="pets")
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2 + 100])
    result = run_ssrr("shard", "imagefolder", cut, "--out", tmp_path / "out")
    assert result.exit_code == 1 and len(error_lines(result)) == 1
    assert str(cut) in error_lines(result)[0]


@pytest.mark.parametrize(
    "dataset,content,message",
    [
        ("cifar10", b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, "not a tar or zip archive"),
        ("stl10", b"hello world\n" * 10, "not a tar or zip archive"),
        ("tiny-imagenet", b"", "empty file"),
    ],
)
def test_wrong_format(tmp_path: Path, dataset: str, content: bytes, message: str) -> None:
    path = tmp_path / "wrong.bin"
    path.write_bytes(content)
    result = run_ssrr("shard", dataset, "--source", path, "--out", tmp_path / "out")
    assert result.exit_code == 1 and len(error_lines(result)) == 1
    assert error_lines(result)[0].startswith(f"Error: {path}: {message}")


def test_valid_archive_of_the_wrong_dataset(tmp_path: Path) -> None:
    path, _ = make_cifar10(tmp_path)
    for dataset, message in (
        ("cifar100", "not a CIFAR-100 python archive (missing train, test, meta)"),
        ("stl10", "not an STL-10 binary archive"),
        ("tiny-imagenet", "not a tiny-imagenet-200 tree"),
        ("imagefolder", "no image files"),
    ):
        result = run_ssrr("shard", dataset, "--source", path, "--out", tmp_path / "out")
        assert result.exit_code == 1, dataset
        assert error_lines(result) and message in error_lines(result)[0], (dataset, result.output)


def test_official_archive_name_with_wrong_md5_is_refused(tmp_path: Path) -> None:
    path, _ = make_cifar10(tmp_path, name=download.ARCHIVES["cifar10"].filename)
    result = run_ssrr("shard", "cifar10", "--source", path, "--out", tmp_path / "out")
    assert result.exit_code == 1
    line = error_lines(result)[0]
    assert f"{path}: md5" in line and download.ARCHIVES["cifar10"].md5 in line and "not the official" in line


def test_unknown_dataset_and_bad_options(tmp_path: Path) -> None:
    result = run_ssrr("shard", "mnist", "--out", tmp_path)
    assert result.exit_code == 1 and "unknown dataset 'mnist'" in error_lines(result)[0]
    result = run_ssrr("shard", "synthetic", "--name", "../escape", "--out", tmp_path)
    assert result.exit_code == 1 and "--name" in error_lines(result)[0]
    result = run_ssrr("shard", "cifar10", "--size", "8", "--source", tmp_path, "--out", tmp_path)
    assert result.exit_code == 1 and "--size applies only to" in error_lines(result)[0]
    result = run_ssrr("shard", "imagefolder", "--out", tmp_path)
    assert result.exit_code == 1 and "imagefolder needs --source" in error_lines(result)[0]


def test_error_is_one_line_on_real_stderr(tmp_path: Path) -> None:
    missing = tmp_path / "missing.tar.gz"
    done = subprocess.run(
        [sys.executable, "-m", "ssrr", "shard", "cifar100", "--source", str(missing), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert [line for line in done.stderr.splitlines() if line.strip()][
        -1
    ] == f"Error: {missing}: no such file or folder"
    assert done.stdout == ""


def test_folder_members_skip_hidden(tmp_path: Path) -> None:
    (tmp_path / "a" / ".git").mkdir(parents=True)
    (tmp_path / "a" / ".git" / "x").write_bytes(b"1")
    (tmp_path / "a" / "y").write_bytes(b"22")
    with open_members(tmp_path / "a") as members:
        assert [(m.name, m.read()) for m in members] == [("y", b"22")]

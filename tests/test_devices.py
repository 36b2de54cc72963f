"""One device rule for every command (ssrr/devices.py): `auto` says why a present GPU goes unused, `cuda` without a
usable GPU is one line naming the reason, and pretrain / bench refuse before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fixtures_data import error_lines, run_ssrr

from ssrr import devices
from ssrr.devices import CudaFacts, choose_device, cuda_facts, cuda_problem
from ssrr.errors import SsrrError

REPO = Path(__file__).resolve().parent.parent
USABLE = CudaFacts(torch_cuda="13.0", dali_cuda="13.0", driver_cuda="13.0", driver_version="580.65.06", torch_sees=1)
NO_GPU = CudaFacts(torch_cuda="13.0", dali_cuda="13.0", driver_cuda=None, driver_version=None, torch_sees=0)
OLD_DRIVER = CudaFacts(torch_cuda="13.0", dali_cuda="13.0", driver_cuda="12.8", driver_version="570.1", torch_sees=0)
DALI_TOO_NEW = CudaFacts(torch_cuda="12.6", dali_cuda="13.0", driver_cuda="12.8", driver_version="570.1", torch_sees=1)
CPU_TORCH = CudaFacts(torch_cuda=None, dali_cuda="13.0", driver_cuda="13.0", driver_version="580.1", torch_sees=0)


def _probes(monkeypatch: pytest.MonkeyPatch, *, available: bool, count: int, driver: str | None, cuda: str) -> None:
    """Replace every probe: torch's view of the GPU, the driver, and the builds."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.version, "cuda", cuda)
    monkeypatch.setattr(devices, "driver_cuda", lambda: driver)
    monkeypatch.setattr(devices, "driver_version", lambda: "570.86" if driver else None)
    monkeypatch.setattr(devices, "dali_cuda", lambda: "13.0")


def test_probes_feed_the_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    _probes(monkeypatch, available=True, count=2, driver="13.0", cuda="13.0")
    assert cuda_facts().torch_sees == 2
    assert choose_device("auto") == torch.device("cuda")
    assert choose_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(SsrrError, match="CUDA device 2 does not exist"):
        choose_device("cuda:2")
    _probes(monkeypatch, available=False, count=0, driver="12.8", cuda="13.0")
    with pytest.raises(SsrrError, match=r"driver 570\.86, CUDA 12\.8 is too old for torch's CUDA 13\.0 build"):
        choose_device("cuda")
    _probes(monkeypatch, available=False, count=0, driver=None, cuda="13.0")
    with pytest.raises(SsrrError, match="no CUDA GPU"):
        choose_device("cuda")


@pytest.mark.parametrize(
    ("facts", "reason"),
    [
        (NO_GPU, "no CUDA GPU on this machine"),
        (OLD_DRIVER, "too old for torch's CUDA 13.0 build; install: pip install \"torch"),
        (DALI_TOO_NEW, "DALI's CUDA 13.0 build does not match the NVIDIA driver 570.1, CUDA 12.8"),
        (CPU_TORCH, "CPU-only build without CUDA; install: pip install -e ."),
    ],
)
def test_cuda_without_a_usable_gpu_names_the_reason(facts: CudaFacts, reason: str) -> None:
    with pytest.raises(SsrrError) as caught:
        choose_device("cuda", facts=facts)
    message = str(caught.value)
    assert message.startswith("--device cuda: ") and reason in message and "\n" not in message


def test_auto_says_why_a_present_gpu_is_unused() -> None:
    said: list[str] = []
    assert choose_device("auto", facts=OLD_DRIVER, warn=said.append) == torch.device("cpu")
    assert len(said) == 1 and "GPU is present but unusable" in said[0] and "too old" in said[0]
    said.clear()
    assert choose_device("auto", facts=NO_GPU, warn=said.append) == torch.device("cpu")
    assert said == []  # no GPU at all: the CPU without a word
    assert choose_device("auto", facts=USABLE, warn=said.append) == torch.device("cuda")
    assert choose_device("gpu", facts=USABLE) == torch.device("cuda")
    assert choose_device("cpu", facts=OLD_DRIVER, warn=said.append) == torch.device("cpu") and said == []
    assert cuda_problem(USABLE) is None


def test_not_a_device_is_one_line() -> None:
    with pytest.raises(SsrrError, match="not a device"):
        choose_device("tpu", facts=USABLE)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a usable GPU")
def test_cli_cuda_without_gpu_exits_in_one_line_writing_nothing(tmp_path: Path, tiny_shards: Path) -> None:
    runs = tmp_path / "runs"
    done = run_ssrr(
        "pretrain", "--dataset", tiny_shards, "--backbone", "conv4", "--epochs", "1", "--max-steps", "2",
        "--device", "cuda", "--out", runs, "--name", "x",
    )  # fmt: skip
    assert done.exit_code != 0 and len(error_lines(done)) == 1 and "CUDA" in error_lines(done)[0], done.output
    assert not runs.exists()
    records = REPO / "docs" / "benchmarks.md"
    before = records.read_bytes()
    done = run_ssrr("bench", "e2e", "--dataset", tiny_shards, "--device", "cuda", "--json")
    assert done.exit_code != 0 and len(error_lines(done)) == 1 and "CUDA" in error_lines(done)[0], done.output
    assert "{" not in done.stdout and records.read_bytes() == before


def test_env_names_the_builds() -> None:
    done = run_ssrr("env", "--json")
    assert done.exit_code == 0, done.output
    info = json.loads(done.stdout)
    assert info["torch"]["version"] == torch.__version__ and "cuda_build" in info["torch"]
    assert info["dali"]["version"] and "cuda_build" in info["dali"]
    assert info["amp"]["precision"] in ("bf16", "fp16", "fp32") and info["device_auto"] in ("cpu", "cuda")
    text = run_ssrr("env")
    assert text.exit_code == 0 and "torch: " in text.stdout and "DALI: " in text.stdout and "--amp: " in text.stdout

"""`ssrr bench summary`: the headline table regenerated from recorded results, machine and history included."""

from __future__ import annotations

from pathlib import Path

import pytest

import ssrr.bench.record as record_module
from ssrr.bench.record import record
from ssrr.bench.summary import END, START, read_blocks, write_summary

E2E = {
    "views_per_s": 6000.0,
    "data_wait": 0.02,
    "baseline_views_per_s": 1500.0,
    "ratio": 4.0,
    "baseline_settings": {"best": {"workers": 1, "threads": 1}, "tried": [{}, {}, {}]},
    "baseline_suspect": False,
    "step_limit": {"fraction_of_peak": 0.25},
    "thread_plan": {"torch_threads": 1, "dali_threads": 1, "pinned": False, "source": "measured"},
    "authors_views_per_s": 2000.0,
    "ratio_to_authors": 3.0,
}
PIPELINE = {
    "views_per_s": 20000.0,
    "baseline_views_per_s": 2500.0,
    "baselines": {"pil": 2500.0, "tv2": 1800.0},
    "ratio": 8.0,
}


def test_the_summary_is_rewritten_from_the_records_in_every_file_with_markers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench, readme = tmp_path / "benchmarks.md", tmp_path / "README.md"
    monkeypatch.setattr(record_module, "machine", lambda: {"cpu": "Old CPU (avx2)", "cores": 2})
    record("pipeline-cpu-k32-m64", PIPELINE, path=bench, command="ssrr bench pipeline --json")
    monkeypatch.setattr(record_module.time, "gmtime", lambda: (2027, 1, 1, 0, 0, 0, 0, 1, 0))
    monkeypatch.setattr(
        record_module, "machine", lambda: {"cpu": "New CPU (avx512)", "cpu_flags": ["avx512_bf16"], "cores": 2}
    )
    record("e2e-conv4-k32-m64-cpu-bf16", E2E, path=bench, command="ssrr bench e2e --json")
    bench.write_text(bench.read_text() + f"\n{START}\nstale\n{END}\n")
    readme.write_text(f"# x\n\n{START}\n{END}\n\nafter\n")
    assert [b.name for b in read_blocks(bench)] == ["pipeline-cpu-k32-m64", "e2e-conv4-k32-m64-cpu-bf16"]
    assert write_summary(bench, [bench, readme, tmp_path / "missing.md"]) == [bench, readme]
    text = readme.read_text()
    assert "stale" not in bench.read_text() and text.endswith("\n\nafter\n")
    e2e_row = next(line for line in text.splitlines() if "e2e-conv4" in line)
    assert "**4.0x**" in e2e_row and "1 workers, 1 threads" in e2e_row and "avx512_bf16" in e2e_row
    assert "25% of the GEMM peak" in e2e_row and "history" not in e2e_row
    assert "torch 1 + DALI 1 threads" in e2e_row and "the authors' settings 2,000 views/s (**3.0x**)" in e2e_row
    assert "pipeline-cpu" not in text  # the README shows the newest machine's rows only
    pipeline_row = next(line for line in bench.read_text().splitlines() if "pipeline-cpu" in line and "|" in line)
    assert "**8.0x**" in pipeline_row and "tv2 1,800 views/s" in pipeline_row
    assert "history: another machine" in pipeline_row  # recorded on the older machine
    rows = [line for line in bench.read_text().splitlines() if line.startswith("| ") and "`" in line]
    assert "e2e-conv4" in rows[0] and "pipeline-cpu" in rows[1]  # the current machine's rows first


def test_an_e2e_row_names_which_authors_side_it_timed() -> None:
    from ssrr.bench.summary import _e2e

    transcription = _e2e({**E2E, "authors_settings": {"code": "transcription"}})[1]
    checkout = _e2e({**E2E, "authors_settings": {"code": "checkout", "repo": "/x"}})[1]
    assert "the authors' settings 2,000 views/s (**3.0x**)" in transcription
    assert "the authors' own code 2,000 views/s (**3.0x**)" in checkout

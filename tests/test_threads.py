"""Thread plans: the grid, the choice, the per-machine cache, and a run that times its plans (ssrr/threads.py,
ssrr/train/threads.py)."""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

import pytest
import torch
from fixtures_data import run_config
from safetensors.torch import load_file

from ssrr.threads import ThreadPlan, cached_plan, candidate_plans, fastest, machine_key, remember_plan
from ssrr.train import threads as train_threads
from ssrr.train.checkpoint import list_checkpoints
from ssrr.train.loop import pretrain


def test_the_grid_tries_one_and_all_cores_on_each_side_and_the_disjoint_split_pinned() -> None:
    plans = candidate_plans(2)
    assert plans[0] == ThreadPlan(2, 2)  # the defaults first: a tie keeps them
    assert set(plans) == {
        ThreadPlan(2, 2),
        ThreadPlan(2, 1),
        ThreadPlan(1, 2),
        ThreadPlan(1, 1),
        ThreadPlan(1, 1, True),
    }
    assert candidate_plans(1) == [ThreadPlan(1, 1)]  # one core: nothing to choose, nothing to pin apart
    assert {p.torch_threads for p in candidate_plans(4, torch_threads=3)} == {3}  # a typed side stays fixed
    assert {p.dali_threads for p in candidate_plans(4, dali_threads=2)} == {2}
    assert ThreadPlan(3, 1, True) in candidate_plans(4, torch_threads=3)


def test_a_pinned_plan_gives_the_pipeline_and_the_step_disjoint_cores_covering_the_machine() -> None:
    plan = ThreadPlan(3, 1, pinned=True)
    pipeline, step = plan.pipeline_cpus({0, 1, 2, 3}), plan.step_cpus({0, 1, 2, 3})
    assert pipeline == {3} and step == {0, 1, 2}
    assert ThreadPlan(1, 1).pipeline_cpus({0, 1}) is None  # unpinned: any core
    assert ThreadPlan(1, 2, pinned=True).step_cpus({0, 1}) is None  # no core left for the step: not pinned


def test_the_fastest_plan_wins_unless_it_beats_the_default_only_by_noise() -> None:
    default, other = ThreadPlan(2, 2), ThreadPlan(1, 1)
    assert fastest({default: 1.0, other: 0.8}) == other
    assert fastest({default: 1.0, other: 0.99}) == default  # within 3%: the defaults stay
    assert fastest({default: 0.5, other: 0.8}) == default
    with pytest.raises(ValueError):
        fastest({})


def test_the_cache_keeps_one_plan_per_machine_and_workload_and_survives_garbage(tmp_path: Path) -> None:
    path = tmp_path / "plans.json"
    conv4, resnet = {"backbone": "conv4", "k": 32}, {"backbone": "resnet32", "k": 32}
    assert cached_plan(conv4, path) is None
    remember_plan(conv4, ThreadPlan(1, 1, True), {ThreadPlan(1, 1, True): 0.3, ThreadPlan(2, 2): 0.4}, path)
    remember_plan(resnet, ThreadPlan(2, 1), {ThreadPlan(2, 1): 2.0}, path)
    assert cached_plan(conv4, path) == ThreadPlan(1, 1, True)
    assert cached_plan(dict(reversed(list(conv4.items()))), path) == ThreadPlan(1, 1, True)  # key order ignored
    assert cached_plan(resnet, path) == ThreadPlan(2, 1)
    assert machine_key() in json.loads(path.read_text())
    path.write_text("{not json")
    assert cached_plan(conv4, path) is None  # a broken cache is an empty one ...
    remember_plan(conv4, ThreadPlan(1, 2), {ThreadPlan(1, 2): 0.3}, path)  # ... and is rewritten whole
    assert cached_plan(conv4, path) == ThreadPlan(1, 2)


_config = partial(run_config, epochs=1, num_threads=None)  # DALI's threads left to the plan


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="a thread plan needs two cores to choose between")
def test_a_timed_run_records_its_plan_caches_it_and_trains_as_if_nothing_had_been_timed(
    tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSRR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(train_threads, "MIN_STEPS", 1)  # time plans even for this short run
    monkeypatch.setattr(train_threads, "TIMED_STEPS", 9)  # past the end of an epoch of 8 steps
    monkeypatch.setattr(train_threads, "WARMUP_STEPS", 1)
    threads_before, cpus_before = torch.get_num_threads(), os.sched_getaffinity(0)
    timed = pretrain(_config(tiny_shards, tmp_path / "a"), show=False).run_dir
    assert (torch.get_num_threads(), os.sched_getaffinity(0)) == (threads_before, cpus_before)  # put back
    recorded = json.loads((timed / "environment.json").read_text())["thread_plan"]
    assert recorded["source"] == "measured" and len(recorded["step_s"]) == len(candidate_plans(len(cpus_before)))
    assert json.loads((timed / "throughput.json").read_text())["thread_plan"] == recorded
    chosen = ThreadPlan(recorded["torch_threads"], recorded["dali_threads"], recorded["pinned"])
    assert chosen in candidate_plans(len(cpus_before))
    again = pretrain(_config(tiny_shards, tmp_path / "b"), show=False).run_dir  # the same workload: cached
    assert json.loads((again / "environment.json").read_text())["thread_plan"]["source"] == "cached"
    typed = _config(tiny_shards, tmp_path / "c", threads=chosen.torch_threads, num_threads=chosen.dali_threads)
    plain = pretrain(typed, show=False).run_dir
    assert json.loads((plain / "environment.json").read_text())["thread_plan"]["source"] == "typed"
    first, second = (load_file(str(list_checkpoints(run)[-1] / "model.safetensors")) for run in (timed, plain))
    assert first.keys() == second.keys()
    for name in first:  # the timing steps trained a model that was then put back as it was
        assert torch.equal(first[name], second[name]), name


def test_short_runs_keep_the_default_plan_and_typed_threads(tiny_shards: Path, tmp_path: Path) -> None:
    run = pretrain(_config(tiny_shards, tmp_path, max_steps=2, threads=1, num_threads=2), show=False).run_dir
    recorded = json.loads((run / "environment.json").read_text())["thread_plan"]
    assert (recorded["torch_threads"], recorded["dali_threads"], recorded["source"]) == (1, 2, "typed")
    run = pretrain(_config(tiny_shards, tmp_path, name="short", max_steps=2), show=False).run_dir
    assert json.loads((run / "environment.json").read_text())["thread_plan"]["source"] == "default"


def test_a_resumed_run_keeps_its_plan(tiny_shards: Path, tmp_path: Path) -> None:
    pretrain(_config(tiny_shards, tmp_path, threads=1, num_threads=1), show=False)
    run = pretrain(_config(tiny_shards, tmp_path, epochs=2), resume=True, show=False).run_dir
    recorded = json.loads((run / "environment.json").read_text())["thread_plan"]
    assert (recorded["torch_threads"], recorded["dali_threads"], recorded["source"]) == (1, 1, "resumed")

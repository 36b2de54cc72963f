"""CPU CI executes the GPU's whole pipeline: for every recipe and encoding, the graph the GPU runs is defined (no GPU
needed to define it), the same graph is placed on the CPU and run, and the two are compared operator for operator,
argument for argument, apart from where data lives and the decoder's backend (nvJPEG's `mixed` vs `cpu`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ssrr.pipelines import recipes
from ssrr.pipelines.graph import graph_ops
from ssrr.pipelines.loader import ViewLoader
from ssrr.pipelines.synthetic import write_synthetic

HOST_OPS = ("webdataset", "external_source", "per_frame")  # the GPU's graph keeps these on the CPU: reading, draws

RECIPES = {
    "relational": (lambda: recipes.relational(3), True, None),
    "simclr": (recipes.simclr, True, None),
    "rotation": (lambda: recipes.rotation(4), True, None),
    "supervised": (lambda: recipes.crop_flip(4), True, None),  # the authors' supervised and rotation crop
    "infomax": (recipes.flip, True, None),
    "eval": (recipes.evaluation, False, None),
    "eval-resized": (recipes.evaluation, False, 24),  # another resolution: the resize before the views
}


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("parity")
    return {
        encoding: write_synthetic(out, encoding, train=16, test=8, shard_size=8, encoding=encoding)
        for encoding in ("raw", "jpeg")
    }


def _placement_free(ops: list[dict[str, object]]) -> list[dict[str, object]]:
    return [{key: value for key, value in op.items() if key != "device"} for op in ops]


@pytest.mark.parametrize("encoding", ["raw", "jpeg"])
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_the_gpu_graph_runs_on_the_cpu_operator_for_operator(shards: dict[str, Path], encoding: str, name: str) -> None:
    make, training, side = RECIPES[name]
    recipe = make()
    loader = ViewLoader(shards[encoding], recipe, batch_size=4, training=training, steps_per_run=1, image_size=side)
    gpu_spec = loader.spec(0, gpu=True)
    gpu_ops = graph_ops(loader.define(0, gpu_spec))
    loader.contrast = gpu_spec.contrast  # the CPU now runs the GPU's form, placed on the CPU
    twin_ops = graph_ops(loader.define(0))
    assert _placement_free(gpu_ops) == _placement_free(twin_ops)
    # The GPU's graph really runs on the GPU: on the host only reading, the parameters and the raw bytes' reshape.
    on_host = [op for op in gpu_ops if op["device"] == "cpu" and op["op"] not in HOST_OPS]
    reader = next(i for i, op in enumerate(gpu_ops) if "webdataset" in str(op["op"]))
    assert all(op["op"] == "reshape" and op["inputs"][0][0] == reader for op in on_host), on_host  # type: ignore[index]
    assert encoding == "raw" or not on_host
    assert any(op["device"] == "mixed" for op in gpu_ops) == (encoding == "jpeg")  # nvJPEG decodes encoded shards
    assert {str(op["device"]) for op in twin_ops} == {"cpu"}
    if recipe.colour:  # the GPU's contrast form differs from the CPU's default: the twin is not the usual graph
        assert gpu_spec.contrast != loader.spec(0, gpu=False).contrast or loader.contrast == "arith"
        loader.contrast = None
        assert _placement_free(graph_ops(loader.define(0))) != _placement_free(twin_ops)
        loader.contrast = gpu_spec.contrast
    batch = next(iter(loader.epoch(0)))  # the GPU's graph, executed
    out_side = side or 32
    assert batch.views.shape == (recipe.views * 4, 3, out_side, out_side)
    assert torch.isfinite(batch.views).all() and batch.views.std() > 0.1
    assert batch.valid.all() and batch.fine.dtype == torch.int64

# ssrr tasks. `pip install -e ".[dev]"` brings `just` itself (the rust-just package).

# The main job end to end on the embedded synthetic data: shard, pretrain, linear evaluation vs random weights.
demo:
    ssrr demo

# The default test suite (what CI runs); `just test-slow` runs the slow checks (real CIFAR-10, every method).
test:
    pytest

test-slow:
    pytest -m "slow"

# scripts/test_cpus.py; narrowed by `--only generic -- tests/test_eval_tsne.py` or `--numerics`.
# The default suite under each CPU personality in turn: native, avx2, generic, bf16 (each named in the output).
test-cpus *ARGS:
    python scripts/test_cpus.py {{ARGS}}

# The default suite with the oldest declared dependencies (constraints/oldest.txt, a venv in .venvs/oldest).
test-oldest *ARGS:
    bash scripts/test_deps.sh oldest {{ARGS}}

# The default suite with the newest released dependencies (constraints/newest.txt, a venv in .venvs/newest).
test-newest *ARGS:
    bash scripts/test_deps.sh newest {{ARGS}}

lint:
    ruff check .
    ruff format --check .

typecheck:
    mypy

# Shard the real CIFAR-10 (JPEG) data in ../shared/data for the benchmarks.
shard-cifar10:
    ssrr shard imagefolder ../shared/data/cifar10-jpeg.tar.gz --name cifar10-jpeg

# Every benchmark in turn (never two at once on a 2-core machine); each records itself in docs/benchmarks.md,
# then the summary table there and in the README is regenerated from those records.
bench: shard-cifar10
    ssrr bench shard --source ../shared/data/cifar10-jpeg.tar.gz --json
    ssrr bench shard --encodings raw,jpeg,png,webp --side 224 --per-class 30 --steps 6 --repeats 3 --json
    ssrr bench pipeline --dataset shards/cifar10-jpeg --k 32 --batch 64 --device cpu --json
    ssrr bench step --backbone conv4 --k 32 --batch 64 --json
    ssrr bench step --backbone resnet32 --k 32 --batch 64 --repeats 3 --baseline-repeats 1 --json
    ssrr bench e2e --dataset shards/cifar10-jpeg --backbone conv4 --k 32 --batch 64 --json
    ssrr bench e2e --dataset shards/cifar10-jpeg --backbone conv4 --k 32 --batch 64 --precision fp32 --json
    ssrr bench e2e --dataset shards/cifar10-jpeg --backbone conv4 --k 32 --batch 64 --compile --json
    ssrr bench methods --dataset shards/cifar10-jpeg --backbone conv4 --k 32 --batch 64 --json
    ssrr bench accuracy --dataset shards/cifar10-jpeg --backbone conv4 --k 4 --epochs 3 --target-top1 45 --amp --json
    ssrr bench linear --dataset shards/cifar10-jpeg --json
    ssrr bench summary

# git clone https://github.com/mpatacchiola/self-supervised-relational-reasoning ../official && just bench-authors ../official
# The authors' own training loop (from a checkout of their repository; not part of ssrr) timed beside ours, end to end.
bench-authors checkout: shard-cifar10
    ssrr bench e2e --dataset shards/cifar10-jpeg --backbone conv4 --k 32 --batch 64 --authors-code {{checkout}} --json
    ssrr bench e2e --dataset shards/cifar10-jpeg --backbone conv4 --k 32 --batch 64 --compile --authors-code {{checkout}} --json
    ssrr bench summary

# On a lent GPU machine: one call that checks and times the GPU path and prints one table (scripts/gpu_check.sh);
# `just gpu-check --cpu` runs the same stages on the CPU.
gpu-check *ARGS:
    bash scripts/gpu_check.sh {{ARGS}}

# Here, before a GPU call: the wheels the GPU machine lacks (DALI cuda130 and its needs, webdataset, braceexpand),
# downloaded for Python 3.12 and split into parts under 60 MiB in .gpu1/, .gpu2/, ... (scripts/gpu_prepare.sh).
gpu-prepare *PACKAGES:
    bash scripts/gpu_prepare.sh {{PACKAGES}}

"""`python tests/exit_probe.py <ssrr arguments>`: runs the ssrr command line, then, once the command has returned
(before the interpreter's exit and its atexit hooks), writes this rank's state to $SSRR_EXIT_PROBE/rank<N>.json:
whether a process group is still initialised and which DALI or gloo threads are still running. Used by
tests/test_exit_stress.py under `accelerate launch`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

NATIVE = ("DALI", "PrefetchWorker", "gloo")


def native_threads() -> list[str]:
    names = []
    for task in Path("/proc/self/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
        except OSError:
            continue
        if any(word in name for word in NATIVE):
            names.append(name)
    return sorted(names)


def record() -> None:
    import torch.distributed as dist

    folder = Path(os.environ["SSRR_EXIT_PROBE"])
    folder.mkdir(parents=True, exist_ok=True)
    state = {"process_group": dist.is_initialized(), "native_threads": native_threads()}
    (folder / f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(state))


if __name__ == "__main__":
    sys.argv = ["ssrr", *sys.argv[1:]]
    from ssrr.cli.app import main

    try:
        main()
    finally:
        record()

"""The test suite under several CPU personalities: this machine's own arithmetic, then other machines'.

The math libraries pick their kernels by what the CPU offers; environment variables make them pick another
machine's, so one developer's machine reproduces the rounding of others:

- native: whatever this CPU offers (on a Sapphire Rapids Xeon: AVX-512, native bf16, AMX);
- avx2: an AVX2-only machine (MKL, oneDNN and ATen's own kernels limited to AVX2; bf16 then emulated, so
  `--precision auto` resolves to fp32 as it does there);
- generic: the lowest common denominator (MKL's conditional numerical reproducibility in COMPATIBLE mode,
  oneDNN limited to SSE4.1, its lowest level, ATen's scalar kernels);
- bf16: this CPU with every requested precision replaced by bf16 (SSRR_PRECISION, see README Precision).

Before each run it checks that each setting is in effect (an unknown value is silently ignored by the
libraries) and prints what it found. Usage:

    python scripts/test_cpus.py                          # the default suite under every personality
    python scripts/test_cpus.py --only avx2,generic -- tests/test_eval_tsne.py
    python scripts/test_cpus.py --numerics               # only the tests marked `numerics`

Exit status: 0 when every personality passed, 1 otherwise (2 for bad usage).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

KNOWN_VARIABLES = (
    "MKL_ENABLE_INSTRUCTIONS",
    "MKL_CBWR",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "ATEN_CPU_CAPABILITY",
    "SSRR_PRECISION",
)
NUMERICS_MARK = "numerics and not slow and not gpu"


@dataclass(frozen=True)
class Personality:
    """A CPU personality: the environment that gives it, and what must then be in effect."""

    name: str
    env: dict[str, str]
    expect: dict[str, str] = field(default_factory=dict)  # probe key -> text its value must contain


PERSONALITIES = (
    Personality("native", {}),
    Personality(
        "avx2",
        {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
        {"aten": "AVX2", "onednn": "AVX2", "mkl": "AVX2", "bf16_native": "False"},
    ),
    Personality(
        "generic",
        {"MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default"},
        {"aten": "DEFAULT", "onednn": "SSE4.1", "mkl": "CNR:COMPATIBLE", "bf16_native": "False"},
    ),
    Personality("bf16", {"SSRR_PRECISION": "bf16"}, {"fp32_runs_as": "bf16"}),
)

# Run in a child process with the personality's environment: which kernels each library picked.
PROBE = r"""
import json, os, re, subprocess, sys
import torch
from ssrr.hardware import native_bf16
from ssrr.precision import resolve
torch.nn.Conv2d(16, 32, 3)(torch.randn(8, 16, 32, 32))  # oneDNN: its verbose mode names the ISA in use
b = torch.randn(64, 64)
b @ b                       # an MKL sgemm: its verbose mode names the ISA and the reproducibility mode
print(json.dumps({"aten": torch.backends.cpu.get_cpu_capability(), "bf16_native": str(native_bf16("cpu")),
                  "fp32_runs_as": resolve("fp32", "cpu").precision}))
"""


def personality_env(personality: Personality, verbose: bool = False) -> dict[str, str]:
    """The process environment for a personality: any inherited personality variable removed first."""
    env = {k: v for k, v in os.environ.items() if k not in KNOWN_VARIABLES}
    env.update(personality.env)
    if verbose:
        env.update({"ONEDNN_VERBOSE": "1", "MKL_VERBOSE": "1"})
    return env


def probe(personality: Personality) -> dict[str, str]:
    """What is in effect under a personality: ATen's capability, oneDNN's ISA, MKL's ISA and CNR mode, bf16."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=personality_env(personality, verbose=True), capture_output=True, text=True
    )
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["probe failed"])[-1]}
    lines = done.stdout.splitlines()
    found: dict[str, str] = json.loads(lines[-1])
    found["onednn"] = next((ln.split("isa:", 1)[1] for ln in lines if ",cpu,isa:" in ln), "n/a")
    header = next((ln for ln in lines if ln.startswith("MKL_VERBOSE oneMKL") or ln.startswith("MKL_VERBOSE Intel")), "")
    call = next((ln for ln in lines if "CNR:" in ln), "")
    isa = header.split(" for ", 1)[1].split(", Lnx")[0] if " for " in header else "n/a"
    cnr = "CNR:" + call.split("CNR:", 1)[1].split()[0] if call else "CNR:n/a"
    found["mkl"] = f"{isa.replace('Intel(R) 64 architecture ', '').replace('Intel(R) ', '')} {cnr}"
    return found


def check(personality: Personality, found: dict[str, str]) -> list[str]:
    """The settings of a personality that are not in effect (empty when all are)."""
    if "error" in found:
        return [f"probe failed: {found['error']}"]
    return [
        f"{key}: expected {want!r}, found {found.get(key, 'n/a')!r}"
        for key, want in personality.expect.items()
        if want not in found.get(key, "")
    ]


def describe(personality: Personality, found: dict[str, str]) -> str:
    settings = " ".join(f"{k}={v}" for k, v in personality.env.items()) or "(no variables)"
    effect = (
        f"ATen {found.get('aten')}; oneDNN {found.get('onednn')}; MKL {found.get('mkl')}; "
        f"bf16 native {found.get('bf16_native')}; --precision fp32 runs {found.get('fp32_runs_as')}"
    )
    return f"{settings}\n   in effect: {effect}"


def run_personality(personality: Personality, pytest_args: list[str]) -> tuple[bool, str]:
    """Probe, check, then run pytest under one personality; (passed, one-line outcome)."""
    print(f"\n=== personality {personality.name}: ", end="", flush=True)
    found = probe(personality)
    print(describe(personality, found), flush=True)
    missing = check(personality, found)
    if missing:
        return False, "settings not in effect: " + "; ".join(missing)
    start = time.monotonic()
    rc = subprocess.run([sys.executable, "-m", "pytest", *pytest_args], env=personality_env(personality)).returncode
    took = f"{time.monotonic() - start:.0f} s"
    outcomes = {0: "passed", 5: "no tests collected"}
    return rc == 0, f"{outcomes.get(rc, f'FAILED (pytest exit {rc})')} in {took}"


def parse(argv: list[str]) -> tuple[list[Personality], list[str]]:
    names = [p.name for p in PERSONALITIES]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help=f"comma-separated personalities (default: all of {', '.join(names)})")
    parser.add_argument("--skip", default="", help="comma-separated personalities to leave out")
    parser.add_argument("--numerics", action="store_true", help=f"only the tests marked: -m '{NUMERICS_MARK}'")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args(argv)
    chosen = args.only.split(",") if args.only else names
    skipped = [s for s in args.skip.split(",") if s]
    unknown = sorted(set(chosen + skipped) - set(names))
    if unknown:
        parser.error(f"unknown personality {', '.join(unknown)}: choose from {', '.join(names)}")
    selected = [p for p in PERSONALITIES if p.name in chosen and p.name not in skipped]
    return selected, (["-m", NUMERICS_MARK] if args.numerics else []) + args.pytest_args


def main(argv: list[str]) -> int:
    personalities, pytest_args = parse(argv)
    results = [(p.name, *run_personality(p, pytest_args)) for p in personalities]
    print("\n=== CPU personalities")
    for name, _, outcome in results:
        print(f"{name:8} {outcome}")
    return 0 if results and all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

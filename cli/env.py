"""`ssrr env`: the versions, builds, driver, GPUs and CPU ssrr runs with, and what `--amp` picks here."""

from __future__ import annotations

import json

import typer


def register(app: typer.Typer) -> None:
    @app.command("env")
    def env(as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
        """Python, torch and DALI with their CUDA builds, accelerate, the driver, each GPU, the CPU's flags, what
        --device auto and --amp pick on this machine, and the install line that fits the driver when the builds
        do not.

        Example: ssrr env --json
        """
        from ssrr.environment import environment, environment_lines

        report = environment()
        if as_json:
            typer.echo(json.dumps(report))
        else:
            typer.echo("\n".join(environment_lines(report)))

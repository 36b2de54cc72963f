"""The `ssrr` command line (installed as `ssrr.cli`): a thin Typer face over the library."""

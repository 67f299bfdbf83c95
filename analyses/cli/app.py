"""The typer app and the console entry point: a toolkit error is one red line and exit code 2.
"""

from __future__ import annotations
import sys
from typing import Optional
import typer
from rich.console import Console


app = typer.Typer(
    help="Look inside causal language models: hook points, massive activations, ablations, geometry.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


out = Console()


err = Console(stderr=True)


def main(argv: Optional[list[str]] = None) -> None:
    """Console-script entry: run the app, turning toolkit errors into one red line and exit 2.

    Usage errors (bad options) are click's own: a usage message and exit 2.
    """
    from probe.errors import ProbeError

    try:
        app(args=argv)
    except ProbeError as exc:
        err.print(f"[red]error:[/red] {exc}", soft_wrap=True, highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print(f"[red]{INTERRUPTED}[/red]", soft_wrap=True)
        sys.exit(130)
    except SystemExit as exc:  # typer turns Ctrl-C into a silent exit 130
        if exc.code == 130:
            err.print(f"[red]{INTERRUPTED}[/red]", soft_wrap=True)
        raise


INTERRUPTED = "interrupted: nothing was written (a previous report stays as it was); the model was restored"

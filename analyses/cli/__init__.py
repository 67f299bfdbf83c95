"""The ``probe`` command line: one module per command group, registered on :data:`app`.

- :mod:`.app` — the typer app and :func:`main` (a toolkit error is one red line, exit code 2);
- :mod:`.options` — options shared by the commands, parsers of their values, model loading;
- :mod:`.render` — the rich tables the commands print;
- :mod:`.inspect` (``models``, ``info``), :mod:`.massive` (``scan``), :mod:`.ablate`,
  :mod:`.geometry` (``geometry``, ``lid``, ``collapse``), :mod:`.report`,
  :mod:`.training` (``finetune``, ``compare``, ``grok``).

The commands import the analyses they run inside their bodies, so ``probe --help`` stays fast.
"""

from analyses.cli.app import app, main

# imported for their commands, in the order ``probe --help`` lists them
from analyses.cli import inspect, massive, sinks, ablate, census, geometry, report, training  # noqa: E402, I001

__all__ = ["app", "main", "ablate", "census", "geometry", "inspect", "massive", "report", "sinks", "training"]

if __name__ == "__main__":
    main()

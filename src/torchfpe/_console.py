"""The ``torchfpe`` console script: names the extra to install when the CLI's packages are missing."""

from __future__ import annotations

import sys

#: Packages of the ``experiments`` extra that the command line needs.
CLI_PACKAGES = ("typer", "click", "rich", "yaml", "pandas", "matplotlib", "scipy")


def main() -> None:
    try:
        from .lab.cli import app
    except ModuleNotFoundError as error:
        top = (error.name or "").split(".")[0]
        if top not in CLI_PACKAGES:
            raise
        print(f"error: the torchfpe command needs the 'experiments' extra (missing package {top!r}): "
              "pip install 'torchfpe[experiments]'", file=sys.stderr)
        raise SystemExit(1) from None
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

"""The ``torchfpe`` console script: names the package and the extra to install when the CLI's packages are missing."""

from __future__ import annotations

import sys

#: The modules the command line imports when it starts (``torchfpe --help``), each with the extra that
#: declares its distribution in pyproject.toml (tests/test_install.py checks both against the code).
CLI_PACKAGES = {
    "typer": ("typer", "experiments"),
    "click": ("click", "experiments"),
    "rich": ("rich", "experiments"),
    "yaml": ("pyyaml", "experiments"),
    "pandas": ("pandas", "experiments"),
    "matplotlib": ("matplotlib", "experiments"),
    "scipy": ("scipy", "experiments"),
}


def missing_message(module: str) -> str | None:
    """What to tell a user whose CLI start failed on ``module`` (``None``: not one of the CLI's packages)."""
    top = module.split(".")[0]
    if top not in CLI_PACKAGES:
        return None
    distribution, extra = CLI_PACKAGES[top]
    return (f"error: the torchfpe command needs the package {distribution!r} of the {extra!r} extra: "
            f"pip install 'torchfpe[{extra}]' (or pip install {distribution}, if that extra is installed "
            "from an older torchfpe)")


def main() -> None:
    try:
        from .lab.cli import app
    except ModuleNotFoundError as error:
        message = missing_message(error.name or "")
        if message is None:
            raise
        print(message, file=sys.stderr)
        raise SystemExit(1) from None
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

"""Issue 20 item 6: every import is declared in pyproject.toml, the CLI's in the extra it names; --version."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import torchfpe
from torchfpe._console import CLI_PACKAGES

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
#: import names whose distribution is not the import name (the rest: lower case, "_" -> "-")
DISTRIBUTIONS = {"PIL": "pillow", "yaml": "pyyaml", "sklearn": "scikit-learn"}


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements() -> dict[str, set[str]]:
    """``{"": core distributions, extra: its distributions}`` from pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    name = lambda requirement: normalized(re.match(r"[A-Za-z0-9._-]+", requirement).group(0))  # noqa: E731
    extras = {extra: {name(r) for r in reqs} for extra, reqs in project["optional-dependencies"].items()}
    return {"": {name(r) for r in project["dependencies"]}, **extras}


def distribution(module: str) -> str:
    return normalized(DISTRIBUTIONS.get(module, module))


def third_party(tree: ast.AST, module_level_only: bool) -> set[str]:
    """Top-level names of the absolute imports in ``tree`` outside the standard library and torchfpe."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if module_level_only and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue  # runs on call, not on import
            if isinstance(child, ast.Import):
                found.update(alias.name.split(".")[0] for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.add(child.module.split(".")[0])
            visit(child)

    visit(tree)
    return {name for name in found if name not in sys.stdlib_module_names and name != "torchfpe"}


def test_every_third_party_import_is_declared_in_some_extra():
    declared = set().union(*requirements().values())
    undeclared = {}
    for path in SRC.rglob("*.py"):
        for module in third_party(ast.parse(path.read_text()), module_level_only=False):
            if distribution(module) not in declared:
                undeclared.setdefault(module, []).append(str(path.relative_to(ROOT)))
    assert not undeclared, f"imported but declared in no extra of pyproject.toml: {undeclared}"


def test_the_commands_start_needs_only_the_experiments_extra():
    code = ("import json, sys; import torchfpe.lab.cli; "
            "print(json.dumps(sorted(m.__file__ for n, m in sys.modules.items() "
            "if n.split('.')[0] == 'torchfpe' and getattr(m, '__file__', None))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={"PYTHONPATH": str(SRC), "PATH": ""})
    files = json.loads(result.stdout.splitlines()[-1])
    assert any(f.endswith("cli.py") for f in files)
    needed = set().union(*(third_party(ast.parse(Path(f).read_text()), module_level_only=True) for f in files))
    extras = requirements()
    allowed = extras[""] | extras["experiments"]
    assert {m for m in needed if distribution(m) not in allowed} == set(), "install 'torchfpe[experiments]' lacks them"
    # the console script's message covers each of them (torch and numpy come with the core)
    assert {m for m in needed if distribution(m) not in extras[""]} <= set(CLI_PACKAGES)


@pytest.mark.parametrize("module", sorted(CLI_PACKAGES))
def test_the_console_names_the_extra_that_declares_the_package(module):
    dist, extra = CLI_PACKAGES[module]
    assert dist == distribution(module) and dist in requirements()[extra]


def test_a_missing_click_names_the_package_and_the_extra():
    code = "import sys; sys.modules['click'] = None; from torchfpe._console import main; main()"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"PYTHONPATH": str(SRC), "PATH": ""})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "'click'" in result.stderr and "pip install 'torchfpe[experiments]'" in result.stderr


def test_version_option_prints_the_package_version():
    from helpers import cli

    result = cli("--version")
    assert result.exit_code == 0 and result.output.strip() == f"torchfpe {torchfpe.__version__}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == torchfpe.__version__

"""The core stays light: ``import torchfpe`` pulls in torch, not the experiment stack."""

import subprocess
import sys


def test_core_import_does_not_load_heavy_dependencies():
    code = ("import sys, torchfpe; heavy = {'pandas', 'matplotlib', 'scipy', 'typer', 'rich', 'yaml', 'ray'}; "
            "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

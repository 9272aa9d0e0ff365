"""The README's quickstart runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quickstart_runs(tmp_path, monkeypatch):
    code = re.search(r"## Quickstart\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README quickstart", "exec"), namespace)
    assert (tmp_path / "wide" / "model.safetensors").exists() and (tmp_path / "wide" / "config.json").exists()
    assert namespace["torchfpe"].nonzero_parameters(namespace["again"]) == namespace["torchfpe"].nonzero_parameters(namespace["model"])


def test_readme_opens_with_the_two_commands():
    lines = README.read_text().splitlines()
    block = lines[lines.index("```bash") + 1: lines.index("```bash") + 3]
    assert block[0].startswith("make demo") and block[1].startswith("make test")

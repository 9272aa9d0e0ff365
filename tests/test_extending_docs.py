"""docs/extending.md runs as written: its file blocks are written to a fresh folder, the other Python
blocks run there in order, as one script in a fresh process (what they register stays out of this one)."""

import os
import re
import subprocess
import sys
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
FILE_BLOCK = re.compile(r"# (\w+\.py)\n")


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S)


def test_every_python_block_of_the_extending_page_runs(tmp_path):
    script = []
    for block in blocks():
        named = FILE_BLOCK.match(block)
        if named:
            (tmp_path / named.group(1)).write_text(block, encoding="utf-8")
        else:
            script.append(block)
    assert len(script) >= 4 and len(blocks()) - len(script) == 4  # the split, layout, optimizer and experiment files
    (tmp_path / "page.py").write_text("\n".join(script), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "page.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "runs" / "parity" / "report.md").exists()

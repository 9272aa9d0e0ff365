"""The harness moved to torchfpe.lab; the old paths alias it for one release, as the same module objects."""

import subprocess
import sys

CHECK = """
import sys, warnings
import torchfpe
assert not any(name.startswith("torchfpe.lab") for name in sys.modules), "import torchfpe loaded the harness"
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import torchfpe.experiments.heads as old_heads
assert any(issubclass(w.category, DeprecationWarning) and "torchfpe.lab.experiments" in str(w.message) for w in caught)
import torchfpe.lab.experiments.heads as new_heads
import torchfpe.lab.experiments.registry as registry
from torchfpe.api import run_study
from torchfpe.lab.api import run_study as new_run_study
assert old_heads is new_heads and run_study is new_run_study
assert sys.modules["torchfpe.experiments.registry"] is registry if "torchfpe.experiments.registry" in sys.modules else True
assert "heads" in registry.experiments()
print("ok")
"""


def test_old_paths_are_the_new_modules():
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"

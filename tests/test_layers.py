"""The package's layers hold and no import circle exists (`.importlinter`, checked by import-linter),
and the check is not a formality: a back-import, a circle or a core import of an adapter planted in
a copy of the tree breaks it, naming what broke."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ("", "adapters/trl", "adapters/verl", "adapters/openrlhf")


def lint_imports(tree: Path) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(tree / d) for d in PACKAGE_DIRS)}
    done = subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--config", str(tree / ".importlinter"),
                           "--no-cache"], cwd=tree, env=env, capture_output=True, text=True, timeout=300)
    return done.returncode, " ".join((done.stdout + done.stderr).split())  # its report wraps lines


def test_the_tree_keeps_its_layers_and_has_no_import_circle():
    code, report = lint_imports(ROOT)
    assert code == 0, report
    assert "3 kept, 0 broken" in report


PLANTED = [  # (module, the import planted in it, what the check must say)
    ("pgenrm_plugins/scoring/scorer.py", "import pgenrm_plugins.server.app",
     "pgenrm_plugins.scoring is not allowed to import pgenrm_plugins.server"),
    ("pgenrm_plugins/scoring/remote.py", "import pgenrm_plugins.scoring.scorer",
     "No cycles are allowed in pgenrm_plugins.scoring"),
    ("pgenrm_plugins/types.py", "import pgenrm_trl", "pgenrm_plugins is not allowed to import pgenrm_trl"),
]


def test_a_planted_back_import_circle_and_adapter_import_are_each_caught(tmp_path):
    tree = tmp_path / "tree"
    for part in ("pgenrm_plugins", "adapters"):
        shutil.copytree(ROOT / part, tree / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info",
                                                                              "*.safetensors"))
    shutil.copy(ROOT / ".importlinter", tree / ".importlinter")
    for module, planted, _ in PLANTED:  # one copy, one run: each fault is named on its own
        target = tree / module
        target.write_text(f"{target.read_text()}\n{planted}  # planted by the test\n")
    code, report = lint_imports(tree)
    assert code != 0 and "0 kept, 3 broken" in report, report
    for _, planted, caught in PLANTED:
        assert caught in report, (planted, report)

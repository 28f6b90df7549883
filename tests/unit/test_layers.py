"""The layers import only what their place allows (the contracts in pyproject.toml).

``rlhf`` is a library: no Django, no Celery, nothing of the platform. ``model_worker`` hands
files and plain data to and from ``rlhf`` and never touches the database: no Django, nothing of
``annotation_app``. import-linter reads the imports of every module, lazy ones included.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_no_layer_imports_what_its_contract_forbids():
    lint_imports = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout

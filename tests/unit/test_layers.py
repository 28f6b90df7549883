"""The layers import only what their place allows (the contracts in pyproject.toml).

``rlhf`` is a library: no Django, no Celery, nothing of the platform. ``model_worker`` hands
files and plain data to and from ``rlhf`` and never touches the database: no Django, nothing of
``annotation_app``. import-linter reads the imports of every module, lazy ones included.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("annotation_app", "model_worker", "rlhf", "config")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def contract_of(package: str) -> str:
    """The name of the contract on what ``package`` may import, as pyproject.toml gives it."""
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    [name] = [c["name"] for c in settings["contracts"] if c["source_modules"] == [package]]
    return name


def test_no_layer_imports_what_its_contract_forbids():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("package", "module", "line", "forbidden"),
    [
        ("annotation_app", "annotation_app/services/training/report.py", "import torch", "torch"),
        ("rlhf", "rlhf/jobs.py", "import django", "django"),
    ],
)
def test_a_forbidden_import_breaks_its_layers_contract(tmp_path, package, module, line, forbidden):
    """The contracts can fail: in a copy of the code, one forbidden import breaks the contract of
    its package (and of those that import its module: model_worker imports rlhf.jobs)."""
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with (tmp_path / module).open("a") as file:
        file.write(f"\n{line}  # noqa\n")
    done = lint_imports(tmp_path)
    assert done.returncode != 0, done.stdout[-4000:]
    [status] = re.findall(rf"^{re.escape(contract_of(package))} (KEPT|BROKEN)", done.stdout, re.M)
    assert status == "BROKEN", done.stdout[-4000:]
    dotted = module.removesuffix(".py").replace("/", ".")
    assert f"{dotted} -> {forbidden} (l." in done.stdout, done.stdout[-4000:]

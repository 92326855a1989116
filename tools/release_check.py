"""`make release-check`: the facts a release states in several places agree.

- runewarp/__init__.py's __version__ is the first released CHANGELOG.md heading,
  written `## [X.Y.Z] - YYYY-MM-DD` with a real date that is not in the future;
- the Dockerfile's org.opencontainers.image.version label is that version;
- every image reference (Makefile IMAGE, compose file, docs, CI workflow) names
  the Makefile's IMAGE with a tag of `latest` or the version, and docs/release.md
  pushes both;
- if the tag vX.Y.Z exists it is annotated and points at HEAD, and no other
  version tag points at HEAD.

Prints one line per problem and exits 1, or one summary line and exits 0.
Standard library only: it runs before any venv exists (`python3 tools/release_check.py [ROOT]`).
"""

import datetime
import re
import subprocess
import sys
from pathlib import Path

IMAGE_FILES = ("Makefile", "Dockerfile", "examples/docker/compose.yaml", "examples/docker/README.md",
               "docs/release.md", "docs/usage.md", "README.md", ".github/workflows/ci.yml")
# A runewarp image reference: an optional registry/namespace, a name containing
# "runewarp", and a tag.  Paths such as /etc/runewarp/server.toml:ro never match:
# the tag must look like a version, `latest`, or a placeholder for one.
IMAGE_REF = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*[\w.-]*runewarp[\w.-]*):"
                       r"(latest|<version>|X\.Y\.Z|\d+\.\d+\.\d+[\w.-]*)(?![\w-])")
PLACEHOLDER_TAGS = {"latest", "<version>", "X.Y.Z"}


def read_version(root):
    text = (root / "runewarp" / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"', text, re.M)
    return match.group(1) if match else None


def changelog_problems(root, version, today=None):
    today = today or datetime.date.today()
    text = (root / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## \[(\d+\.\d+\.\d+[^\]]*)\](.*)$", text, re.M)
    if not headings:
        return ["CHANGELOG.md: no released heading `## [X.Y.Z] - YYYY-MM-DD`"]
    released, rest = headings[0]
    problems = []
    if released != version:
        problems.append(f"CHANGELOG.md: the first released heading is [{released}], "
                        f"runewarp/__init__.py says {version}")
    match = re.fullmatch(r" - (\d{4}-\d{2}-\d{2})\s*", rest)
    if not match:
        problems.append(f"CHANGELOG.md: ## [{released}] has no date; write `## [{released}] - YYYY-MM-DD`")
        return problems
    try:
        date = datetime.date.fromisoformat(match.group(1))
    except ValueError:
        return problems + [f"CHANGELOG.md: ## [{released}]: {match.group(1)} is not a date"]
    if date > today:
        problems.append(f"CHANGELOG.md: ## [{released}] is dated {date}, in the future")
    return problems


def dockerfile_labels(root):
    text = (root / "Dockerfile").read_text().replace("\\\n", " ")
    labels = {}
    for line in text.splitlines():
        if line.strip().upper().startswith("LABEL "):
            labels.update(re.findall(r'([\w.-]+)="([^"]*)"', line))
    return labels


def makefile_image(root):
    match = re.search(r"^IMAGE \?= (\S+)", (root / "Makefile").read_text(), re.M)
    return match.group(1) if match else None


def image_references(root):
    """(file, repository, tag) for every runewarp image reference in IMAGE_FILES."""
    refs = []
    for name in IMAGE_FILES:
        path = root / name
        if path.exists():
            for match in IMAGE_REF.finditer(path.read_text()):
                refs.append((name, match.group(1), match.group(2)))
    return refs


def image_problems(root, version):
    image = makefile_image(root)
    if image is None:
        return ["Makefile: no `IMAGE ?= <name>`"]
    problems = []
    for name, repo, tag in image_references(root):
        if repo != image:
            problems.append(f"{name}: image {repo}:{tag} is not {image} (Makefile IMAGE)")
        if tag not in PLACEHOLDER_TAGS and tag != version:
            problems.append(f"{name}: image tag {repo}:{tag} is neither latest nor {version}")
    pushed = {tag for name, _, tag in image_references(root) if name == "docs/release.md"}
    for tag in ("X.Y.Z", "latest"):
        if tag not in pushed:
            problems.append(f"docs/release.md: the steps never name {image}:{tag}")
    return problems


def git(root, *args):
    proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def tag_problems(root, version):
    """Problems with the release tag; the tag may not exist yet (checked before tagging)."""
    head = git(root, "rev-parse", "HEAD")
    if head is None:
        return ["git: not a repository with a commit; cannot check the tag"]
    tag = f"v{version}"
    problems = []
    for other in (git(root, "tag", "--points-at", "HEAD") or "").split():
        if re.fullmatch(r"v\d+\.\d+\.\d+.*", other) and other != tag:
            problems.append(f"git: HEAD is tagged {other}, but the version is {version}")
    if git(root, "rev-parse", "-q", "--verify", f"refs/tags/{tag}") is None:
        return problems
    if git(root, "cat-file", "-t", f"refs/tags/{tag}") != "tag":
        problems.append(f"git: {tag} is a lightweight tag; recreate it with `git tag -a {tag}`")
    if git(root, "rev-parse", f"{tag}^{{commit}}") != head:
        problems.append(f"git: {tag} does not point at HEAD")
    return problems


def check(root, today=None):
    """(problems, summary) for the release in `root`."""
    root = Path(root)
    version = read_version(root)
    if version is None:
        return ["runewarp/__init__.py: no __version__"], ""
    problems = changelog_problems(root, version, today)
    label = dockerfile_labels(root).get("org.opencontainers.image.version")
    if label != version:
        problems.append(f"Dockerfile: org.opencontainers.image.version is {label!r}, not {version!r}")
    problems += image_problems(root, version)
    problems += tag_problems(root, version)
    tagged = git(root, "rev-parse", "-q", "--verify", f"refs/tags/v{version}") is not None
    summary = (f"release-check: {version} agrees everywhere; image {makefile_image(root)}:{version}; "
               f"tag v{version} {'points at HEAD' if tagged else 'not created yet'}")
    return problems, summary


def main(argv):
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent
    problems, summary = check(root)
    for problem in problems:
        print(f"release-check: {problem}", file=sys.stderr)
    if not problems:
        print(summary)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

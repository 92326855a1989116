"""The Dockerfile, built and run with Podman on a Debian base made locally by debootstrap.

No Docker engine and no container registry are needed: the base is
`debootstrap --variant=minbase` bookworm with python3, imported with `podman import`
and passed as BASE_IMAGE.  The base tarball is cached in /var/tmp/runewarp-test-base
(override: RUNEWARP_TEST_BASE_CACHE; delete it to refresh), so only the first run pays
for debootstrap.  Pip inside the build needs PyPI.  Slow (minutes), so not in .ci/run.
Enable as root: `apt-get install podman debootstrap runc`.
"""

import json
import os
import re
import resource
import shutil
import subprocess
import tarfile
import tempfile
import uuid
from pathlib import Path

import pytest

import runewarp

ROOT = Path(__file__).resolve().parent.parent
VERSION = runewarp.__version__
SUITE = "bookworm"  # Python 3.11, like python:3.11-slim
PACKAGES = "python3,python3-venv,python3-pip,ca-certificates"
BASE_CACHE = Path(os.environ.get("RUNEWARP_TEST_BASE_CACHE", "/var/tmp/runewarp-test-base"))
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

needs_podman = pytest.mark.skipif(
    not (shutil.which("podman") and shutil.which("debootstrap")) or os.geteuid() != 0,
    reason="image build test needs root with podman and debootstrap on PATH: "
           "`apt-get install podman debootstrap runc`, then run pytest tests/test_image.py as root",
)


def run(cmd, timeout=600):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def runtime_args():
    """Podman flags that make containers start on the hosts we test on, harmless elsewhere.

    runc: Debian's crun 1.8 refuses hybrid cgroup v1/v2 hosts ("cgroups in hybrid mode not
    supported"), runc does not.  Ulimits: podman's defaults (nofile 1048576, nproc 4194304)
    exceed the hard limits of a root without CAP_SYS_RESOURCE, and podman caps its own
    nproc at 32768, so ask for what the container can actually get.
    """
    args = []
    runtime = os.environ.get("RUNEWARP_TEST_OCI_RUNTIME") or ("runc" if shutil.which("runc") else "")
    if runtime:
        args += ["--runtime", runtime]
    for name, limit, cap in (("nofile", resource.RLIMIT_NOFILE, 1048576),
                             ("nproc", resource.RLIMIT_NPROC, 32768)):
        hard = resource.getrlimit(limit)[1]
        value = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
        args += ["--ulimit", f"{name}={value}:{value}"]
    return args


def debian_mirror():
    """The Debian mirror apt already uses here (one-line or deb822 sources), else deb.debian.org."""
    if os.environ.get("RUNEWARP_TEST_DEBIAN_MIRROR"):
        return os.environ["RUNEWARP_TEST_DEBIAN_MIRROR"]
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file() or path.suffix not in ("", ".list", ".sources"):
            continue
        for line in path.read_text(errors="replace").splitlines():
            m = re.match(r"\s*(?:URIs:|deb(?:\s+\[[^\]]*\])?)\s+(\S+/debian)/?(\s|$)", line)
            if m:
                return m.group(1)
    return "http://deb.debian.org/debian"


def unmount_below(path):
    """Lazily unmount whatever an interrupted debootstrap left mounted (proc, sys) under path."""
    prefix = str(Path(path).resolve()) + "/"
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=60)


def cached_base_tarball():
    """A debootstrapped rootfs as a tarball, made once and reused across runs."""
    tarball = BASE_CACHE / f"debian-{SUITE}-python3.tar"
    if tarball.exists():
        return tarball
    BASE_CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=BASE_CACHE))
    try:
        rootfs = work / "rootfs"
        run(["debootstrap", "--variant=minbase", f"--include={PACKAGES}", SUITE, str(rootfs),
             debian_mirror()], timeout=1200)
        partial = work / "base.tar"
        run(["tar", "-C", str(rootfs), "--numeric-owner",
             "--exclude=./var/cache/apt/archives/*.deb", "--exclude=./var/cache/apt/*.bin",
             "--exclude=./var/lib/apt/lists/*_*",
             "-cf", str(partial), "."], timeout=600)
        partial.rename(tarball)  # atomic: a half-made tarball is never reused
    finally:
        unmount_below(work)
        shutil.rmtree(work, ignore_errors=True)
    return tarball


def rmi(*images):
    subprocess.run(["podman", "rmi", "--force", *images], capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def base_image():
    tarball = cached_base_tarball()
    with tarfile.open(tarball) as tar:
        assert "./usr/bin/python3" in tar.getnames(), f"{tarball} has no python3; delete it"
    tag = f"localhost/runewarp-test-base:{uuid.uuid4().hex[:12]}"
    with open(tarball, "rb") as f:
        proc = subprocess.run(["podman", "import", "-", tag], stdin=f, capture_output=True,
                              text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    yield tag
    rmi(tag)


@pytest.fixture(scope="module")
def image(base_image):
    tag = f"localhost/runewarp-test:{uuid.uuid4().hex[:12]}"
    cmd = ["podman", "build", "--layers=false", "--pull=never", *runtime_args(),
           "--build-arg", f"BASE_IMAGE={base_image}", "-t", tag]
    if HOST_CA_BUNDLE.exists():
        # pip in the build trusts what this host trusts (e.g. a TLS-inspecting proxy);
        # a RUN-time mount, not stored in the image.
        cmd += ["-v", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
    try:
        run([*cmd, str(ROOT)], timeout=1200)
        yield tag
    finally:
        rmi(tag)


def podman_run(image, *args, options=()):
    return run(["podman", "run", "--rm", *runtime_args(), *options, image, *args],
               timeout=120).stdout.strip()


@needs_podman
@pytest.mark.timeout(1800)
def test_image_runs_runewarp_as_uid_10001(image):
    assert podman_run(image, "--version", options=["--user", "10001"]) == f"runewarp {VERSION}"
    assert podman_run(image, "--version") == f"runewarp {VERSION}"


@needs_podman
@pytest.mark.timeout(1800)
def test_image_user_is_non_root_and_owns_the_volume(image):
    assert podman_run(image, "-u", options=["--entrypoint", "id"]) == "10001"
    assert podman_run(image, "-g", options=["--entrypoint", "id"]) == "10001"
    identity = podman_run(image, "client", "identity", "init")  # writes under the VOLUME
    assert re.fullmatch(r"[0-9a-f]{64}", identity.splitlines()[-1]), identity


@needs_podman
@pytest.mark.timeout(1800)
def test_image_metadata(image):
    config = json.loads(run(["podman", "image", "inspect", image]).stdout)[0]["Config"]
    assert config["Labels"]["org.opencontainers.image.version"] == VERSION
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["runewarp"]
    assert "/var/lib/runewarp" in config["Volumes"]
    assert "443/tcp" in config["ExposedPorts"]


def test_make_image_passes_base_image_only_when_set():
    make = ["make", "-n", "-C", str(ROOT), "image"]
    with_base = run([*make, "BASE_IMAGE=localhost/debian-python:bookworm"], timeout=60).stdout
    assert "--build-arg BASE_IMAGE=localhost/debian-python:bookworm" in with_base
    assert "--build-arg" not in run(make, timeout=60).stdout


def test_compose_example_uses_the_folders_of_the_shipped_configs():
    """The image reads the same layout as a system install: configs name every folder under
    the volume /var/lib/runewarp, and every command in the walkthrough passes -c."""
    import tomllib

    def folders(path, role):
        table = tomllib.loads(path.read_text())[role]
        return {k: v for k, v in table.items() if k.endswith(("-dir", "-file"))}

    examples = ROOT / "examples" / "docker"
    assert folders(examples / "server.toml", "server") == folders(ROOT / "conf/server.toml", "server")
    client = folders(examples / "client.toml", "client")
    assert client["identity-dir"] == folders(ROOT / "conf/client.toml", "client")["identity-dir"]
    # Demo only: the Client reads the CA from the Server's volume, mounted at /srv/server-data.
    assert client["server-ca-file"] == "/srv/server-data/server/cert/server-ca.crt"
    compose = (examples / "compose.yaml").read_text()
    assert "server-data:/srv/server-data:ro" in compose
    for role in ("server", "client"):
        assert f'command: ["{role}", "-c", "/etc/runewarp/{role}.toml"]' in compose
        assert f"./{role}.toml:/etc/runewarp/{role}.toml:ro" in compose
    walkthrough = (examples / "README.md").read_text().replace("\\\n", " ")
    commands = [line for line in walkthrough.splitlines() if "docker compose run" in line]
    for command in commands:
        assert "-c /etc/runewarp/" in command or "--dir" in command, command
    assert len(commands) >= 4

"""The container image, built and run as a deployment runs it. Its final stage runs as an
unprivileged user, holds no compiler, and no layer keeps a certificate that only the build host's CA
bundle holds (pip read that bundle as a BuildKit secret).

Then `fleetinfer serve` in one
container, `fleetinfer run --client shared` in another that shares its socket volume and its
/dev/shm (`--ipc=container:SERVER`), tasks from a SQLite queue on a shared folder, each result
exact. A node container missing either shared volume stops at start with one line, exit 3.

The image is built by scripts/build-image.sh (`make image`); with its caches warm (the Debian base
tarball under .cache/image/ and BuildKit's layers) that takes seconds. `make test` starts dockerd
(scripts/services.sh). Where no container engine is installed at all the tests are reported as
xfailed with that reason, never skipped silently; an engine that is installed but does not answer
fails them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetinfer.cli.common import ExitCode
from fleetinfer.queue import open_broker
from fleetinfer.results import open_store
from fleetinfer.results.base import TaskStatus
from fleetinfer.task import send_tasks
from tests.apps.harness import REPO_ROOT
from tests.helpers.tiny_models import affine_repository

pytestmark = pytest.mark.slow

IMAGE = "fleetinfer:e2e"
TASKS = 6
BUILD_TIMEOUT_S = 1800  # cold: debootstrap and pip; warm: seconds
RUN_TIMEOUT_S = 120
TASK_MODULE = """
from typing import Any

import numpy as np

from fleetinfer.task import App, TaskContext

app = App("containerapp")


@app.task
def affine(ctx: TaskContext, payload: dict[str, Any]) -> dict[str, Any]:
    outputs = ctx.model("affine").infer({"x": np.asarray([payload["x"]], dtype=np.float32)})
    return {"y": outputs["y"][0].tolist(), "hostname": open("/etc/hostname").read().strip()}
"""


def docker(*args: str, timeout_s: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout_s, check=False
    )


@pytest.fixture(scope="module")
def engine() -> None:
    """A container engine answers. None installed at all (no docker client, or a client with no
    daemon installed or answering): xfail saying so. dockerd installed but silent: fail."""
    absent = (
        "no container engine on this machine ({}): the container image was NOT built or run "
        "here; install docker.io and run `make services`"
    )
    if shutil.which("docker") is None:
        pytest.xfail(absent.format("no docker client"))
    info = docker("info", "--format", "{{.ServerVersion}}", timeout_s=30)
    if info.returncode == 0:
        return
    if shutil.which("dockerd") is None:
        pytest.xfail(absent.format("a docker client, but no daemon installed or answering"))
    pytest.fail(
        "dockerd is installed but does not answer (`docker info`: "
        f"{' '.join(info.stderr.split())[:300]}): run `make services`, which starts it"
    )


@pytest.fixture(scope="module")
def image(engine: None) -> str:
    """The image, built by the same script as `make image` (a tag of its own)."""
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "build-image.sh"), "--tag", IMAGE],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, (
        f"build-image.sh failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    )
    return IMAGE


@pytest.fixture
def names() -> Iterator[list[str]]:
    """Containers and volumes a test made, removed afterwards (listed as `kind:name`)."""
    made: list[str] = []
    yield made
    for item in reversed(made):
        kind, name = item.split(":", 1)
        if kind == "container":
            docker("rm", "-f", "-v", name, timeout_s=60)
        else:
            docker("volume", "rm", "-f", name, timeout_s=60)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder the containers mount at /data: the task module, the model repository and a queue
    holding TASKS affine tasks; writable by the image's user (uid 10001)."""
    (tmp_path / "containerapp.py").write_text(TASK_MODULE)
    affine_repository(tmp_path / "models")  # y = 2x + 1
    with open_broker(f"sqlite:///{tmp_path}/queue.db") as broker:
        send_tasks(broker, "affine", [{"x": [float(i), 0.5, -1.0, 3.0]} for i in range(TASKS)])
    for path in [tmp_path, *tmp_path.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    return tmp_path


def start_server(image: str, project: Path, names: list[str]) -> tuple[str, str]:
    """`fleetinfer serve` in its own container: its socket folder on a named volume, its IPC
    namespace (and /dev/shm) shareable. Returns (container, volume) once the socket is there."""
    suffix = uuid.uuid4().hex[:8]
    volume, server = f"fleetinfer-sock-{suffix}", f"fleetinfer-serve-{suffix}"
    assert docker("volume", "create", volume).returncode == 0
    names.append(f"volume:{volume}")
    names.append(f"container:{server}")
    started = docker(
        *("run", "-d", "--name", server, "--ipc", "shareable", "--no-healthcheck"),
        *("-v", f"{volume}:/run/fleetinfer", "-v", f"{project}:/data"),
        *(image, "serve", "--models", "/data/models"),
    )
    assert started.returncode == 0, started.stderr
    waited = docker(
        *("exec", server, "python3", "-c"),
        "import os, time\n"
        "for _ in range(600):\n"
        "    if os.path.exists('/run/fleetinfer/models.sock'): break\n"
        "    time.sleep(0.1)\n"
        "else: raise SystemExit('no socket after 60 s')",
    )
    assert waited.returncode == 0, docker("logs", server).stderr
    return server, volume


def run_node(
    image: str, project: Path, names: list[str], *shared: str
) -> subprocess.CompletedProcess[str]:
    """`fleetinfer run --client shared` in a container of its own, with the `shared` options."""
    node = f"fleetinfer-node-{uuid.uuid4().hex[:8]}"
    names.append(f"container:{node}")
    return docker(
        *("run", "--name", node, *shared, "-v", f"{project}:/data"),
        *(image, "run", "containerapp:app", "--client", "shared", "--workers", "2"),
        *("--queue", "sqlite:///queue.db", "--results", "sqlite:///results.db"),
        "--exit-when-empty",
    )


def test_a_node_container_runs_each_task_through_a_server_container(
    image: str, project: Path, names: list[str]
) -> None:
    server, volume = start_server(image, project, names)
    done = run_node(
        image, project, names, "--ipc", f"container:{server}", "-v", f"{volume}:/run/fleetinfer"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with open_broker(f"sqlite:///{project}/queue.db") as broker:
        assert broker.stats().pending == 0
    with open_store(f"sqlite:///{project}/results.db") as store:
        results = list(store.iter_results())
    assert [r.status for r in results] == [TaskStatus.SUCCEEDED] * TASKS
    assert sorted(r.value["y"] for r in results) == [
        [2.0 * i + 1.0, 2.0, -1.0, 7.0] for i in range(TASKS)
    ]
    assert os.uname().nodename not in {r.value["hostname"] for r in results}  # ran in a container


def test_a_node_container_without_the_socket_volume_says_so_and_exits_3(
    image: str, project: Path, names: list[str]
) -> None:
    server, _ = start_server(image, project, names)
    done = run_node(image, project, names, "--ipc", f"container:{server}")
    assert done.returncode == ExitCode.CONFIG, done.stderr[-3000:]
    line = " ".join(done.stderr.split())
    assert "/run/fleetinfer is not a mounted volume" in line, line


def test_a_node_container_without_the_servers_shm_says_so_and_exits_3(
    image: str, project: Path, names: list[str]
) -> None:
    _, volume = start_server(image, project, names)
    done = run_node(image, project, names, "-v", f"{volume}:/run/fleetinfer")
    assert done.returncode == ExitCode.CONFIG, done.stderr[-3000:]
    assert "/dev/shm is not shared between them" in " ".join(done.stderr.split())


CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----\n(.*?)-----END CERTIFICATE-----", re.S)
HOST_CA_BUNDLE = Path(os.environ.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt"))


def test_the_image_runs_unprivileged_with_no_compiler_and_its_healthcheck_set(image: str) -> None:
    done = docker(
        *("run", "--rm", "--entrypoint", "sh", image, "-c"),
        "id -u; for c in gcc cc c++ ld as; do command -v $c; done; fleetinfer --help >/dev/null "
        "&& echo runs",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["10001", "runs"]
    check = docker("image", "inspect", "--format", "{{json .Config.Healthcheck.Test}}", image)
    assert check.stdout.strip() == '["CMD","/usr/local/bin/fleetinfer-healthcheck"]'


def test_no_layer_keeps_the_build_hosts_own_certificates_or_the_secret(
    image: str, tmp_path: Path
) -> None:
    if not HOST_CA_BUNDLE.is_file():
        pytest.fail(f"the build host's CA bundle {HOST_CA_BUNDLE} is missing: set SSL_CERT_FILE")
    public = docker(
        "run", "--rm", "--entrypoint", "cat", image, "/etc/ssl/certs/ca-certificates.crt"
    )
    host_only = set(CERTIFICATE.findall(HOST_CA_BUNDLE.read_text())) - set(
        CERTIFICATE.findall(public.stdout)
    )
    # a line from the middle of each certificate only the host trusts (a proxy's CA, say)
    markers = [body.splitlines()[3].encode() for body in host_only]
    saved = tmp_path / "image.tar"
    assert docker("save", "-o", str(saved), image).returncode == 0
    found: list[str] = []
    with tarfile.open(saved) as outer:
        for layer in (m for m in outer.getmembers() if m.name.endswith("layer.tar")):
            layer_file = outer.extractfile(layer)
            assert layer_file is not None
            with tarfile.open(fileobj=layer_file, mode="r|") as files:
                for member in files:
                    name = member.name.removeprefix("./")
                    if name.startswith("run/secrets/") or "cabundle" in name:
                        found.append(name)
                    if member.isfile() and markers:
                        data = files.extractfile(member)
                        body = data.read() if data is not None else b""
                        found += [name for marker in markers if marker in body]
    assert found == [], f"layers keep the host's CA bundle or the build secret: {found}"

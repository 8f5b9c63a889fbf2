"""A wheel is enough: built from the sources, installed into a fresh virtual environment
outside the repository, ``parley serve`` applies its migrations, serves the API and the
built browser demo, and the README's walkthrough works against it.

The venv sees the machine's installed dependencies (``--system-site-packages``; nothing is
downloaded) but Parley itself only from the wheel: the test checks where ``server`` is
imported from.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx
import pytest

from tests.conftest import REPO_ROOT

DEMO_BUILD = REPO_ROOT / "server" / "http" / "demo_files"
# parley/ links to the four folders; the copy follows the links (the wheel holds files).
SOURCES = (
    "parley",
    "server",
    "session",
    "authz",
    "migrations",
    "pyproject.toml",
    "README.md",
    "LICENSE",
)


# One worker builds the wheel once for both tests (``--dist loadgroup``).
pytestmark = pytest.mark.xdist_group("wheel")


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{args}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    return result.stdout


def clean_env(venv: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "PYTHON"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


def spawn(
    args: list[Path | str], cwd: Path, env: dict[str, str], log: IO[str]
) -> subprocess.Popen[str]:
    return subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=log, text=True)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding Parley from a wheel built from a copy of the sources."""
    if not (DEMO_BUILD / "index.html").is_file():
        message = "the browser demo is not built (cd client-demo && npm ci && npm run build)"
        if os.environ.get("PARLEY_TEST_FORBID_SKIPS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in SOURCES:
        origin = REPO_ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(origin, source / name)
    wheels = root / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
        "-w", wheels, source, cwd=root)  # fmt: skip
    (wheel,) = wheels.glob("parley-*.whl")
    venv = root / "venv"
    run(sys.executable, "-m", "venv", "--system-site-packages", venv, cwd=root)
    run(venv / "bin" / "pip", "install", "-q", "--no-deps", "--no-index", wheel, cwd=root)
    return venv


def test_the_wheel_carries_everything_it_serves(installed: Path, tmp_path: Path) -> None:
    probe = (
        "import pathlib\nfrom parley import migrations, server\n"
        "print(pathlib.Path(server.__file__).parent)\n"
    )
    where = run(installed / "bin" / "python", "-c", probe, cwd=tmp_path, env=clean_env(installed))
    assert Path(where.strip()).is_relative_to(installed), where  # not the checkout
    package = Path(where.strip()).parent  # site-packages/parley: the one package
    assert package.name == "parley" and not (package.parent / "server").exists()
    assert (package / "server" / "http" / "demo_files" / "index.html").is_file()
    assert any((package / "migrations" / "versions").glob("0001_*.py"))
    version = run(installed / "bin" / "parley", "--version", cwd=tmp_path, env=clean_env(installed))
    assert version.startswith("parley ")


async def test_the_walkthrough_works_against_the_installed_wheel(
    installed: Path, tmp_path: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = clean_env(installed, PARLEY_PORT=str(port), PARLEY_LOG_LEVEL="warning")
    log = (tmp_path / "serve.log").open("w")
    try:
        server = spawn([installed / "bin" / "parley", "serve"], tmp_path, env, log)
    except BaseException:
        log.close()  # else its ResourceWarning fails whichever test collects it
        raise
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=20) as http:
            deadline = time.monotonic() + 60
            while True:
                assert server.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "the installed server did not start"
                await asyncio.sleep(0.1)
            assert "<html" in (await http.get("/demo/")).text.lower()
            assert (await http.get("/api/v1/docs")).status_code == 200
            key = (tmp_path / ".parley" / "admin_key").read_text().strip()
            http.headers["Authorization"] = f"Bearer {key}"
            sid = (await http.post("/api/v1/sessions", json={"title": "Incident 42"})).json()["id"]
            put = await http.put(f"/api/v1/sessions/{sid}/members/alice", json={"role": "editor"})
            assert put.status_code == 200
            token = await http.post(f"/api/v1/sessions/{sid}/tokens", json={"user_id": "alice"})
            as_alice = {"Authorization": f"Bearer {token.json()['token']}"}
            sent = await http.post(
                f"/api/v1/sessions/{sid}/prompts", json={"text": "hello"}, headers=as_alice
            )
            assert sent.status_code == 202, sent.text
            status: dict[str, object] = {}
            for _ in range(600):  # bounded: the offline model answers in well under a minute
                status = (await http.get(sent.headers["location"], headers=as_alice)).json()
                if status["status"] not in ("queued", "running"):
                    break
                await asyncio.sleep(0.1)
            assert status["status"] == "done", status
            transcript = (await http.get(f"/api/v1/sessions/{sid}/transcript")).json()
            reply = next(m for m in transcript["messages"] if m["id"] == status["reply_id"])
            assert reply["content"]
        assert (tmp_path / "parley.db").is_file()  # migrated where it was started
    finally:
        server.terminate()
        server.wait(20)
        log.close()

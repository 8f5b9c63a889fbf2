"""Install the peers the benchmark runs against, under ``bench/`` only.

* pycrdt-websocket: a virtualenv ``bench/.venv-peers`` from ``bench/peers/requirements.txt``
* the y-websocket reference server: ``npm ci`` in ``bench/peers`` (its lock file is
  committed)

Each step is skipped when its inputs have not changed since it last succeeded.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import venv

from bench.targets import PEERS_DIR, PEERS_VENV

INSTALL_TIMEOUT_S = 600


class PeerSetupError(RuntimeError):
    """A peer could not be installed (no network, no node): the run goes on without it."""


def _digest(*paths: object) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(open(path, "rb").read())  # noqa: SIM115 — small files, read whole
    return h.hexdigest()


def _run(command: list[str], cwd: object = None) -> None:
    try:
        subprocess.run(
            command,
            cwd=cwd,  # type: ignore[arg-type]
            check=True,
            capture_output=True,
            timeout=INSTALL_TIMEOUT_S,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        output = getattr(exc, "stderr", b"") or b""
        raise PeerSetupError(f"{' '.join(command)} failed: {exc} {output[-800:]!r}") from exc


def setup_pycrdt_websocket() -> None:
    requirements = PEERS_DIR / "requirements.txt"
    marker = PEERS_VENV / ".installed"
    wanted = _digest(requirements)
    if marker.exists() and marker.read_text() == wanted:
        return
    if not (PEERS_VENV / "bin" / "python").exists():
        venv.EnvBuilder(with_pip=True).create(PEERS_VENV)
    pip = [str(PEERS_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    _run([*pip, "-r", str(requirements)])
    marker.write_text(wanted)


def setup_y_websocket() -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise PeerSetupError("node and npm are needed for the y-websocket reference server")
    marker = PEERS_DIR / "node_modules" / ".installed"
    wanted = _digest(PEERS_DIR / "package.json", PEERS_DIR / "package-lock.json")
    if marker.exists() and marker.read_text() == wanted:
        return
    _run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=PEERS_DIR)
    marker.write_text(wanted)


def setup_peers() -> None:
    setup_pycrdt_websocket()
    setup_y_websocket()


def peers_ready() -> bool:
    """True when both peers are installed (what the smoke test checks at collection)."""
    venv_ok = (PEERS_VENV / ".installed").exists()
    node_ok = (PEERS_DIR / "node_modules" / ".installed").exists()
    return venv_ok and node_ok and shutil.which("node") is not None


if __name__ == "__main__":
    setup_peers()
    print("peers installed", file=sys.stderr)

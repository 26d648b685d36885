"""A real Label Studio for the tests: started once, on a free 127.0.0.1 port, with its own data folder.

Label Studio and its Django stack live in their own venv (``.lsvenv/`` at the repository root,
which ``.ci/run`` creates), so their pins never mix with tlsync's. Its first start migrates an
empty database for minutes; the migrated database is kept beside the venv as a template and
copied for each session, which starts in seconds. The user is made as a person would make one:
the sign-up form, then a Personal Access Token from ``POST /api/token/`` in that browser
session, and the legacy token from ``/api/current-user/token``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

PIN = "1.23.2"
ROOT = Path(__file__).resolve().parents[3]
VENV = Path(os.environ.get("TLSYNC_LABEL_STUDIO_VENV", ROOT / ".lsvenv"))
EXE = VENV / "bin" / "label-studio"
TEMPLATE = VENV / "tlsync-template"
INSTALL = f"python3 -m venv .lsvenv && .lsvenv/bin/pip install label-studio=={PIN}"
EMAIL, PASSWORD = "annotator@example.com", "tlsync-Passw0rd"
START_TIMEOUT = 180.0
# The labelling config of the tests' projects: boxes named as tlsync's synthetic shapes and the test cells.
CONFIG = """<View><Image name="image" value="$image"/>
<RectangleLabels name="label" toName="image"><Label value="cell"/><Label value="debris"/><Label value="circle"/>
<Label value="square"/><Label value="triangle"/></RectangleLabels></View>"""


def _env(data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DJANGO_"))}
    env.update({
        "LATEST_VERSION_CHECK": "false",  # else every start asks PyPI for a newer version
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        "ML_BLOCK_LOCAL_IP": "false",  # the tests' ML backend (tlsync serve) listens on 127.0.0.1
        "SECRET_KEY": "tlsync-tests-only",
        "DISABLE_SIGNUP_WITHOUT_LINK": "false",
    })
    return env


def missing() -> str | None:
    """Why the real server cannot run here, or None."""
    if not EXE.exists():
        return f"Label Studio {PIN} is not installed in {VENV}; install it with: {INSTALL}"
    return None


def _migrated_template() -> Path:
    """An empty, migrated database (made once per venv: the migrations are the slow part of a first start)."""
    database = TEMPLATE / "label_studio.sqlite3"
    if not database.exists():
        work = TEMPLATE.with_name(TEMPLATE.name + f".{os.getpid()}")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        done = subprocess.run([str(EXE), "version", "--data-dir", str(work)], env=_env(work), capture_output=True,
                              text=True, timeout=900)
        if done.returncode != 0 or not (work / "label_studio.sqlite3").exists():
            raise RuntimeError(f"label-studio could not migrate a database: {done.stderr[-2000:]}")
        shutil.rmtree(TEMPLATE, ignore_errors=True)
        work.rename(TEMPLATE)
    return database


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LabelStudio:
    url: str
    pat: str
    legacy: str
    process: subprocess.Popen[bytes]
    log: Path
    _access: str = field(default="", repr=False)

    def api(self, method: str, route: str, **kwargs: Any) -> Any:
        """Set-up calls of the tests themselves (with the PAT, independently of the plugin's own client)."""
        if not self._access:
            answer = requests.post(f"{self.url}/api/token/refresh/", json={"refresh": self.pat}, timeout=30)
            answer.raise_for_status()
            self._access = answer.json()["access"]
        response = requests.request(method, f"{self.url}{route}", timeout=120,
                                    headers={"Authorization": f"Bearer {self._access}"}, **kwargs)
        if response.status_code == 401:  # the access token lives 5 minutes
            self._access = ""
            return self.api(method, route, **kwargs)
        assert response.ok, f"{method} {route}: HTTP {response.status_code} {response.text[:500]}"
        return response.json() if response.content else None

    def stop(self) -> None:
        """End the server and the workers it started (its own process group), by its id."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(15)


def start(folder: Path) -> LabelStudio:
    """Start Label Studio with a data folder under ``folder``; sign a user up; make their tokens."""
    data = folder / "data"
    data.mkdir(parents=True)
    shutil.copy(_migrated_template(), data / "label_studio.sqlite3")
    port, log = _free_port(), folder / "label-studio.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([str(EXE), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port",
                                    str(port), "--data-dir", str(data)], env=_env(data), stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    server = LabelStudio(url, "", "", process, log)
    try:
        _wait_up(server)
        server.pat, server.legacy = _sign_up(url)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_up(server: LabelStudio) -> None:
    ends = time.monotonic() + START_TIMEOUT
    while time.monotonic() < ends:
        if server.process.poll() is not None:
            raise RuntimeError(f"label-studio exited ({server.process.returncode}): "
                               f"{server.log.read_text(errors='replace')[-3000:]}")
        try:
            if requests.get(f"{server.url}/health", timeout=2).ok:
                return
        except (requests.ConnectionError, requests.Timeout):  # not listening yet, or too busy to answer in 2 s
            pass
        time.sleep(0.25)
    raise RuntimeError(f"label-studio did not answer /health within {START_TIMEOUT:g}s")


def _sign_up(url: str) -> tuple[str, str]:
    """The sign-up form, then Account & Settings' "Create token" (a PAT) and the legacy token."""
    browser = requests.Session()
    browser.get(f"{url}/user/signup/", timeout=30).raise_for_status()
    signed = browser.post(f"{url}/user/signup/", allow_redirects=False, timeout=60,
                          headers={"Referer": f"{url}/user/signup/"},
                          data={"email": EMAIL, "password": PASSWORD,
                                "csrfmiddlewaretoken": browser.cookies["csrftoken"]})
    assert signed.status_code == 302, f"sign-up failed: HTTP {signed.status_code} {signed.text[:300]}"
    made = browser.post(f"{url}/api/token/", timeout=30,
                        headers={"X-CSRFToken": browser.cookies["csrftoken"], "Referer": f"{url}/"})
    assert made.status_code == 201, f"PAT: HTTP {made.status_code} {made.text[:300]}"
    legacy = browser.get(f"{url}/api/current-user/token", timeout=30)
    legacy.raise_for_status()
    return made.json()["token"], legacy.json()["token"]


if __name__ == "__main__":  # `python ls_server.py migrate`: what .ci/run does once after installing
    if sys.argv[1:] == ["migrate"]:
        print(_migrated_template())

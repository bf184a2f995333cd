"""`cpn dashboard` prints the dashboard's address with its token; `--dashboard-port` turns it on."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

from support.daemons import cpn, daemon


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_dashboard_address_with_the_token(tmp_path: Path) -> None:
    port = free_port()
    with daemon(tmp_path / "n", "--dashboard-port", str(port)) as ready:
        assert ready["dashboard"] == f"http://127.0.0.1:{port}/"
        out = cpn("dashboard", "--data-dir", str(tmp_path / "n"))
        assert out.returncode == 0, out.stderr
        token = (tmp_path / "n" / "dashboard.token").read_text().strip()
        assert out.stdout.strip() == f"http://127.0.0.1:{port}/#token={token}"
        # the page loads; its data needs the token (private by default)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:
            assert page.status == 200
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/id",
                                     headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=10) as answer:
            assert b'"peer_id"' in answer.read()


def test_dashboard_off_says_how_to_turn_it_on(tmp_path: Path) -> None:
    with daemon(tmp_path / "n"):
        out = cpn("dashboard", "--data-dir", str(tmp_path / "n"))
        assert out.returncode == 2 and "--dashboard-port" in out.stderr and "Traceback" not in out.stderr

"""`tinyfleet broker start --secure [--tls]` and `tinyfleet devices enroll`, in-process against a real Mosquitto."""

from __future__ import annotations

import json
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

from click.testing import Result

from broker.accounts import load_credentials
from broker.process import _pid_alive
from tests.support.broker import connect

Cli = Callable[..., Result]



def _one_line_error(proc: Result, code: int, needle: str) -> None:
    assert proc.exit_code == code, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and needle in proc.stderr, proc.stderr
    if code == 1:
        assert len(lines) == 1 and lines[0].startswith("error: ")


def test_secure_tls_start_enroll_login_and_restart_stays_secure(cli: Cli, tmp_path: Path) -> None:
    d = str(tmp_path / "mq")
    started = cli("broker", "start", "--dir", d, "--secure", "--tls", "--json")
    assert started.exit_code == 0, started.stderr
    info = json.loads(started.stdout)
    try:
        assert info["url"].startswith("mqtts://127.0.0.1:") and info["secure"] and info["tls"]
        cred_file = Path(info["server_credentials"])
        assert stat.S_IMODE(cred_file.stat().st_mode) == 0o600
        server = load_credentials(cred_file)
        assert server.password and server.password not in started.stdout + started.stderr  # never printed

        enrolled = cli("devices", "enroll", "dev-c1", "--dir", d, "--fleet", "lab", "--tls", "--json")
        assert enrolled.exit_code == 0, enrolled.stderr
        doc = json.loads(enrolled.stdout)
        assert doc["reloaded"] is True and doc["fleet"] == "lab" and Path(doc["cert"]).is_file()
        assert doc["password"] not in (tmp_path / "mq" / "security" / "passwd").read_text()
        from devices.link.address import Credentials
        creds = Credentials(doc["username"], doc["password"], Path(doc["ca"]), Path(doc["cert"]), Path(doc["key"]))
        probe = connect(info["port"], client_id="dev-c1", creds=creds, tls=True)
        probe.close()
        assert probe.connack == 0  # the running broker reloaded its password file

        _one_line_error(cli("devices", "enroll", "bad/id", "--dir", d), 2, "invalid account name")
        keep = tmp_path / "old-cert"  # with TLS the certificate is the credential: keep the one rotation replaces
        keep.mkdir()
        old = Credentials(doc["username"], doc["password"], Path(doc["ca"]), Path(shutil.copy(doc["cert"], keep)),
                          Path(shutil.copy(doc["key"], keep)))
        rotated = cli("devices", "enroll", "dev-c1", "--dir", d, "--fleet", "lab", "--rotate", "--json")
        assert rotated.exit_code == 0 and json.loads(rotated.stdout)["password"] != doc["password"]

        listed = cli("devices", "list", "--broker", info["url"], "--fleet", "lab", "--credentials", str(cred_file),
                     "--json")
        assert listed.exit_code == 0, listed.stderr
        assert json.loads(listed.stdout) == {"fleet": "lab", "devices": [], "rejected": {}}
    finally:
        assert cli("broker", "stop", "--dir", d).exit_code == 0
    assert not _pid_alive(info["pid"])
    again = cli("broker", "start", "--dir", d, "--json")  # no --secure: a secured dir still starts secured
    try:
        info2 = json.loads(again.stdout)
        assert info2["secure"] and info2["url"].startswith("mqtts://")
        probe = connect(info2["port"], client_id="dev-c1", creds=old, tls=True, wait=0)
        assert probe.wait_for(lambda p: p.connack is not None or p.disconnects, timeout=15)
        probe.client.loop_stop()
        assert probe.connack != 0  # rotated away: the old certificate is in the CRL
    finally:
        cli("broker", "stop", "--dir", d)


def test_cli_errors_are_one_line(cli: Cli, tmp_path: Path) -> None:
    _one_line_error(cli("devices", "enroll", "dev-1", "--dir", str(tmp_path / "none")), 1, "has no secured broker")
    _one_line_error(cli("broker", "start", "--dir", str(tmp_path / "x"), "--tls", "--insecure"), 2,
                    "--tls cannot be combined with --insecure")
    plain = tmp_path / "plain"
    started = cli("broker", "start", "--dir", str(plain), "--secure", "--json")
    try:
        assert started.exit_code == 0, started.stderr
        _one_line_error(cli("devices", "enroll", "dev-1", "--dir", str(plain), "--tls"), 1, "secured without TLS")
        bad = tmp_path / "bad.json"
        bad.write_text("[]")
        url = json.loads(started.stdout)["url"]
        _one_line_error(cli("devices", "list", "--broker", url, "--credentials", str(bad)), 1, "bad.json")
        refused = cli("devices", "list", "--broker", url, "--json")  # anonymous
        assert refused.exit_code == 1 and "refused" in refused.stderr and refused.stdout == ""
    finally:
        cli("broker", "stop", "--dir", str(plain))

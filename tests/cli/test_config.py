"""Configuration precedence: tinyfleet.toml < TINYFLEET_* environment < flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinyfleet import config


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TINYFLEET_BROKER", raising=False)
    monkeypatch.delenv("TINYFLEET_CONFIG", raising=False)
    config.set_config_path(None)


def test_precedence_file_env_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert config.setting("broker") is None
    (tmp_path / "tinyfleet.toml").write_text('broker = "mqtt://file:1"\n')
    assert config.setting("broker") == "mqtt://file:1"
    monkeypatch.setenv("TINYFLEET_BROKER", "mqtt://env:2")
    assert config.setting("broker") == "mqtt://env:2"
    assert config.setting("broker", "mqtt://flag:3") == "mqtt://flag:3"
    assert config.effective()["broker"]["source"] == "env TINYFLEET_BROKER"


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "tinyfleet.toml").write_text("broker = \n")
    with pytest.raises(config.ConfigError, match="tinyfleet.toml: invalid TOML"):
        config.setting("broker")



# ---------------------------------------------------------------------------------------------------------------
# Every key README documents is honoured by every command that has the matching flag (issue #12, attack 9).
# Commands run in-process (Typer's runner) from a directory holding tinyfleet.toml, or with TINYFLEET_<KEY> set.

KEYS = ("broker", "fleet", "registry", "endpoint", "update_endpoint", "models", "username", "credentials")
"""The keys README.md documents: every key of tinyfleet.config.DEFAULTS."""


def _invoke(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from tinyfleet.cli.main import app

    return CliRunner().invoke(app, list(args), env=env)


def _toml(tmp_path: Path, **keys: str) -> None:
    (tmp_path / "tinyfleet.toml").write_text("".join(f'{k} = "{v}"\n' for k, v in keys.items()))


@pytest.fixture()
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in (*KEYS, "credentials", "registry_store", "registry_endpoint", "mqtt_password", "password"):
        monkeypatch.delenv(f"TINYFLEET_{key.upper()}", raising=False)


def test_readme_keys_are_the_keys_config_knows() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("# tinyfleet.toml", 1)[1].split("```", 1)[0]
    documented = {line.split("=", 1)[0].strip() for line in block.splitlines() if "=" in line}
    assert documented == set(KEYS) == set(config.DEFAULTS)


def test_broker_key(tmp_path: Path, mosquitto, _no_env) -> None:  # type: ignore[no-untyped-def]
    _toml(tmp_path, broker=mosquitto.url, fleet="cfg-broker")
    listed = _invoke("devices", "list", "--json")
    assert listed.exit_code == 0, listed.stderr
    heard = _invoke("registry", "listen", "--duration", "0", "--store", str(tmp_path / "reg"), "--json")
    assert heard.exit_code == 0, heard.stderr
    assert __import__("json").loads(heard.stdout)["broker"] == mosquitto.url
    # federate run: the broker of the file is used (no --simulate, no --broker): nobody is there
    fed = _invoke("federate", "run", "--task", "sine", "--rounds", "1", "--quorum-timeout", "0.2", "--out",
                  str(tmp_path / "runs"))
    assert fed.exit_code == 1 and "only 0 of the 1 required devices came online" in fed.stderr, fed.stderr
    (tmp_path / "tinyfleet.toml").unlink()
    env = _invoke("registry", "listen", "--duration", "0", "--store", str(tmp_path / "reg"), "--json",
                  env={"TINYFLEET_BROKER": mosquitto.url})
    assert env.exit_code == 0, env.stderr
    missing = _invoke("registry", "listen", "--duration", "0")
    assert missing.exit_code == 2 and "no broker to listen to" in missing.stderr


def test_fleet_key(tmp_path: Path, mosquitto, _no_env) -> None:  # type: ignore[no-untyped-def]
    import json

    from broker.secure import SecureBrokerConfig

    _toml(tmp_path, broker=mosquitto.url, fleet="cfg-fleet")
    listed = _invoke("devices", "list", "--json")
    assert listed.exit_code == 0 and json.loads(listed.stdout)["fleet"] == "cfg-fleet", listed.stderr
    heard = _invoke("registry", "listen", "--duration", "0", "--store", str(tmp_path / "reg"), "--json")
    assert json.loads(heard.stdout)["fleet"] == "cfg-fleet"
    SecureBrokerConfig(tmp_path / "mq").initialize()
    enrolled = _invoke("devices", "enroll", "dev-f1", "--dir", str(tmp_path / "mq"), "--json")
    assert enrolled.exit_code == 0 and json.loads(enrolled.stdout)["fleet"] == "cfg-fleet", enrolled.stderr
    fed = _invoke("federate", "run", "--task", "sine", "--rounds", "1", "--quorum-timeout", "0.2", "--out",
                  str(tmp_path / "runs"), "--run-id", "f")
    assert fed.exit_code == 1
    assert json.loads((tmp_path / "runs" / "f" / "run.json").read_text())["fleet"] == "cfg-fleet"
    flag = _invoke("devices", "list", "--fleet", "flagged", "--json")  # a flag still wins
    assert json.loads(flag.stdout)["fleet"] == "flagged"


def test_registry_key(tmp_path: Path, _no_env) -> None:  # type: ignore[no-untyped-def]
    import json

    from tests.support.registry import td

    (tmp_path / "d.json").write_text(json.dumps(td("cfg-dev", 4096, 32768, [])))
    _toml(tmp_path, registry=str(tmp_path / "from-file"))
    assert _invoke("registry", "add-device", str(tmp_path / "d.json")).exit_code == 0
    (tmp_path / "tinyfleet.toml").unlink()
    for var in ("TINYFLEET_REGISTRY", "TINYFLEET_REGISTRY_STORE"):  # the README's name and the older one
        got = _invoke("registry", "inventory", "--json", env={var: str(tmp_path / "from-file")})
        assert got.exit_code == 0, got.stderr
        assert [d["id"] for d in json.loads(got.stdout)] == ["cfg-dev"], got.stdout
    revoked = _invoke("devices", "revoke", "cfg-dev", "--dir", str(tmp_path / "no-broker"),
                      env={"TINYFLEET_REGISTRY": str(tmp_path / "from-file")})
    assert revoked.exit_code == 1 and "not initialized" in revoked.stderr  # (no broker there; nothing changed)


def test_endpoint_and_update_endpoint_keys(  # type: ignore[no-untyped-def]
        tmp_path: Path, oxigraph_server, _no_env) -> None:
    import json

    from tests.support.registry import td

    (tmp_path / "d.json").write_text(json.dumps(td("ep-dev", 4096, 32768, [])))
    url = oxigraph_server.url
    _toml(tmp_path, endpoint=f"{url}/query", update_endpoint=f"{url}/update")
    added = _invoke("registry", "add-device", str(tmp_path / "d.json"))
    assert added.exit_code == 0, added.stderr  # written through update_endpoint (the query URL refuses updates)
    (tmp_path / "tinyfleet.toml").unlink()
    got = _invoke("registry", "inventory", "--json", env={"TINYFLEET_ENDPOINT": f"{url}/query"})
    assert got.exit_code == 0, got.stderr
    assert "ep-dev" in [d["id"] for d in json.loads(got.stdout)]
    _toml(tmp_path, endpoint=f"{url}/query", update_endpoint=f"{url}/query")
    wrong = _invoke("registry", "add-device", str(tmp_path / "d.json"))
    assert wrong.exit_code != 0  # proof that the update URL came from the file


def test_models_key(tmp_path: Path, _no_env) -> None:  # type: ignore[no-untyped-def]
    nowhere = tmp_path / "no-models"
    nowhere.mkdir()
    _toml(tmp_path, models=str(nowhere))
    fed = _invoke("federate", "run", "--task", "sine", "--simulate", "1", "--rounds", "1", "--out",
                  str(tmp_path / "runs"))
    assert fed.exit_code != 0 and str(nowhere) in fed.stderr, fed.stderr
    dev = _invoke("devices", "run", "--id", "m-1", "--duration", "0", "--insecure")
    assert dev.exit_code != 0 and str(nowhere) in dev.stderr, dev.stderr


def test_username_key(tmp_path: Path, _no_env) -> None:  # type: ignore[no-untyped-def]
    import json

    from broker.accounts import server_credentials
    from broker.secure import secured_broker

    broker = secured_broker(tmp_path / "mq")
    info = broker.start()
    try:
        password = server_credentials(tmp_path / "mq").password or ""
        _toml(tmp_path, broker=info.url, fleet="cfg-user", username="fleet-server")
        ok = _invoke("devices", "list", "--json", env={"TINYFLEET_MQTT_PASSWORD": password})
        assert ok.exit_code == 0 and json.loads(ok.stdout)["fleet"] == "cfg-user", ok.stderr
        heard = _invoke("registry", "listen", "--duration", "0", "--store", str(tmp_path / "reg"), "--json",
                        env={"TINYFLEET_MQTT_PASSWORD": password})
        assert heard.exit_code == 0, heard.stderr
        other = _invoke("devices", "list", "--json", env={"TINYFLEET_PASSWORD": password})  # mqtt_grid's variable
        assert other.exit_code == 0, other.stderr
        _toml(tmp_path, broker=info.url, fleet="cfg-user", username="nobody")
        refused = _invoke("devices", "list", "--json", env={"TINYFLEET_MQTT_PASSWORD": password})
        assert refused.exit_code == 1 and "refused" in refused.stderr, refused.stderr
    finally:
        broker.stop()


def test_credentials_key(tmp_path: Path, _no_env) -> None:  # type: ignore[no-untyped-def]
    import json

    from broker.files import SERVER_USER, SecurityPaths
    from broker.secure import secured_broker

    broker = secured_broker(tmp_path / "mq")
    info = broker.start()
    try:
        account = SecurityPaths(tmp_path / "mq").credentials_dir / f"{SERVER_USER}.json"
        _toml(tmp_path, broker=info.url, fleet="cfg-cred", credentials=str(account))
        ok = _invoke("devices", "list", "--json")
        assert ok.exit_code == 0 and json.loads(ok.stdout)["fleet"] == "cfg-cred", ok.stderr
        heard = _invoke("registry", "listen", "--duration", "0", "--store", str(tmp_path / "reg"), "--json")
        assert heard.exit_code == 0, heard.stderr
        fed = _invoke("federate", "run", "--task", "sine", "--rounds", "1", "--quorum-timeout", "0.2", "--out",
                      str(tmp_path / "runs"))
        assert fed.exit_code == 1 and "only 0 of the 1 required devices" in fed.stderr, fed.stderr  # logged in
        _toml(tmp_path, broker=info.url, fleet="cfg-cred")
        refused = _invoke("devices", "list", "--json")
        assert refused.exit_code == 1 and "--credentials" in refused.stderr, refused.stderr
    finally:
        broker.stop()

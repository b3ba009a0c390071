"""Configuration: `tinyfleet.toml` < environment variables < command-line flags.

Every setting can come from three places; the later one wins:

1. a TOML file: `tinyfleet.toml` in the working directory, or the file named by `--config`
   (or by `TINYFLEET_CONFIG`), with top-level keys such as ``broker = "mqtt://127.0.0.1:1883"``;
2. an environment variable `TINYFLEET_<KEY>` (e.g. `TINYFLEET_BROKER`, `TINYFLEET_REGISTRY`);
3. the command's flag.

Settings known here (the keys of `DEFAULTS`) are documented in the README. `setting` is the one
resolution function: every command that has the matching flag (``--broker``, ``--fleet``,
``--store`` for `registry`, ``--endpoint``, ``--update-endpoint``, ``--models``, ``--user`` /
``--mqtt-user`` for `username`) passes its flag through it, so a key in the file or the
environment means the same thing to every command (tests/cli/test_config.py checks each key).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from devices.wire.topics import DEFAULT_FLEET
from firmware_models.exceptions import TinyFleetError


class ConfigError(TinyFleetError):
    """The configuration file is unreadable or has an unknown key or a wrong type."""

    exit_code = 2


DEFAULTS: dict[str, Any] = {
    "broker": None,          # mqtt://host:port of an existing broker; None = start a private Mosquitto
    "fleet": DEFAULT_FLEET,  # fleet name in the MQTT topic tree
    "registry": None,        # path of the embedded registry store; None = user data dir
    "endpoint": None,        # SPARQL query endpoint of a remote registry
    "update_endpoint": None, # SPARQL update endpoint (default: same as endpoint)
    "models": None,          # directory of built models; None = user cache dir
    "username": None,        # MQTT username (the password only from the environment: `mqtt_password`)
    "credentials": None,     # server account JSON (username, password, ca, cert, key) for `broker`
}

ALIASES: dict[str, tuple[str, ...]] = {
    "registry": ("TINYFLEET_REGISTRY_STORE",),
    "endpoint": ("TINYFLEET_REGISTRY_ENDPOINT",),
}
"""Older variable names still read (after `TINYFLEET_<KEY>`), so existing scripts keep working."""

_config_path: Path | None = None


def set_config_path(path: Path | None) -> None:
    """Remember the `--config` file given to the top-level command."""
    global _config_path
    if path is not None and not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    _config_path = path
    _file_settings()  # a broken file is reported by every command, not only those that read it


def _file_settings() -> tuple[dict[str, Any], Path | None]:
    path = _config_path
    if path is None and os.environ.get("TINYFLEET_CONFIG"):
        path = Path(os.environ["TINYFLEET_CONFIG"])
        if not path.is_file():
            raise ConfigError(f"{path}: configuration file not found (from TINYFLEET_CONFIG)")
    if path is None and Path("tinyfleet.toml").is_file():
        path = Path("tinyfleet.toml")
    if path is None:
        return {}, None
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc})") from None
    unknown = sorted(set(data) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(DEFAULTS)}")
    for key, value in data.items():
        if not isinstance(value, str):
            raise ConfigError(f"{path}: key {key!r} must be a string, got {type(value).__name__}")
    return data, path


def _env(key: str) -> tuple[str, str] | None:
    """(value, variable name) of the first non-empty environment variable for `key`."""
    for name in (f"TINYFLEET_{key.upper()}", *ALIASES.get(key, ())):
        if os.environ.get(name):
            return os.environ[name], name
    return None


def setting(key: str, flag: Any = None, *, default: Any = None) -> Any:
    """The effective value of `key`: the flag if given, else the environment, else the file, else the default.

    `default` replaces the built-in default of `key` for commands whose own default differs
    (e.g. `devices simulate` uses the fleet "sim").
    """
    if key not in DEFAULTS:
        raise KeyError(key)
    if flag is not None:
        return flag
    env = _env(key)
    if env is not None:
        return env[0]
    data, _ = _file_settings()
    return data.get(key, DEFAULTS[key] if default is None else default)


def path_setting(key: str, flag: Path | None = None) -> Path | None:
    """`setting` for keys that name a directory (``registry``, ``models``): a `Path` or None."""
    value = setting(key, flag)
    return None if value is None else Path(value).expanduser()


def effective() -> dict[str, Any]:
    """All settings with where each came from (for `tinyfleet doctor`)."""
    data, path = _file_settings()
    result: dict[str, Any] = {}
    for key, default in DEFAULTS.items():
        env = _env(key)
        if env is not None:
            result[key] = {"value": env[0], "source": f"env {env[1]}"}
        elif key in data:
            result[key] = {"value": data[key], "source": str(path)}
        else:
            result[key] = {"value": default, "source": "default"}
    return result


PASSWORD_VARIABLES = ("TINYFLEET_MQTT_PASSWORD", "TINYFLEET_PASSWORD")
"""Where the MQTT password of `username` comes from (never from a file or a flag that shows in `ps`)."""


def mqtt_password() -> str | None:
    """The MQTT password from the environment (`PASSWORD_VARIABLES`, first one set), else None."""
    return next((os.environ[v] for v in PASSWORD_VARIABLES if os.environ.get(v)), None)


def mqtt_grid(**options: Any) -> Any:
    """A `federation.MqttGrid` for the broker, fleet and account of the configuration (file < env < `options`).

    ``broker`` is required; the account is ``credentials`` (a JSON file) if set, else ``username``
    with the password from ``TINYFLEET_PASSWORD``, else none (an open broker). Other `options`
    (``use_case``, ``local_steps``, ``lr``, ``allow``, ...) are passed to `MqttGrid` as they are.
    """
    from devices.link.address import Credentials
    from federation import MqttGrid

    broker = setting("broker", options.pop("broker", None))
    if not broker:
        raise ConfigError("no broker configured: set broker = \"mqtt://host:port\" in tinyfleet.toml, "
                          "TINYFLEET_BROKER, or pass broker=...")
    fleet = setting("fleet", options.pop("fleet", None))
    credentials = options.pop("credentials", None) or setting("credentials")
    if credentials is None and setting("username"):
        credentials = Credentials(setting("username"), mqtt_password())
    return MqttGrid(broker, fleet=fleet, credentials=credentials, **options)

"""`tinyfleet serve`: the registry as a W3C WoT Thing Description Directory and a fleet dashboard.

`tinyfleet serve --store DIR | --endpoint URL [--runs DIR] [--broker URL --fleet F] [--host H --port P]`
serves until Ctrl-C; `tinyfleet serve token --name NAME` creates a bearer token for writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tinyfleet.cli.output import JSON_HELP, err, print_json, run_until
from tinyfleet.cli.registry import EndpointOpt, StoreOpt, UpdateOpt, UserOpt, _open

app = typer.Typer(help="Serve the registry over HTTP: a WoT Thing Description Directory and a fleet dashboard.",
                  invoke_without_command=True)

TokensOpt = Annotated[Path | None, typer.Option("--tokens", dir_okay=False, envvar="TINYFLEET_SERVE_TOKENS",
                                                help="Token file (hashed bearer tokens; default: user config dir).")]


@app.callback()
def serve(ctx: typer.Context,
          store: StoreOpt = None, endpoint: EndpointOpt = None, update_endpoint: UpdateOpt = None,
          user: UserOpt = None,
          host: Annotated[str, typer.Option("--host", help="Address to bind (loopback by default).")] = "127.0.0.1",
          port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port (0 = any free port).")] = 8080,
          runs: Annotated[list[Path] | None, typer.Option(
              "--runs", file_okay=False, help="Run directory, or a directory of runs (repeatable), for the "
              "dashboard's learning curves.")] = None,
          broker: Annotated[str | None, typer.Option("--broker", help="Follow devices' TDs and presence on this "
                                                     "broker (mqtt://host:port); changes become SSE events.")] = None,
          fleet: Annotated[str | None, typer.Option("--fleet", help="Fleet to follow with --broker; '+' = all "
                                                    "(default: config/env `fleet`, else '+').")] = None,
          credentials: Annotated[Path | None, typer.Option(
              "--credentials", dir_okay=False, help="Server account JSON for --broker (see `registry listen`); "
              "else user from --mqtt-user and TINYFLEET_MQTT_PASSWORD.")] = None,
          mqtt_user: Annotated[str | None, typer.Option("--mqtt-user", help="MQTT user name for --broker.")] = None,
          tokens: TokensOpt = None,
          cors_origin: Annotated[list[str] | None, typer.Option(
              "--cors-origin", help="Allow browser calls from this origin (repeatable); CORS is off by default.")
          ] = None,
          max_body: Annotated[int, typer.Option("--max-body", min=1024, max=64 << 20,
                                                help="Largest request body in bytes.")] = 1 << 20,
          no_validation: Annotated[bool, typer.Option("--no-validation", help="Store TDs without JSON Schema/SHACL "
                                                      "validation (not recommended).")] = False,
          duration: Annotated[float | None, typer.Option("--duration", min=0.0,
                                                         help="Stop after S seconds (default: until Ctrl-C).")] = None,
          ) -> None:
    """Serve the registry until Ctrl-C: TDD API at /things, /events, /search/sparql, /.well-known/wot;
    dashboard at /. Reads are open, writes need a token from `tinyfleet serve token`.

    Example: tinyfleet serve --store demo-out/registry --runs demo-out/runs --port 8080
    """
    if ctx.invoked_subcommand is not None:
        return
    from devices.link.address import Credentials, parse_broker_url
    from devices.wire.topics import check_name
    from tinyfleet import config
    from tinyfleet.serve.auth import TokenStore, default_tokens_path
    from tinyfleet.serve.server import DirectoryServer, ServeOptions

    broker = config.setting("broker", broker)  # tinyfleet.toml < TINYFLEET_* < flags, as every command
    fleet = str(config.setting("fleet", fleet, default="+"))
    credentials = config.path_setting("credentials", credentials)
    mqtt_user = config.setting("username", mqtt_user)
    address = parse_broker_url(broker) if broker else None
    if fleet != "+":
        check_name(fleet, what="fleet name")
    creds = None
    if address is not None:
        if credentials is not None:
            from broker.accounts import load_credentials

            creds = load_credentials(credentials)
        elif mqtt_user:
            creds = Credentials(mqtt_user, config.mqtt_password())
    for r in runs or []:
        if not r.is_dir():
            raise typer.BadParameter(f"{r} is not a directory", param_hint="--runs")
    token_path = tokens or default_tokens_path()
    options = ServeOptions(host=host, port=port, tokens=token_path, runs=list(runs or []), broker=address,
                           credentials=creds, fleet=fleet, cors_origins=list(cors_origin or []), max_body=max_body,
                           validate=not no_validation)
    with _open(store, endpoint, update_endpoint, user) as st, DirectoryServer(st, options) as server:
        n_tokens = len(TokenStore(token_path).names())
        err.print(f"serving the registry on {server.url}  (dashboard {server.url}/, TDD API {server.url}/things, "
                  f"directory TD {server.url}/.well-known/wot)", highlight=False, soft_wrap=True)
        err.print(f"writes: {n_tokens} token(s) in {token_path}" if n_tokens else
                  "writes: none possible yet (read-only); create a token with `tinyfleet serve token`",
                  highlight=False)
        run_until(duration)


@app.command("token")
def token(name: Annotated[str, typer.Option("--name", help="Name of the token (to tell tokens apart).")] = "default",
          tokens: TokensOpt = None, json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False) -> None:
    """Create a bearer token for the directory's write operations; it is printed once and stored hashed.

    Example: tinyfleet serve token --name ci --json
    """
    from tinyfleet.serve.auth import TokenStore, default_tokens_path

    path = tokens or default_tokens_path()
    secret = TokenStore(path).create(name)
    if json_out:
        print_json({"name": name, "token": secret, "file": str(path)})
        return
    err.print(f"token {name!r} stored (hashed) in {path}; it is shown only now:", highlight=False)
    print(secret)


def serve_demo_output(out: Path, *, port: int, duration: float | None = None) -> None:
    """Serve a finished demo's registry and runs (read-only) until Ctrl-C: `tinyfleet demo --serve`."""
    from registry.store import open_store
    from tinyfleet.serve.server import DirectoryServer, ServeOptions

    with open_store(out / "registry") as st, DirectoryServer(st, ServeOptions(port=port, runs=[out / "runs"])) as srv:
        err.print(f"dashboard of the demo: {srv.url}/  (TDD API {srv.url}/things); Ctrl-C to stop", highlight=False,
                  soft_wrap=True)
        run_until(duration)

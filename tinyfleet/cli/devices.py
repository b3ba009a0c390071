"""`tinyfleet devices`: run one device agent, simulate a fleet, list and show devices on a broker."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from broker.process import MosquittoBroker, read_state
from devices.boards import DEFAULT_BOARD, get_board
from devices.exceptions import DeviceLinkError
from devices.link.address import BrokerAddress, Credentials, parse_broker_url
from devices.wire.topics import check_name
from firmware_models.exceptions import TinyFleetError
from tinyfleet import config
from tinyfleet.cli import accounts
from tinyfleet.cli.accounts import CLI_ACCOUNT, managed_server_credentials
from tinyfleet.cli.broker import default_dir
from tinyfleet.cli.output import JSON_HELP, err, out, print_json, run_until, table

app = typer.Typer(
    help="Device agents: run one, simulate a fleet, list the devices on a broker.\n\n"
    "Example: tinyfleet devices simulate --n 100 --task sine --duration 30",
    no_args_is_help=True,
)

BrokerOption = Annotated[str | None, typer.Option(
    "--broker", help="mqtt://host:port or mqtts://host:port; default: config/env, else the broker of "
    "`tinyfleet broker start`, else (run/simulate) a private Mosquitto for this command.")]
FleetOption = Annotated[str | None, typer.Option(help="Fleet name (topic level; default: config/env `fleet`, else "
                                                      "'default').")]
UserOption = Annotated[str | None, typer.Option(help="MQTT user name (default: the client id).")]
ServerUserOption = Annotated[str | None, typer.Option(
    "--user", help="MQTT user name of a server account (default: config/env `username`).")]
PasswordOption = Annotated[str | None, typer.Option(envvar=list(config.PASSWORD_VARIABLES), show_envvar=True,
                                                    help="MQTT password (prefer the environment variable).")]
CaOption = Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="CA certificate (mqtts).")]
CertOption = Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="Client certificate (mqtts).")]
KeyOption = Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="Client key (mqtts).")]
CredentialsOption = Annotated[Path | None, typer.Option(
    "--credentials", dir_okay=False, help="JSON credentials file (username, password, ca, cert, key), e.g. the "
    "server account file that `tinyfleet broker start` reports.")]


BrokerDirOption = Annotated[Path | None, typer.Option(
    "--broker-dir", file_okay=False, help="Directory of a broker started by `tinyfleet broker start --dir`: "
    "its URL is used and, as it is secured, the devices are enrolled there (own password each).")]
InsecureOption = Annotated[bool, typer.Option(
    "--insecure", help="If this command starts its own private broker: leave it open (debugging only).")]


def _credentials(user: str | None, password: str | None, ca: Path | None, cert: Path | None,
                 key: Path | None) -> Credentials | None:
    if not any((user, password, ca, cert, key)):
        return None
    return Credentials(user, password, ca, cert, key)


def _known_broker(broker: str | None, broker_dir: Path | None = None) -> tuple[BrokerAddress, Path | None] | None:
    """The broker to talk to and, when tinyfleet manages it, its directory (for enrolment/credentials).

    Order: --broker (or config/env), else the broker running from --broker-dir, else the one of
    `tinyfleet broker start` in the default directory.
    """
    url = config.setting("broker", broker)
    if url:
        return parse_broker_url(str(url)), broker_dir
    directory = broker_dir if broker_dir is not None else default_dir()
    state = read_state(directory)
    if state is None:
        if broker_dir is not None:
            raise DeviceLinkError(f"no broker runs from {broker_dir} (start it with `tinyfleet broker start "
                                  f"--dir {broker_dir}`)")
        return None
    return BrokerAddress(state.host, state.port, state.tls), directory


@contextmanager
def _broker(broker: str | None, *, may_start: bool, broker_dir: Path | None = None,
            insecure: bool = False) -> Iterator[tuple[BrokerAddress, Path | None]]:
    """The broker to use; without any, start a private (secured) Mosquitto for the command's lifetime."""
    known = _known_broker(broker, broker_dir)
    if known is not None:
        yield known
        return
    if not may_start:
        raise DeviceLinkError("no broker: pass --broker mqtt://host:port or run `tinyfleet broker start`")
    from broker.secure import secured_broker

    with tempfile.TemporaryDirectory(prefix="tinyfleet-mq-") as tmp:
        d = Path(tmp)
        with (MosquittoBroker(d) if insecure else secured_broker(d)) as mq:
            err.print(f"started a private {'INSECURE' if insecure else 'secured'} Mosquitto on "
                      f"mqtt://{mq.host}:{mq.port}")
            yield BrokerAddress(mq.host, int(mq.port or 0)), d


def _log_to_stderr(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")


@app.command()
def run(
    device_id: Annotated[str, typer.Option("--id", help="Device id = MQTT client id (no / + #).")],
    task: Annotated[str, typer.Option(help="Use case the device learns (e.g. sine).")] = "sine",
    broker: BrokerOption = None,
    models: Annotated[Path | None, typer.Option(exists=True, file_okay=False,
                                                help="Folder of `tinyfleet models build` output.")] = None,
    board: Annotated[str, typer.Option(help="Board profile (RAM, flash, sensors).")] = DEFAULT_BOARD,
    fleet: FleetOption = None,
    state_dir: Annotated[Path | None, typer.Option(file_okay=False,
                                                   help="Where deployed models are kept.")] = None,
    samples: Annotated[int, typer.Option(min=2, help="Local samples of this device.")] = 100,
    seed: Annotated[int, typer.Option(help="Selects this device's task (non-IID data).", min=0)] = 0,
    telemetry: Annotated[float, typer.Option(min=0, help="Telemetry period in seconds (0: off).")] = 10.0,
    duration: Annotated[float | None, typer.Option(min=0, help="Stop after S seconds (default: Ctrl-C).")] = None,
    user: UserOption = None, password: PasswordOption = None, ca: CaOption = None, cert: CertOption = None,
    key: KeyOption = None,
    broker_dir: BrokerDirOption = None, insecure: InsecureOption = False,
    rotate: Annotated[bool, typer.Option("--rotate", help="With --broker-dir: if DEVICE is already enrolled, "
                                         "replace its password (the device holding the old one is locked out); "
                                         "without it an existing account is refused.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every task on stderr.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Run one device agent until Ctrl-C (or --duration): TD, presence, telemetry, tasks.

    Example: tinyfleet devices run --id dev-001 --task sine --broker mqtt://127.0.0.1:1883
    """
    from devices.agent import AgentConfig, DeviceAgent
    from devices.link.hub import MqttHub
    from devices.simulator import LearnerFactory
    from firmware_models.usecases import get_use_case

    _log_to_stderr(verbose)
    check_name(device_id)
    fleet = check_name(str(config.setting("fleet", fleet)), what="fleet name")
    models = config.path_setting("models", models)
    prof = get_board(board)
    uc = get_use_case(task)
    data = uc.devices("train", seed + 1, samples_per_device=samples, seed=seed)[seed]
    learner = LearnerFactory(uc, models, seed=seed)(seed, data)
    creds = _credentials(user, password, ca, cert, key)
    with _broker(broker, may_start=True, broker_dir=broker_dir, insecure=insecure) as (address, managed):
        if creds is None and managed is not None:
            from broker.accounts import enroll_devices
            from broker.secure import is_secured

            if is_secured(managed):  # its own password on the managed broker; an existing account only with --rotate
                creds = enroll_devices(managed, [device_id], fleet=fleet, rotate=rotate)[0].credentials
        cfg = AgentConfig(device_id=device_id, board=prof, fleet=fleet, use_case=uc.name, sensors=tuple(uc.sensors),
                          state_dir=state_dir or Path(tempfile.gettempdir()) / "tinyfleet-devices" / device_id,
                          telemetry_s=telemetry, seed=seed)
        agent = DeviceAgent(cfg, learner, data, address=address, authenticated=bool(creds and creds.password))
        hub = MqttHub(address, credentials=creds, workers=1)
        link = hub.add(agent)
        hub.start()
        try:
            if not hub.wait_connected(10):
                raise DeviceLinkError(link.last_error or f"{device_id}: no connection to {address.url} within 10 s")
            err.print(f"{device_id} online at {address.url} (fleet {fleet}, board {prof.name}); Ctrl-C stops")
            run_until(duration)
        finally:
            hub.stop()
        summary = {"device": device_id, "broker": address.url, "fleet": fleet, "board": prof.name,
                   "tasks_done": agent.tasks_done, "errors_sent": agent.errors_sent,
                   "samples_seen": int(agent.learner.samples_seen_)}
    if json_out:
        print_json(summary)
    else:
        table(f"device {device_id}", ["key", "value"], [(k, v) for k, v in summary.items()])


@app.command()
def simulate(
    n: Annotated[int, typer.Option("--n", min=1, max=100_000, help="Number of devices.")] = 10,
    task: Annotated[str, typer.Option(help="Use case (e.g. sine).")] = "sine",
    boards: Annotated[str, typer.Option(help="Board mix, e.g. nano33ble:0.5,esp32:0.3,uno:0.2")] = DEFAULT_BOARD,
    broker: BrokerOption = None,
    duration: Annotated[float | None, typer.Option(min=0, help="Run S seconds (default: until Ctrl-C).")] = None,
    fleet: FleetOption = None,
    models: Annotated[Path | None, typer.Option(exists=True, file_okay=False,
                                                help="Folder of `tinyfleet models build` output.")] = None,
    samples: Annotated[int, typer.Option(min=2, help="Local samples per device.")] = 50,
    seed: Annotated[int, typer.Option(help="Seed of data, boards and faults.", min=0)] = 0,
    data: Annotated[Path | None, typer.Option(
        "--data", help="Real data set for the use case (as for `models build --data`); devices stream it.")] = None,
    drop: Annotated[float, typer.Option(min=0, max=1, help="Probability a device ignores a task.")] = 0.0,
    latency: Annotated[float, typer.Option(min=0, help="Seconds added before each reply.")] = 0.0,
    slow_fraction: Annotated[float, typer.Option(min=0, max=1, help="Fraction of slow devices.")] = 0.0,
    slow_factor: Annotated[float, typer.Option(min=1, help="Compute-time multiplier of slow devices.")] = 4.0,
    crash_rate: Annotated[float, typer.Option(min=0, max=1, help="Per device and second: chance of a crash "
                                                                   "(the Last Will fires).")] = 0.0,
    crash_down: Annotated[float, typer.Option(min=0, help="Seconds a crashed device stays away.")] = 5.0,
    intermittent: Annotated[float, typer.Option(min=0, max=1, help="Fraction of devices that sleep.")] = 0.0,
    online: Annotated[float, typer.Option(min=0, help="An intermittent device is online ONLINE seconds...")] = 60.0,
    period: Annotated[float, typer.Option(min=0, help="... of every PERIOD seconds (random phase).")] = 180.0,
    id_prefix: Annotated[str, typer.Option(help="Device ids are PREFIX-0000, PREFIX-0001, ...")] = "sim",
    telemetry: Annotated[float, typer.Option(min=0, help="Telemetry period per device (0: off).")] = 30.0,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker threads for training.")] = 2,
    state_root: Annotated[Path | None, typer.Option(file_okay=False, help="Devices' model folders.")] = None,
    user: UserOption = None, password: PasswordOption = None,
    broker_dir: BrokerDirOption = None, insecure: InsecureOption = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every task on stderr.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Run N simulated devices in this process (one network thread), each with its own data and board.

    Example: tinyfleet devices simulate --n 100 --task sine --boards nano33ble:3,esp32:1 --duration 60
    """
    from devices.simulator import FaultKnobs, FleetSimulator

    _log_to_stderr(verbose)
    faults = FaultKnobs(drop_prob=drop, latency_s=latency, slow_fraction=slow_fraction, slow_factor=slow_factor,
                        crash_prob_per_s=crash_rate, crash_down_s=crash_down, intermittent_fraction=intermittent,
                        online_s=online, period_s=period)
    fleet = check_name(str(config.setting("fleet", fleet)), what="fleet name")
    models = config.path_setting("models", models)
    creds = _credentials(user, password, None, None, None)
    with (_broker(broker, may_start=True, broker_dir=broker_dir, insecure=insecure) as (address, managed),
          tempfile.TemporaryDirectory(prefix="tinyfleet-sim-") as tmp):
        from broker.accounts import enroll_device_credentials
        from broker.secure import is_secured
        from devices.simulator import simulated_ids

        t0 = time.monotonic()
        device_creds = (enroll_device_credentials(managed, simulated_ids(n, id_prefix), fleet=fleet)
                        if managed is not None and creds is None else {})
        enroll_s = time.monotonic() - t0
        sim = FleetSimulator(n=n, use_case=task, address=address, state_root=state_root or Path(tmp), boards=boards,
                             fleet=fleet, id_prefix=id_prefix, models_dir=models, data=data, samples_per_device=samples,
                             faults=faults, telemetry_s=telemetry, workers=workers, credentials=creds,
                             device_credentials=device_creds, seed=seed)

        secured = bool(creds and creds.password) or (managed is not None and is_secured(managed))
        try:
            t_connect = time.monotonic()
            connected = sim.start(timeout=max(10.0, n / 50))
            connect_s = time.monotonic() - t0
            online_s = time.monotonic() - t_connect
            err.print(f"{connected}/{n} devices online at {address.url} (fleet {fleet}) in {connect_s:.2f} s"
                      + (f" ({enroll_s:.2f} s enrolling)" if device_creds else ""))
            run_until(duration)
        finally:
            sim.stop()
        by_board: dict[str, int] = {}
        for a in sim.agents:
            by_board[a.config.board.name] = by_board.get(a.config.board.name, 0) + 1
        summary: dict[str, Any] = {
            "devices": n, "connected": connected, "connect_seconds": round(connect_s, 3),
            "enroll_seconds": round(enroll_s, 3) if device_creds else 0.0, "online_seconds": round(online_s, 3),
            "secured": secured, "broker": address.url,
            "fleet": fleet, "boards": by_board, "tasks_done": sum(a.tasks_done for a in sim.agents),
            "errors_sent": sum(a.errors_sent for a in sim.agents), "dropped": sum(a.dropped for a in sim.agents),
            "intermittent": len(sim.intermittent_ids), "sleeps": sum(a.sleeps for a in sim.agents),
            "unfit_devices": sum(1 for a in sim.agents if a.unfit_reason)}
    if json_out:
        print_json(summary)
    else:
        table(f"simulated fleet {fleet}", ["key", "value"], [(k, v) for k, v in summary.items()])


def _server_credentials(user: str | None, password: str | None) -> Credentials | None:
    """--user/--password of a server-side command; the user name defaults to the `username` setting."""
    return _credentials(config.setting("username", user), password, None, None, None)


def _server_connection(broker: str | None, creds: Credentials | None, credentials_file: Path | None,
                       account: str) -> tuple[BrokerAddress, Credentials | None]:
    """The broker and the server account a server-side devices command connects with.

    `--credentials FILE` (or the `credentials` setting) wins over --user/--password (`creds`); with neither, the
    default managed broker gets a server account of `account`'s own (one per purpose: never the coordinator's).
    """
    from broker.accounts import load_credentials

    credentials_file = config.path_setting("credentials", credentials_file)
    if credentials_file is not None:
        creds = load_credentials(credentials_file)
    known = _known_broker(broker)
    if known is None:
        raise DeviceLinkError("no broker: pass --broker mqtt://host:port or run `tinyfleet broker start`")
    address, managed = known
    if creds is None:
        creds = managed_server_credentials(managed, account)
    return address, creds


def _snapshot(broker: str | None, fleet: str, wait: float, creds: Credentials | None,
              credentials_file: Path | None = None, until: Any = None) -> Any:
    from devices.link.fleet_client import snapshot

    check_name(fleet, what="fleet name")
    address, creds = _server_connection(broker, creds, credentials_file, CLI_ACCOUNT)
    return snapshot(address, fleet=fleet, seconds=wait, credentials=creds, until=until)


@app.command(name="list")
def list_devices(
    broker: BrokerOption = None,
    fleet: FleetOption = None,
    wait: Annotated[float, typer.Option(min=0.1, max=60, help="Seconds to collect retained messages.")] = 1.0,
    user: ServerUserOption = None, password: PasswordOption = None, credentials: CredentialsOption = None,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Devices of a fleet known to the broker (retained presence and Thing Descriptions).

    Example: tinyfleet devices list --broker mqtt://127.0.0.1:1883 --json
    """
    fleet = str(config.setting("fleet", fleet))
    fc = _snapshot(broker, fleet, wait, _server_credentials(user, password), credentials)
    rows = []
    for dev in sorted(set(fc.presence) | set(fc.tds)):
        pres, td = fc.presence.get(dev, {}), fc.tds.get(dev, {})
        b = td.get("tinyfleet:board", {})
        rows.append({"device": dev, "online": bool(pres.get("online")),
                     "board": pres.get("board") or b.get("tinyfleet:name"),
                     "use_case": td.get("tinyfleet:useCase"), "ram_bytes": b.get("tinyfleet:ramBytes"),
                     "flash_bytes": b.get("tinyfleet:flashBytes"), "reason": pres.get("reason")})
    if json_out:
        print_json({"fleet": fleet, "devices": rows, "rejected": dict(fc.rejected)})
    else:
        if fc.rejected:
            err.print("ignored messages: " + ", ".join(f"{n} {why}" for why, n in sorted(fc.rejected.items())))
        table(f"fleet {fleet}: {sum(r['online'] for r in rows)} of {len(rows)} online",
              ["device", "online", "board", "use case", "RAM B", "flash B"],
              [(r["device"], r["online"], r["board"], r["use_case"], r["ram_bytes"], r["flash_bytes"]) for r in rows])


@app.command()
def show(
    device_id: Annotated[str, typer.Argument(help="Device id.")],
    broker: BrokerOption = None,
    fleet: FleetOption = None,
    wait: Annotated[float, typer.Option(min=0.1, max=60, help="Longest wait for the device's retained TD and "
                                                               "presence, in seconds (it returns as soon as both "
                                                               "arrived).")] = 5.0,
    user: ServerUserOption = None, password: PasswordOption = None, credentials: CredentialsOption = None,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """One device's Thing Description, presence and last telemetry.

    Example: tinyfleet devices show dev-001 --broker mqtt://127.0.0.1:1883
    """
    check_name(device_id)
    fleet = str(config.setting("fleet", fleet))
    fc = _snapshot(broker, fleet, wait, _server_credentials(user, password), credentials,
                   until=lambda c: device_id in c.presence and device_id in c.tds)
    if device_id not in fc.presence and device_id not in fc.tds:
        raise TinyFleetError(f"device {device_id!r} is not known in fleet {fleet!r} on the broker "
                             f"(known: {', '.join(sorted(fc.tds)) or 'none'})")
    doc = {"device": device_id, "presence": fc.presence.get(device_id), "telemetry": fc.telemetry.get(device_id),
           "td": fc.tds.get(device_id)}
    if json_out:
        print_json(doc)
        return
    td = doc["td"] or {}
    b = td.get("tinyfleet:board", {})
    rows = [("online", (doc["presence"] or {}).get("online")), ("title", td.get("title")),
            ("use case", td.get("tinyfleet:useCase")), ("board", b.get("tinyfleet:title")),
            ("MCU", b.get("tinyfleet:mcu")), ("RAM B", b.get("tinyfleet:ramBytes")),
            ("flash B", b.get("tinyfleet:flashBytes")), ("sensors", ", ".join(td.get("tinyfleet:sensors", []))),
            ("actions", ", ".join(td.get("actions", {})))]
    table(f"device {device_id}", ["key", "value"], rows)


CONFORMANCE_ACCOUNT = "fleet-conformance"
"""Server account `devices conformance` enrols on a secured managed broker (one per purpose)."""


@app.command()
def conformance(
    device: Annotated[str, typer.Option("--device", help="Id of the device to test (it must be online).")],
    broker: BrokerOption = None,
    fleet: FleetOption = None,
    credentials: CredentialsOption = None,
    device_credentials: Annotated[Path | None, typer.Option(
        "--device-credentials", dir_okay=False, help="The device's own credentials (the JSON of `devices enroll "
        "--json`): lets the Last Will check drop the device's connection on a secured broker.")] = None,
    models: Annotated[Path | None, typer.Option(exists=True, file_okay=False, help="Built models, for use cases "
                                                "with a backbone (the head sent in the tasks).")] = None,
    task: Annotated[str | None, typer.Option(help="Use case whose head to send (default: the TD's).")] = None,
    timeout: Annotated[float, typer.Option(min=0.5, max=600, help="Seconds to wait for each answer.")] = 10.0,
    user: ServerUserOption = None, password: PasswordOption = None,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Test a live device against the protocol: TD, presence, Will, train/evaluate/adapt, errors, duplicates.

    One line per check; exit 0 when every required check passes, 1 otherwise (docs/protocol.md, "Conformance").
    Example: tinyfleet devices conformance --device dev-001 --fleet lab --broker mqtt://127.0.0.1:1883
    """
    from broker.accounts import load_credentials
    from federation.conformance import check_device
    from federation.exceptions import ConformanceError

    check_name(device)
    fleet = check_name(str(config.setting("fleet", fleet)), what="fleet name")
    address, creds = _server_connection(broker, _server_credentials(user, password), credentials,
                                        CONFORMANCE_ACCOUNT)
    dev_creds = load_credentials(device_credentials) if device_credentials is not None else None
    report = check_device(address, fleet=fleet, device=device, credentials=creds, device_credentials=dev_creds,
                          models_dir=models, task=task, timeout=timeout)
    if json_out:
        print_json(report.to_json())
    else:
        for c in report.checks:
            mark = {"pass": "[green]PASS[/]", "fail": "[red]FAIL[/]", "skip": "[yellow]SKIP[/]"}[c.status]
            kind = "" if c.required else " (recommended)"
            out.print(f"{mark} {c.name}{kind}" + (f": {c.detail}" if c.detail else ""), highlight=False,
                      soft_wrap=True, markup=True)
    if not report.ok:
        bad = report.failed_required
        raise ConformanceError(f"{device}: {len(bad)} required check(s) failed: "
                               + "; ".join(f"{c.name} ({c.detail})" for c in bad[:3])[:600])


DEPLOY_ACCOUNT = "fleet-deploy"
"""Server account `devices deploy` enrols on a secured managed broker (one per purpose)."""


@app.command()
def deploy(
    model: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True,
                                          help="The .tflite file to roll out.")],
    device: Annotated[list[str] | None, typer.Option(
        "--device", help="Target device id (repeat); default: every online device of the fleet.")] = None,
    artifact: Annotated[str, typer.Option(
        help="What the file replaces on the device: model.tflite (whole model) or backbone.tflite.")] = "model.tflite",
    broker: BrokerOption = None,
    fleet: FleetOption = None,
    timeout: Annotated[float, typer.Option(min=1.0, max=3600, help="Seconds to wait for every outcome.")] = 60.0,
    user: ServerUserOption = None, password: PasswordOption = None, credentials: CredentialsOption = None,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Roll a model out to devices: chunks, sha256 check, fit check, atomic swap, self-test, rollback.

    Exits 1 unless every target device swapped the new model in (each device's outcome is listed).

    Example: tinyfleet devices deploy demo-out/deployed/model.tflite --fleet demo --broker mqtt://127.0.0.1:1883
    """
    from federation.rollout import rollout
    from firmware_models.tflite_inspect import inspect_tflite

    fleet = check_name(str(config.setting("fleet", fleet)), what="fleet name")
    targets = [check_name(d) for d in device or []]
    address, creds = _server_connection(broker, _server_credentials(user, password), credentials, DEPLOY_ACCOUNT)
    report = inspect_tflite(model)
    if not targets:
        from devices.link.fleet_client import snapshot

        targets = snapshot(address, fleet=fleet, seconds=1.0, credentials=creds, client_id=DEPLOY_ACCOUNT).online()
        if not targets:
            raise DeviceLinkError(f"no device of fleet {fleet!r} is online at {address.url}")
    result = rollout(model.read_bytes(), targets, address=address, fleet=fleet, credentials=creds,
                     client_id=creds.username if creds and creds.username else DEPLOY_ACCOUNT, artifact=artifact,
                     arena_bytes=report.arena_bytes, timeout=timeout)
    if json_out:
        print_json(result.to_json())
    else:
        table(f"deploy {model.name} ({result.nbytes} B, sha256 {result.sha256[:12]}…) to fleet {fleet}",
              ["device", "outcome"], sorted(result.per_device.items()))
    if not result.ok:
        bad = {d: o for d, o in result.per_device.items() if o != "swapped"}
        raise DeviceLinkError(f"{len(bad)} of {len(result.per_device)} devices did not swap the model in: "
                              + ", ".join(f"{d} ({o})" for d, o in sorted(bad.items())[:10]))


# The account commands of this group live in tinyfleet/cli/accounts.py (this module stays under 500 lines).
app.command()(accounts.enroll)
app.command()(accounts.revoke)

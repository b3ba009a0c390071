"""Compose a run's moving parts: broker, simulated fleet, MQTT transport and Grid.

`tinyfleet federate run --simulate N` must be one self-contained command: without `--broker` it
starts a private Mosquitto in the run directory, starts N simulated devices (each its own MQTT
client and task), and points the Grid at them; everything is stopped again by PID when the block
exits, also on errors. With `--broker` and no `--simulate` the run uses whatever devices are
present on that broker whose descriptions say they can learn the run's model
(`federation.selection`), optionally further restricted by an allow-list.

The private broker is secured like every broker tinyfleet manages (broker/secure.py):
no anonymous access, the coordinator logs in with the server account, and every simulated device
is enrolled with its own password before it connects.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Collection, Iterator
from pathlib import Path

import numpy as np

from broker.process import MosquittoBroker
from devices.learning.head import MLPHead
from devices.link.address import BrokerAddress, Credentials, parse_broker_url
from devices.simulator import DEFAULT_HIDDEN, FaultKnobs  # the head simulated devices build without a model
from devices.wire.protocol import ConfigKey, weight_names
from federation.coordinator import RunConfig
from federation.exceptions import FederationError
from federation.grid import DeviceFilter, FleetGrid
from federation.mqtt_transport import MqttTransport
from federation.selection import Describe, DeviceSelection, Requirement, training_ram_bytes
from federation.wire import ProtocolCodec
from firmware_models.usecases import get_use_case
from firmware_models.usecases.base import ARTIFACT_HEAD


def initial_parameters(task: str, *, models_dir: Path | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """The global head a run starts from: ``head.npz`` of a built model, else a seeded fresh MLP.

    Without a model folder only a backbone-free use case (sine) can start, with the same
    1-32-32-1 layout the simulated devices use.
    """
    uc = get_use_case(task)
    d = model_folder(task, models_dir)
    if d is not None:
        head = MLPHead.from_npz(d / ARTIFACT_HEAD, kind=uc.kind)
    else:
        probe = uc.devices("train", 1, samples_per_device=2, seed=seed)[0]
        n_out = int(probe.y.shape[1]) if probe.y.ndim > 1 else 1
        if uc.kind == "classification":
            raise FederationError(f"use case {task!r} needs --models DIR (the output of `tinyfleet models build`)")
        head = MLPHead.init([math.prod(uc.input_shape), *DEFAULT_HIDDEN, n_out], kind=uc.kind, seed=seed)
    ws = head.get_weights()
    return dict(zip(weight_names(len(ws)), (np.asarray(w, np.float32) for w in ws), strict=True))


def model_folder(task: str, models_dir: Path | None) -> Path | None:
    """The folder holding `task`'s built model: ``models_dir/<task>`` if it exists, else `models_dir`."""
    if models_dir is None:
        return None
    d = Path(models_dir)
    return d / task if (d / task).is_dir() else d


def requirement_for(config: RunConfig, *, models_dir: Path | None = None) -> Requirement:
    """What a device must declare to be sampled into `config`'s run (use case, on-device training RAM)."""
    head = initial_parameters(config.task, models_dir=models_dir, seed=config.seed)
    return Requirement(config.task, training_ram_bytes(head, models_dir=model_folder(config.task, models_dir)))


@contextlib.contextmanager
def fleet_grid(config: RunConfig, run_dir: Path, *, models_dir: Path | None = None,
               allow: Collection[str] | DeviceFilter | None = None, credentials: Credentials | None = None,
               broker_dir: Path | None = None, secure: bool = True,
               describe: Describe | None = None, faults: FaultKnobs | None = None) -> Iterator[FleetGrid]:
    """Yield a `FleetGrid` for `config`, starting a private broker and simulated devices if asked.

    Only devices whose description declares the run's use case and enough RAM to train its model
    are sampled (`federation.selection`); devices without one only with ``config.allow_undescribed``.

    Parameters
    ----------
    allow : collection of str or callable, optional
        A further restriction (e.g. registry matchmaking in the demo); both must admit a device.
    credentials : Credentials, optional
        The coordinator's server account on ``config.broker`` (``--credentials FILE``); with
        `broker_dir` and none given, a server account of this process's own there.
    broker_dir : Path, optional
        Directory of the tinyfleet-managed broker (``tinyfleet broker start --dir``): its URL when
        ``config.broker`` is None, and where simulated devices are enrolled when it is secured.
    secure : bool, default=True
        Secure the private broker this function starts (False only for debugging).
    describe : callable, optional
        Where device descriptions come from (the registry's records); default: the retained
        Thing Descriptions the coordinator's MQTT connection receives.
    faults : FaultKnobs, optional
        Fault knobs of the simulated devices (e.g. intermittent devices for asynchronous rounds).
    """
    with contextlib.ExitStack() as stack:
        url = config.broker
        if url is None and broker_dir is not None:
            url = _managed_url(broker_dir)
        if url is None:
            if not config.simulate:
                raise FederationError("no devices to federate with: give --broker URL (devices already online) "
                                      "or --simulate N")
            broker_dir = Path(run_dir) / "broker"
            if secure:
                from broker.accounts import server_credentials
                from broker.secure import secured_broker

                broker: MosquittoBroker = secured_broker(broker_dir)
                credentials = server_credentials(broker_dir)
            else:
                broker = MosquittoBroker(broker_dir)
            url = broker.start().url
            stack.callback(broker.stop)
        elif credentials is None and broker_dir is not None:
            from broker.accounts import process_server_account
            from broker.secure import is_secured

            if is_secured(broker_dir):  # an account of this process's own (concurrent runs must not share one)
                credentials = process_server_account(broker_dir)
        address = parse_broker_url(url)
        if config.simulate:
            _simulate(config, run_dir, stack, address=address, broker_dir=broker_dir, models_dir=models_dir,
                      faults=faults)
        transport = MqttTransport(address, fleet=config.fleet, credentials=credentials, descriptions=describe is None,
                                  broker_timeout=config.broker_timeout)
        selection = DeviceSelection(requirement_for(config, models_dir=models_dir),
                                    describe or transport.description,
                                    allow_undescribed=config.allow_undescribed)
        grid = FleetGrid(transport, ProtocolCodec({ConfigKey.LOCAL_STEPS: config.local_steps, ConfigKey.LR: config.lr}),
                         run_id=config.run_id, allow=selection if allow is None else _both(selection, allow))
        stack.callback(transport.close)
        yield grid


def _managed_url(broker_dir: Path) -> str:
    from broker.process import read_state

    state = read_state(broker_dir)
    if state is None:
        raise FederationError(f"no broker runs from {broker_dir} (start it with `tinyfleet broker start --dir "
                              f"{broker_dir}`, or give --broker URL)")
    return str(state.url)


def _simulate(config: RunConfig, run_dir: Path, stack: contextlib.ExitStack, *, address: BrokerAddress,
              broker_dir: Path | None, models_dir: Path | None, faults: FaultKnobs | None = None) -> None:
    """Start ``config.simulate`` simulated devices (enrolled on `broker_dir` when it is secured)."""
    from broker.accounts import enroll_device_credentials
    from devices.simulator import FleetSimulator, simulated_ids

    device_creds = (enroll_device_credentials(broker_dir, simulated_ids(config.simulate), fleet=config.fleet)
                    if broker_dir is not None else {})
    sim = FleetSimulator(n=config.simulate, use_case=config.task, address=address,
                         state_root=Path(run_dir) / "devices", fleet=config.fleet, id_prefix="sim",
                         models_dir=models_dir, samples_per_device=config.samples_per_device,
                         telemetry_s=0.0, device_credentials=device_creds, seed=config.seed,
                         faults=faults or FaultKnobs())
    stack.callback(sim.stop)
    connected = sim.start(timeout=config.quorum_timeout)
    if connected < config.simulate:
        errors = sim.connection_errors()
        first = next(iter(errors.values()), None)
        hint = ""
        if broker_dir is None and first is not None and " refused " in first:
            hint = (": the broker refuses devices it does not know; pass --broker-dir DIR (the directory of "
                    "`tinyfleet broker start --dir DIR`) so the simulated devices are enrolled there, or leave "
                    "out --broker for a private broker")
        raise FederationError(f"only {connected} of {config.simulate} simulated devices connected to "
                              f"{address.url}" + (f" ({first})" if first else "") + hint)


def _both(selection: DeviceSelection, allow: Collection[str] | DeviceFilter) -> DeviceFilter:
    """A filter admitting what `selection` and `allow` both admit (explaining exclusions like `selection`)."""
    extra: DeviceFilter = allow if callable(allow) else frozenset(allow).__contains__

    class _Both:
        def __call__(self, device_id: str) -> bool:
            return extra(device_id) and selection(device_id)

        def excluded(self, device_ids: list[str]) -> dict[str, str]:
            out = {d: "not in the run's allow-list" for d in device_ids if not extra(d)}
            return {**selection.excluded([d for d in device_ids if d not in out]), **out}

    return _Both()

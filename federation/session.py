"""Compose a run's moving parts: broker, simulated fleet, MQTT transport and Grid.

`tinyfleet federate run --simulate N` must be one self-contained command: without `--broker` it
starts a private Mosquitto in the run directory, starts N simulated devices (each its own MQTT
client and task), and points the Grid at them; everything is stopped again by PID when the block
exits, also on errors. With `--broker` and no `--simulate` the run uses whatever devices are
present on that broker (optionally restricted by an allow-list from registry matchmaking).

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
from devices.link.address import Credentials, parse_broker_url
from devices.simulator import DEFAULT_HIDDEN, FaultKnobs  # the head simulated devices build without a model
from devices.wire.protocol import ConfigKey, weight_names
from federation.coordinator import RunConfig
from federation.exceptions import FederationError
from federation.grid import DeviceFilter, FleetGrid
from federation.mqtt_transport import MqttTransport
from federation.wire import ProtocolCodec
from firmware_models.usecases import get_use_case
from firmware_models.usecases.base import ARTIFACT_HEAD


def initial_parameters(task: str, *, models_dir: Path | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """The global head a run starts from: ``head.npz`` of a built model, else a seeded fresh MLP.

    Without a model folder only a backbone-free use case (sine) can start, with the same
    1-32-32-1 layout the simulated devices use.
    """
    uc = get_use_case(task)
    if models_dir is not None:
        d = Path(models_dir)
        if (d / task).is_dir():
            d = d / task
        head = MLPHead.from_npz(d / ARTIFACT_HEAD, kind=uc.kind)
    else:
        probe = uc.devices("train", 1, samples_per_device=2, seed=seed)[0]
        n_out = int(probe.y.shape[1]) if probe.y.ndim > 1 else 1
        if uc.kind == "classification":
            raise FederationError(f"use case {task!r} needs --models DIR (the output of `tinyfleet models build`)")
        head = MLPHead.init([math.prod(uc.input_shape), *DEFAULT_HIDDEN, n_out], kind=uc.kind, seed=seed)
    ws = head.get_weights()
    return dict(zip(weight_names(len(ws)), (np.asarray(w, np.float32) for w in ws), strict=True))


@contextlib.contextmanager
def fleet_grid(config: RunConfig, run_dir: Path, *, models_dir: Path | None = None,
               allow: Collection[str] | DeviceFilter | None = None, credentials: Credentials | None = None,
               broker_dir: Path | None = None, secure: bool = True,
               faults: FaultKnobs | None = None) -> Iterator[FleetGrid]:
    """Yield a `FleetGrid` for `config`, starting a private broker and simulated devices if asked.

    Parameters
    ----------
    credentials : Credentials, optional
        The coordinator's server account on ``config.broker`` (``--credentials FILE``).
    broker_dir : Path, optional
        Directory of the tinyfleet-managed broker at ``config.broker``: simulated devices are
        enrolled there when it is secured.
    secure : bool, default=True
        Secure the private broker this function starts (False only for debugging).
    faults : FaultKnobs, optional
        Fault knobs of the simulated devices (e.g. intermittent devices for asynchronous rounds).
    """
    with contextlib.ExitStack() as stack:
        url = config.broker
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
        address = parse_broker_url(url)
        if config.simulate:
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
                raise FederationError(f"only {connected} of {config.simulate} simulated devices connected to {url}")
        transport = MqttTransport(address, fleet=config.fleet, credentials=credentials)
        grid = FleetGrid(transport, ProtocolCodec({ConfigKey.LOCAL_STEPS: config.local_steps, ConfigKey.LR: config.lr}),
                         run_id=config.run_id, allow=allow)
        stack.callback(transport.close)
        yield grid

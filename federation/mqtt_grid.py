"""`MqttGrid`: the public Flower `Grid` for a tinyfleet fleet on an MQTT broker.

A Flower user drives microcontroller-class devices with any stock strategy by building this Grid
and calling ``strategy.start(grid=grid, ...)``; nothing else from tinyfleet is needed. The Grid:

* connects once to the broker (MQTT v5, QoS 1) with a server account and follows the devices'
  retained presence (and, with `use_case`, their Thing Descriptions);
* sets Flower's process-wide task identity itself (Flower 1.41 has no public way; see
  `federation.flower_compat`), so `Message(...)` inside a strategy works at once;
* encodes every Flower `Message` as a tinyfleet task frame and every device result back into a
  Flower reply, checking it first (docs/flower.md has the mapping);
* offers `wait_for_nodes`, the deadline-bounded quorum wait Flower's sampler lacks;
* closes its connection when used as a context manager.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection
from pathlib import Path

from devices.link.address import BrokerAddress, Credentials, parse_broker_url
from devices.wire.protocol import ConfigKey
from federation.flower_compat import init_task_identity
from federation.grid import FleetGrid
from federation.mqtt_transport import MqttTransport
from federation.wire import ProtocolCodec

DEFAULT_LOCAL_STEPS = 20
"""Local SGD steps when the strategy's config does not set ``local-steps`` (stock Flower strategies do not)."""
DEFAULT_LR = 0.02
"""Device learning rate when the strategy's config does not set ``lr``."""


class MqttGrid(FleetGrid):
    """A Flower `Grid` whose nodes are the devices of one tinyfleet fleet on an MQTT broker.

    Parameters
    ----------
    broker : str or BrokerAddress
        ``mqtt://host:port`` or ``mqtts://host:port`` (TLS; give the CA in `credentials`).
    fleet : str, default="default"
        The fleet (topic level ``tinyfleet/v1/<fleet>/...``).
    credentials : Credentials, str or Path, optional
        The server account: a `Credentials`, or the path of a JSON file with ``username``,
        ``password`` and optionally ``ca``, ``cert``, ``key`` (what ``tinyfleet broker start``
        writes to ``<dir>/security/credentials/fleet-server.json``). None for an open broker.
    broker_dir : str or Path, optional
        Directory of a broker managed by ``tinyfleet broker start --dir``. Without `credentials`
        the Grid enrols a server account of its own there, ``fleet-server-<pid>``, because two
        processes sharing one account disconnect each other.
    use_case : str, optional
        Only devices whose Thing Description names this use case (e.g. ``"sine"``) become nodes.
    allow : collection of str or callable, optional
        Only these device ids (or those for which the predicate is true) become nodes.
    local_steps : int, default=20
        ``local-steps`` of every train task whose config does not set it.
    lr : float, default=0.02
        ``lr`` of every train task whose config does not set it.
    run_id : str, optional
        Written into every task; replies naming another run are rejected. Default: a fresh id.
    connect_timeout : float, default=10.0
        Seconds to wait for the broker's CONNACK and SUBACK.

    Raises
    ------
    FederationError
        The broker cannot be reached or refuses the account (one line saying which).

    Examples
    --------
    A complete server is in docs/flower.md (executed by tests/federation/test_flower_doc.py)::

        with MqttGrid("mqtt://127.0.0.1:1883", fleet="lab", credentials="fleet-server.json") as grid:
            grid.wait_for_nodes(4, timeout=60)
            result = FedMedian().start(grid=grid, initial_arrays=arrays, num_rounds=3, timeout=30)
    """

    def __init__(self, broker: str | BrokerAddress, *, fleet: str = "default",
                 credentials: Credentials | str | Path | None = None, broker_dir: str | Path | None = None,
                 use_case: str | None = None, allow: Collection[str] | Callable[[str], bool] | None = None,
                 local_steps: int = DEFAULT_LOCAL_STEPS, lr: float = DEFAULT_LR, run_id: str | None = None,
                 connect_timeout: float = 10.0) -> None:
        address = parse_broker_url(broker) if isinstance(broker, str) else broker
        creds = _resolve_credentials(credentials, broker_dir)
        self.use_case = use_case
        transport = MqttTransport(address, fleet=fleet, credentials=creds, connect_timeout=connect_timeout,
                                  descriptions=use_case is not None)
        codec = ProtocolCodec({ConfigKey.LOCAL_STEPS: local_steps, ConfigKey.LR: lr})
        super().__init__(transport, codec, run_id=run_id or f"flower-{uuid.uuid4().hex[:12]}",
                         allow=_node_filter(transport, use_case, allow))
        init_task_identity(self.run.run_id)

    def __enter__(self) -> MqttGrid:
        return self


def _resolve_credentials(credentials: Credentials | str | Path | None,
                         broker_dir: str | Path | None) -> Credentials | None:
    from broker.accounts import load_credentials, process_server_account
    from broker.files import is_secured

    if isinstance(credentials, Credentials):
        return credentials
    if credentials is not None:
        return load_credentials(credentials)
    if broker_dir is not None and is_secured(broker_dir):
        return process_server_account(broker_dir)
    return None


def _node_filter(transport: MqttTransport, use_case: str | None,
                 allow: Collection[str] | Callable[[str], bool] | None) -> Callable[[str], bool] | None:
    """One predicate from the allow-list and the use case (None when neither restricts anything)."""
    if allow is not None and not callable(allow):
        allowed = frozenset(allow)
        allow = allowed.__contains__
    if use_case is None:
        return allow
    if allow is None:
        return lambda device_id: transport.use_case(device_id) == use_case
    return lambda device_id: allow(device_id) and transport.use_case(device_id) == use_case

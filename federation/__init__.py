"""Federated learning over MQTT with Flower strategies.

The public door for Flower users is `MqttGrid` (docs/flower.md): a Flower `Grid` whose nodes are
the devices of a tinyfleet fleet, usable as-is with any ``Strategy.start(grid=...)``.
"""

from federation.mqtt_grid import MqttGrid

__all__ = ["MqttGrid"]

"""The device side of tinyfleet: what runs on a device, a gateway or a simulated fleet.

Subpackages: `wire` (protocol, topics, sparse updates, Thing Description), `learning` (head,
learner, fit check, drift), `link` (broker address, the one MQTT client factory, the hub, the fleet
client); the runtime is `agent`, `deploy`, `simulator` and `boards`.

This package must import and run with only numpy, paho-mqtt and a TFLite interpreter installed
(no TensorFlow, no Flower, no `cryptography`): it is what runs on a gateway or a Raspberry Pi.
"""

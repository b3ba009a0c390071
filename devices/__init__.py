"""The device side of tinyfleet: wire protocol, online learner, MQTT agent, fleet simulator.

This package must import and run with only numpy, paho-mqtt and a TFLite interpreter installed
(no TensorFlow, no Flower): it is what runs on a gateway or a Raspberry Pi.
"""

"""Server-side broker operations: the private Mosquitto process, accounts, ACLs and the TLS PKI.

Why a package of its own, between `devices` and `federation`/`tinyfleet`: these are operations a
fleet's server performs (start a broker, enrol a device, issue a certificate), never something a
device or a gateway runs; keeping them out of `devices` lets that package run with numpy, paho-mqtt
and a TFLite interpreter only (no `cryptography`).
"""

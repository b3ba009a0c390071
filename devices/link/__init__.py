"""MQTT links: the broker address, the one paho client factory, the device hub and the fleet client."""

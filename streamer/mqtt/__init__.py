"""MQTT in one place: the wire codec (no I/O) and the broker connection of the service."""

"""The local Azure IoT Hub stand-in: PKI, registry, MQTT device endpoint (amqtt), HTTPS service API."""


class HubError(Exception):
    """A run-time failure of the local hub (port busy, already running, not running): one line, no secrets."""

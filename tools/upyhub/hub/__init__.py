"""The local Azure IoT Hub stand-in: PKI, registry, MQTT device endpoint (amqtt), HTTPS service API."""
from upyhub.errors import UsageError


class HubError(UsageError):
    """A run-time failure of the local hub (port busy, already running, not running, no such device): one
    line, no secrets. A UsageError, so every CLI shows it as one line; `upyhub hub` exits 1 for it (not 2)."""

"""The local Azure IoT Hub stand-in: PKI, registry, MQTT device endpoint (amqtt), HTTPS service API."""

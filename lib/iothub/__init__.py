# iothub: Azure IoT Hub for MicroPython boards. One small module per concern:
# crypto (HMAC-SHA256, base64), sas (tokens, DPS key derivation), clock (epoch, unset clock).

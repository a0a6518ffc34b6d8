# iothub: Azure IoT Hub for MicroPython boards. One small module per concern:
#   crypto (HMAC-SHA256, base64)  sas (tokens, DPS keys)  quote (URL-encoding)  clock (epoch, unset clock)
#   topics (username, topics, property bags)  config (flash configuration)  backoff
#   transport (TLS + umqtt)  session (the connection)  station (Wi-Fi/NTP for boards)
#   certstore, x509, rootupdate (pinned roots and their over-the-air replacement)

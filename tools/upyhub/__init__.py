"""upyhub host tools: tokens, a local IoT Hub, provisioning, certificates, audits."""
__version__ = "0.1.0"

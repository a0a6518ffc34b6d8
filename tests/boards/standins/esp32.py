# Stand-in for the ESP32 port's `esp32` module: the MCU's temperature sensor.
# ESP32-S2/S3/C3/C6 have mcu_temperature() (Celsius); the original ESP32 only
# raw_temperature() (Fahrenheit): tests `del` mcu_temperature to model it.
MCU_C = 40.0
RAW_F = 104.0


def mcu_temperature():
    return MCU_C


def raw_temperature():
    return RAW_F

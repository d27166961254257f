"""ESP-DL (Espressif's int8 runtime for ESP32-S3 and ESP32-P4): `.espdl` export of tfqat's int8 models."""

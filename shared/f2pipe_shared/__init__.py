"""The one library every f2pipe service imports.

Settings, the MQTT topic grammar, payload models, frame decoding and the records passed
between services are each defined here once.
"""

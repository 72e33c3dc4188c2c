"""MSGin5G UE client library: one implementation of the MSGin5G-1 contract over CoAP and MQTT,
shared by the tests, the benchmark and users."""

from msgin5g_client.coap import CoapUe, write_oscore_context
from msgin5g_client.common import RequestFailed
from msgin5g_client.mqtt import MqttUe

__all__ = ["CoapUe", "MqttUe", "RequestFailed", "write_oscore_context"]

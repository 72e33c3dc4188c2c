"""``msgin5g-mqtt-edge``: runs the MQTT edge until SIGINT/SIGTERM."""

from __future__ import annotations

from functools import partial

from msgin5g_common import service
from msgin5g_mqtt_edge.app import serve
from msgin5g_mqtt_edge.settings import MqttEdgeSettings


def main() -> None:
    settings = MqttEdgeSettings()
    service.run("mqtt-edge", settings.log_level, partial(serve, settings))


if __name__ == "__main__":
    main()

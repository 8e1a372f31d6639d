"""A minimal idempotent service for runner tests: raw consent in, pseudo consent out (same ids).

Run as `python -m tests.integration.echo_service` with GDX_* settings in the environment.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from gdx.common.errors import PermanentError, TransientError
from gdx.common.metrics import Metrics
from gdx.common.runner import Event, Output, Runner
from gdx.common.service import ServiceSettings

IN, OUT = "gdx.raw.consent.v1", "gdx.pseudo.consent.v1"


class EchoSettings(ServiceSettings):
    prefix = "GDX_ECHO_"


class EchoHandler:
    def __init__(self, transient_failures: int = 0):
        self.transient_failures = transient_failures
        self.calls = 0

    def handle(self, event: Event) -> Iterable[Output]:
        self.calls += 1
        v = event.value
        if v["participant"] == "poison":
            raise PermanentError("participant field says poison", reason_code="invalid-input")
        if self.transient_failures > 0:
            self.transient_failures -= 1
            raise TransientError("simulated broker hiccup")
        out = {k: v[k] for k in ("center", "dataset", "participant", "consent_id", "status", "duo", "consent_time",
                                 "source")}
        out["key_version"] = "test"
        yield Output(OUT, f"{v['dataset']}/{v['participant']}", "org.gdx.PseudoConsentRecord", out, v["consent_id"])


def make_runner(settings: ServiceSettings, handler: EchoHandler | None = None) -> Runner:
    return Runner("echo", settings, handler or EchoHandler(), [IN], [OUT], metrics=Metrics("echo"))


if __name__ == "__main__":
    settings = EchoSettings.from_env()
    sys.exit(make_runner(settings).run(max_idle_s=float(sys.argv[1]) if len(sys.argv) > 1 else None))

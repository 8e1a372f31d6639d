"""anonymize wiring: raw topics in (consumer group gdx.anonymize), pseudonymized topics out."""

from __future__ import annotations

from collections.abc import Iterable

from gdx.anonymize.handler import AnonymizeContext, Anonymizer
from gdx.anonymize.settings import AnonymizeSettings, load_keyring
from gdx.common.envelope import stable_id
from gdx.common.logs import setup_logging
from gdx.common.metrics import Metrics
from gdx.common.runner import Event, Output, Runner

SERVICE = "anonymize"
RAW_VARIANTS, RAW_CLINICAL, RAW_CONSENT = "gdx.raw.variants.v1", "gdx.raw.clinical.v1", "gdx.raw.consent.v1"
PSEUDO_VARIANTS, PSEUDO_CLINICAL, PSEUDO_CONSENT = ("gdx.pseudo.variants.v1", "gdx.pseudo.clinical.v1",
                                                    "gdx.pseudo.consent.v1")
ROUTES = {RAW_VARIANTS: PSEUDO_VARIANTS, RAW_CLINICAL: PSEUDO_CLINICAL, RAW_CONSENT: PSEUDO_CONSENT}


# One settings class; the old name stays for code that imports it from here.
AnonymizeServiceSettings = AnonymizeSettings


class AnonymizeHandler:
    """Keys: file id for variants and manifests (file order kept), dataset/pseudonym for the rest."""

    # variant batches arrive by column: their rows pass through (IDs reduced to rsIDs) without a dict
    # per record being built and taken apart again
    columnar = True

    def __init__(self, anonymizer: Anonymizer):
        self.anonymizer = anonymizer

    def handle(self, event: Event) -> Iterable[Output]:
        schema, value = self.anonymizer.handle(event.schema, event.value)
        topic = ROUTES[event.topic]
        if topic == PSEUDO_VARIANTS:
            key = value["file_id"]
        else:
            key = f"{value['dataset']}/{value['participant']}"
        # deterministic: replaying the raw topic gives the same ids (and, with the same key, the same bytes)
        event_id = stable_id(SERVICE, event.envelope.event_id or f"{event.topic}/{event.partition}/{event.offset}",
                             self.anonymizer.key_version)
        return [Output(topic, key, schema, value, event_id)]


def build(settings: AnonymizeSettings, metrics: Metrics | None = None) -> Runner:
    metrics = metrics or Metrics(SERVICE)
    keyring = load_keyring(settings)
    anonymizer = Anonymizer(AnonymizeContext.from_settings(settings, keyring))
    metrics.key_version.labels(SERVICE, anonymizer.key_version).set(1)
    return Runner(SERVICE, settings, AnonymizeHandler(anonymizer), list(ROUTES), list(ROUTES.values()),
                  metrics=metrics)


def main() -> int:
    settings = AnonymizeSettings.from_env()
    setup_logging(SERVICE, settings.log_level)
    return build(settings).run()

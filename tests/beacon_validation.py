"""Offline validation of Beacon v2 responses against the official JSON schemas in the shared data
(framework responses, then every record against its default-model entry schema).

    validator = BeaconValidator(shared_data)
    validator.assert_valid("/g_variants", document)     # picks the schema from endpoint and granularity
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource
from referencing.jsonschema import DRAFT7, DRAFT202012

BEACON_PREFIX = "https://raw.githubusercontent.com/ga4gh-beacon/beacon-v2/main/"
VRS_URL = "https://w3id.org/ga4gh/schema/vrs/1.3/vrs.json"
FRAMEWORK = BEACON_PREFIX + "framework/json/"
MODEL = BEACON_PREFIX + "models/json/beacon-v2-default-model/"

# Framework response schema per kind of answer.
RESPONSES = {
    "info": "responses/beaconInfoResponse.json",
    "service-info": "responses/ga4gh-service-info-1-0-0-schema.json",
    "configuration": "responses/beaconConfigurationResponse.json",
    "map": "responses/beaconMapResponse.json",
    "entry_types": "responses/beaconEntryTypesResponse.json",
    "filtering_terms": "responses/beaconFilteringTermsResponse.json",
    "collections": "responses/beaconCollectionsResponse.json",
    "boolean": "responses/beaconBooleanResponse.json",
    "count": "responses/beaconCountResponse.json",
    "record": "responses/beaconResultsetsResponse.json",
    "error": "responses/beaconErrorResponse.json",
    "resultsets": "responses/sections/beaconResultsets.json",
}
# Default-model schema of the records each endpoint returns.
ENTRIES = {
    "g_variants": "genomicVariations/defaultSchema.json",
    "individuals": "individuals/defaultSchema.json",
    "datasets": "datasets/defaultSchema.json",
}
# Files the shared copy of the schemas lacks, with the local file that has the same content upstream
# (both are the "Info" placeholder: {"type": "object"}).
_STAND_INS = {"models/json/beacon-v2-default-model/common/info.json": "framework/json/common/info.json"}
_INFORMATIONAL = {"": "info", "info": "info", "service-info": "service-info", "configuration": "configuration",
                  "map": "map", "entry_types": "entry_types", "filtering_terms": "filtering_terms"}


class BeaconValidator:
    """Validates documents against the Beacon v2 schemas read from `<shared_data>/beacon` (no network)."""

    def __init__(self, shared_data: str | Path):
        root = Path(shared_data) / "beacon"
        self.beacon_root = root / "ga4gh-beacon+beacon-v2"
        self.vrs_path = root / "EGA-archive+beacon2-ri-tools-v2" / "ref_schemas" / "vrs.json"
        if not (self.beacon_root / "framework").is_dir() or not self.vrs_path.is_file():
            raise FileNotFoundError(f"Beacon v2 schemas not found under {root}")
        self._registry: Registry = Registry(retrieve=self._retrieve)  # type: ignore[call-arg]  # attrs class

    def _retrieve(self, uri: str) -> Resource:
        uri = uri.split("#", 1)[0]
        if uri == VRS_URL:
            return Resource.from_contents(json.loads(self.vrs_path.read_text()), default_specification=DRAFT7)
        if uri.startswith(BEACON_PREFIX):
            relative = uri[len(BEACON_PREFIX):]
            path = self.beacon_root / relative
            if not path.is_file() and relative in _STAND_INS:
                path = self.beacon_root / _STAND_INS[relative]
            if path.is_file():
                return Resource.from_contents(json.loads(path.read_text()), default_specification=DRAFT202012)
        raise NoSuchResource(ref=uri)  # type: ignore[call-arg]  # attrs class

    def _validator(self, url: str) -> Draft202012Validator:
        # A $ref wrapper gives the schema its URL as base, so its relative $refs resolve locally.
        return self._cache.setdefault(url, Draft202012Validator(
            {"$ref": url}, registry=self._registry, format_checker=Draft202012Validator.FORMAT_CHECKER))

    @cached_property
    def _cache(self) -> dict[str, Draft202012Validator]:
        return {}

    def errors_against(self, url: str, document: Any) -> list[str]:
        """Every violation of the schema at `url` (a full schema URL), as 'path: message'."""
        found = sorted(self._validator(url).iter_errors(document), key=lambda e: list(e.absolute_path))
        return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in found]

    def response_errors(self, kind: str, document: Any) -> list[str]:
        """Violations of the framework response schema of `kind` (info, count, record, error, ...)."""
        return self.errors_against(FRAMEWORK + RESPONSES[kind], document)

    def entry_errors(self, endpoint: str, record: Any) -> list[str]:
        """Violations of the default-model schema of a record from `endpoint` (g_variants, ...)."""
        return self.errors_against(MODEL + ENTRIES[endpoint], record)

    def endpoint_errors(self, endpoint: str, document: Mapping[str, Any]) -> list[str]:
        """Check an answer of `endpoint` ("/g_variants", "individuals", "/", ...) with the schemas that
        apply: error documents as errors, queries by their returnedGranularity, result sets and
        each record too."""
        segments = [s for s in endpoint.split("?", 1)[0].split("/") if s]
        # "/api/g_variants", "g_variants" and "/api" (the root, under any base path) all name endpoints.
        name = segments[-1] if segments and (segments[-1] in _INFORMATIONAL or segments[-1] in ENTRIES) else ""
        if isinstance(document, Mapping) and "error" in document:
            return self.response_errors("error", document)
        if name in _INFORMATIONAL and name:
            return self.response_errors(_INFORMATIONAL[name], document)
        if name == "datasets":
            problems = self.response_errors("collections", document)
            for i, entry in enumerate(document.get("response", {}).get("collections", [])):
                problems += [f"collections/{i}/{p}" for p in self.entry_errors("datasets", entry)]
            return problems
        if name not in ENTRIES:
            if len(segments) > 1:
                raise ValueError(f"no schema known for endpoint {endpoint!r}")
            return self.response_errors("info", document)
        granularity = document.get("meta", {}).get("returnedGranularity")
        if granularity not in ("boolean", "count", "record"):
            return [f"meta/returnedGranularity: {granularity!r} is not boolean, count or record"]
        problems = self.response_errors(granularity, document)
        response = document.get("response")
        if response is not None:
            # Count answers may carry result sets too; the count schema does not describe them.
            problems += [f"response/{p}" for p in self.response_errors("resultsets", response)]
            for i, result_set in enumerate(response.get("resultSets", []) if isinstance(response, Mapping) else []):
                for j, record in enumerate(result_set.get("results", [])):
                    problems += [f"response/resultSets/{i}/results/{j}/{p}"
                                 for p in self.entry_errors(name, record)]
        return problems

    def assert_valid(self, endpoint: str, document: Mapping[str, Any]) -> None:
        problems = self.endpoint_errors(endpoint, document)
        if problems:
            raise AssertionError(f"{endpoint} answer violates the Beacon v2 schemas:\n  " + "\n  ".join(problems))

"""Beacon API behaviour as a user sees it: what each caller may learn, from which datasets, at which
granularity, and what every refusal looks like. The index is an in-memory fake."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric import ec
from gdx.common.avro import SchemaCatalog
from gdx.common.errors import ConfigurationError
from gdx.common.metrics import Metrics
from gdx.common.settings import REPO_ROOT
from gdx.publish.api import SERVER_ARGS, app_from_settings, make_app, start_api
from gdx.publish.auth import Authenticator, DevIssuer, StaticJwks, TrustedIssuer, dev_token
from gdx.publish.beacon import IndexUnavailable
from gdx.publish.config import load_config, parse_config
from gdx.publish.privacy import CountPolicy, Privacy, QueryBudget
from gdx.publish.settings import PublishSettings

GENO_HET = {"id": "GENO:0000135", "label": "heterozygous"}
GENO_HOM = {"id": "GENO:0000136", "label": "homozygous"}


@dataclass
class Person:
    id: str
    dataset: str
    consent: tuple[str, ...]
    sex: str = "FEMALE"
    features: tuple[str, ...] = ()
    disease: str | None = None
    alt_copies: dict[str, int] = field(default_factory=dict)  # variant key -> 0, 1 or 2


@dataclass
class Variant:
    key: str
    chrom: str
    start: int
    ref: str
    alt: str
    assembly: str = "GRCh38"

    @property
    def end(self) -> int:
        return self.start + len(self.ref)


class FakeIndex:
    """In-memory IndexClient: statistics over admitted participants only, as the protocol says."""

    def __init__(self, people: list[Person], variants: list[Variant]):
        self.people, self.variants = people, variants
        self.unavailable = False
        self.calls: list[tuple[str, list[str], str | None]] = []

    def _check(self) -> None:
        if self.unavailable:
            raise IndexUnavailable("index down")

    def _matches(self, v: Variant, q: dict[str, Any]) -> bool:
        if "referenceName" in q and q["referenceName"].removeprefix("chr") != v.chrom.removeprefix("chr"):
            return False
        starts, ends = q.get("start", []), q.get("end", [])
        if len(starts) == 1 and not ends:
            return v.start == starts[0] and v.alt == q.get("alternateBases") and v.ref == q.get("referenceBases", v.ref)
        if len(starts) == 1:
            return v.start < ends[0] and v.end > starts[0] and q.get("alternateBases", v.alt) == v.alt
        if len(starts) == 2:
            return starts[0] <= v.start <= starts[1] and ends[0] <= v.end <= ends[1]
        return True

    async def query_variants(self, query, datasets, participant_filter, granularity, skip, limit):
        self._check()
        self.calls.append(("variants", list(datasets), granularity))
        admitted = [p for p in self.people if p.dataset in datasets and participant_filter(p.dataset, p.consent)]
        hits = []
        for v in self.variants:
            if not self._matches(v, query):
                continue
            stats, calls = {}, []
            for ds in datasets:
                group = [p for p in admitted if p.dataset == ds]
                copies = [p.alt_copies.get(v.key, 0) for p in group]
                stats[ds] = {"alleleCount": sum(copies), "alleleNumber": 2 * len(group),
                             "alleleFrequency": sum(copies) / (2 * len(group)) if group else 0.0,
                             "homozygous": copies.count(2), "heterozygous": copies.count(1),
                             "carriers": sum(1 for c in copies if c)}
                calls += [{"dataset": ds, "individualId": p.id, "zygosity": GENO_HOM if c == 2 else GENO_HET}
                          for p, c in zip(group, copies, strict=True) if c]
            if calls:
                hit = {"assemblyId": v.assembly, "referenceName": v.chrom, "start": v.start, "end": v.end,
                       "referenceBases": v.ref, "alternateBases": v.alt, "datasets": stats}
                if granularity == "record":
                    hit["calls"] = calls
                hits.append(hit)
        return {"total": len(hits), "hits": hits[skip: skip + limit] if limit else []}

    async def query_individuals(self, filters, datasets, participant_filter, skip, limit):
        self._check()
        self.calls.append(("individuals", list(datasets), None))
        wanted = {f["id"] for f in filters}
        found = []
        for p in self.people:
            terms = set(p.features) | {p.disease} | {"NCIT:C16576" if p.sex == "FEMALE" else "NCIT:C20197"}
            if p.dataset in datasets and participant_filter(p.dataset, p.consent) and wanted <= terms:
                sex = p.sex if p.sex == "FEMALE" else "NCIT:C20197"  # both forms an index may give
                found.append({"id": p.id, "dataset": p.dataset, "sex": sex,
                              "phenotypicFeatures": [{"type": {"id": f, "label": f}} for f in p.features],
                              "diseases": [{"term": {"id": p.disease, "label": "disease"}}] if p.disease else []})
        return {"total": len(found), "hits": found[skip: skip + limit] if limit else []}

    async def filtering_terms(self):
        self._check()
        terms = sorted({f for p in self.people for f in p.features})
        return [{"type": "ontology", "id": t, "scopes": ["individual"]} for t in terms]

    async def datasets_seen(self):
        self._check()
        return sorted({p.dataset for p in self.people})


V1 = Variant("v1", "chr1", 100, "A", "G")    # carriers P1 (HMB), P3 (DS), P5 (POA)
V2 = Variant("v2", "chr1", 200, "C", "T")    # carrier P2 (GRU) only
V3 = Variant("v3", "chr2", 300, "G", "A")    # carrier P5 (POA) only
VC = Variant("vc", "chr3", 400, "T", "C")    # only in the CONTROLLED dataset
VR = Variant("vr", "chr4", 500, "T", "G")    # only in the REGISTERED dataset


def people() -> list[Person]:
    return [
        Person("P1", "demo-dataset", ("HMB",), "FEMALE", ("HP:0001250",), "MONDO:0005027", {"v1": 1}),
        Person("P2", "demo-dataset", ("GRU",), "MALE", ("HP:0001250", "HP:0002315"), None, {"v2": 1}),
        Person("P3", "demo-dataset", ("DS:MONDO:0005148",), "FEMALE", ("HP:0005978",), "MONDO:0005148", {"v1": 2}),
        Person("P4", "demo-dataset", ("HMB", "NPU"), "MALE", ("HP:0001250",)),
        Person("P5", "demo-dataset", ("POA",), "FEMALE", (), None, {"v1": 1, "v3": 1}),
        Person("C1", "ctrl", ("GRU",), "FEMALE", ("HP:0001250",), None, {"vc": 1}),
        Person("R1", "reg", ("GRU",), "MALE", ("HP:0001250",), None, {"vr": 1}),
    ]


CONFIG = {
    "beacon": {"id": "org.gdx.test", "name": "test beacon", "organization": {"id": "org.gdx", "name": "gdx",
                                                                              "welcomeUrl": "https://gdx.example.org/"}},
    "datasets": [
        {"id": "demo-dataset", "name": "demo", "securityLevel": "PUBLIC", "assembly": "GRCh38",
         "dataUseConditions": {"duoDataUse": [{"id": "DUO:0000042", "version": "2021-02-23"}]}},
        {"id": "reg", "name": "registered", "securityLevel": "REGISTERED", "assembly": "GRCh38"},
    ],
}


class OtherIssuer:
    """A second trusted issuer, for tokens the dev issuer would not make (expired, odd claims)."""

    name = "https://aai.example.org/"

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        self.trusted = TrustedIssuer(self.name, StaticJwks({"keys": [{**jwk, "kid": "k1", "alg": "ES256"}]}))

    def sign(self, claims: dict[str, Any], key: Any = None, alg: str = "ES256") -> str:
        now = int(time.time())
        body = {"iss": self.name, "sub": "alice", "iat": now, "exp": now + 600, **claims}
        return jwt.encode(body, key or self.key, algorithm=alg, headers={"kid": "k1"})

    def visa(self, dataset: str, purpose: str = "HMB", **claims: Any) -> str:
        now = int(time.time())
        return self.sign({"ga4gh_visa_v1": {"type": "ControlledAccessGrants", "asserted": now, "value": dataset,
                                            "source": "https://dac.example.org", "by": "dac"},
                          "gdx_purpose": {"code": purpose, "not_for_profit": False}, **claims})


@dataclass
class Beacon:
    index: FakeIndex
    issuer: DevIssuer
    other: OtherIssuer
    audit: list[dict[str, Any]]
    app_args: dict[str, Any]

    def app(self):
        return make_app(self.index, parse_config(CONFIG), self.app_args["auth"], self.app_args["privacy"],
                        self.app_args.get("sink", self.audit.append), **self.app_args.get("extra", {}))

    def token(self, dataset: str = "demo-dataset", purpose: str = "HMB", not_for_profit: bool = False) -> str:
        return self.issuer.issue_visa(dataset, purpose, not_for_profit)

    def ask(self, path: str, method: str = "GET", token: str | None = None, **kwargs: Any):
        return self.ask_many([(path, method, token, kwargs)])[0]

    def ask_many(self, calls: list[tuple[str, str, str | None, dict[str, Any]]]):
        async def go():
            results = []
            server = TestServer(self.app())
            await server.start_server(**SERVER_ARGS)  # as start_api serves it: large headers allowed
            async with TestClient(server) as client:
                for path, method, token, kwargs in calls:
                    headers = {"Authorization": f"Bearer {token}"} if token else {}
                    response = await client.request(method, path, headers=headers, **kwargs)
                    results.append((response.status, await response.json(), dict(response.headers)))
            return results
        return asyncio.run(go())


def make_beacon(tmp_path: Path, *, min_cell_size: int = 0, rounding: int = 0, budget: int = 0,
                sink: Any = None) -> Beacon:
    issuer = DevIssuer(tmp_path / "dev-issuer")
    issuer.ensure_key()
    other = OtherIssuer()
    auth = Authenticator([issuer.trusted(), other.trusted])
    privacy = Privacy(CountPolicy(min_cell_size, rounding), QueryBudget(budget, 60))
    audit: list[dict[str, Any]] = []
    args: dict[str, Any] = {"auth": auth, "privacy": privacy}
    if sink is not None:
        args["sink"] = sink
    return Beacon(FakeIndex(people(), [V1, V2, V3, VC, VR]), issuer, other, audit, args)


@pytest.fixture
def beacon(tmp_path: Path) -> Beacon:
    return make_beacon(tmp_path)


def variant_query(v: Variant, granularity: str, **extra: str) -> str:
    params = {"referenceName": v.chrom, "start": str(v.start), "referenceBases": v.ref,
              "alternateBases": v.alt, "requestedGranularity": granularity, **extra}
    return "/api/g_variants?" + "&".join(f"{k}={val}" for k, val in params.items())


def all_ids(doc: dict[str, Any]) -> set[str]:
    found: set[str] = set()
    for result_set in doc.get("response", {}).get("resultSets", []):
        for record in result_set["results"]:
            found |= {c["individualId"] for c in record.get("caseLevelData", [])}
            if "id" in record:
                found.add(record["id"])
    return found


# --- without a token ------------------------------------------------------------------------------

def test_anonymous_boolean_and_count_answer_over_public_released_data(beacon: Beacon) -> None:
    status, doc, _ = beacon.ask(variant_query(V1, "boolean"))
    assert status == 200 and doc["responseSummary"] == {"exists": True}
    assert doc["meta"]["returnedGranularity"] == "boolean" and "response" not in doc
    status, doc, _ = beacon.ask("/api/g_variants?referenceName=chr1&start=0&end=1000&requestedGranularity=count")
    assert doc["responseSummary"]["numTotalResults"] == 2  # V1 and V2; POA and DS carriers count without a visa
    assert doc["response"]["resultSets"][0]["id"] == "demo-dataset"


def test_anonymous_record_request_is_downgraded_to_count_and_says_why(beacon: Beacon) -> None:
    status, doc, _ = beacon.ask(variant_query(V1, "record"))
    assert status == 200
    assert doc["meta"]["returnedGranularity"] == "count"
    assert doc["meta"]["receivedRequestSummary"]["requestedGranularity"] == "record"
    assert any("needs a visa" in note for note in doc["info"]["notes"])
    assert all_ids(doc) == set() and all(rs["results"] == [] for rs in doc["response"]["resultSets"])


def test_controlled_and_registered_data_are_invisible_without_a_token(beacon: Beacon) -> None:
    for variant in (VC, VR):
        status, doc, _ = beacon.ask(variant_query(variant, "count"))
        assert status == 200 and doc["responseSummary"] == {"exists": False, "numTotalResults": 0}
    assert all(call[1] == ["demo-dataset"] for call in beacon.index.calls)
    status, doc, headers = beacon.ask(variant_query(VC, "count", datasets="ctrl"))
    assert status == 401 and doc["error"]["errorCode"] == 401 and "responseSummary" not in doc
    assert "Bearer" in headers["WWW-Authenticate"]


def test_any_trusted_token_opens_registered_datasets_at_count(beacon: Beacon) -> None:
    status, doc, _ = beacon.ask(variant_query(VR, "record"), token=beacon.token("demo-dataset"))
    assert status == 200 and doc["responseSummary"]["exists"] is True
    reg = next(rs for rs in doc["response"]["resultSets"] if rs["id"] == "reg")
    assert reg["results"] == [] and reg["info"]["returnedGranularity"] == "count"


# --- with a visa ----------------------------------------------------------------------------------

def test_visa_gives_records_of_consent_matching_participants_only(beacon: Beacon) -> None:
    status, doc, _ = beacon.ask(variant_query(V1, "record"), token=beacon.token("demo-dataset", "HMB"))
    assert status == 200 and doc["meta"]["returnedGranularity"] == "record"
    # HMB purpose: P1 (HMB) and P2 (GRU) are admitted; P3 (DS only), P4 (NPU), P5 (POA only) are not.
    assert all_ids(doc) == {"P1"}
    record = doc["response"]["resultSets"][0]["results"][0]
    frequency = record["frequencyInPopulations"][0]["frequencies"][0]
    assert frequency == {"population": frequency["population"], "alleleFrequency": 0.25, "alleleCount": 1,
                         "alleleNumber": 4, "alleleCountHomozygous": 0, "alleleCountHeterozygous": 1}
    assert record["caseLevelData"] == [{"biosampleId": "P1", "individualId": "P1", "zygosity": GENO_HET}]
    assert record["variation"]["location"]["sequence_id"] == "refseq:NC_000001.11"


def test_purpose_and_not_for_profit_change_who_is_counted(beacon: Beacon) -> None:
    status, doc, _ = beacon.ask(variant_query(V1, "record"), token=beacon.token("demo-dataset", "DS:MONDO:0005148"))
    record = doc["response"]["resultSets"][0]["results"][0]
    # DS:MONDO:0005148 purpose: HMB (P1), GRU (P2) and the matching DS consent (P3) allow it.
    assert all_ids(doc) == {"P1", "P3"}
    assert {c["individualId"]: c["zygosity"] for c in record["caseLevelData"]} == {"P1": GENO_HET, "P3": GENO_HOM}
    frequency = record["frequencyInPopulations"][0]["frequencies"][0]
    assert (frequency["alleleCount"], frequency["alleleNumber"], frequency["alleleCountHomozygous"]) == (3, 6, 1)
    query = "/api/individuals?filters=HP:0001250&requestedGranularity=count&datasets=demo-dataset"
    counts = [beacon.ask(query, token=beacon.token("demo-dataset", "HMB", not_for_profit=nfp))[1]
              ["responseSummary"]["numTotalResults"] for nfp in (False, True)]
    assert counts == [2, 3]  # P1, P2; and P4 (HMB NPU) once the requester is not-for-profit


def test_variant_no_admitted_participant_carries_is_not_in_the_results(beacon: Beacon) -> None:
    _, doc, _ = beacon.ask(variant_query(V3, "record"), token=beacon.token("demo-dataset", "HMB"))
    assert doc["responseSummary"]["exists"] is False and all_ids(doc) == set()
    _, doc, _ = beacon.ask(variant_query(V3, "record"), token=beacon.token("demo-dataset", "POA"))
    assert all_ids(doc) == {"P5"}


def test_visa_for_one_dataset_grants_nothing_in_another(beacon: Beacon) -> None:
    status, doc, _ = beacon.ask(variant_query(VC, "record", datasets="ctrl"), token=beacon.token("demo-dataset"))
    assert status == 403 and doc["error"]["errorCode"] == 403 and "ctrl" in doc["error"]["errorMessage"]
    status, doc, _ = beacon.ask(variant_query(VC, "record"), token=beacon.token("ctrl", "GRU"))
    assert status == 200 and all_ids(doc) == {"C1"}


def test_a_large_passport_is_read(beacon: Beacon) -> None:
    other = beacon.other
    visas = [other.visa(f"other-{i}") for i in range(60)] + [other.visa("demo-dataset", "HMB")]
    passport = other.sign({"ga4gh_passport_v1": visas})
    assert len(passport) > 20_000  # well past the usual 8 KiB header limit
    status, doc, _ = beacon.ask(variant_query(V1, "record"), token=passport)
    assert status == 200 and all_ids(doc) == {"P1"}


def test_post_body_is_answered_like_get(beacon: Beacon) -> None:
    body = {"meta": {"apiVersion": "v2.0.0"},
            "query": {"requestParameters": {"referenceName": "chr1", "start": [100], "referenceBases": "A",
                                            "alternateBases": "G"},
                      "requestedGranularity": "record", "pagination": {"skip": 0, "limit": 5}}}
    status, doc, _ = beacon.ask("/api/g_variants", "POST", token=beacon.token(), json=body)
    assert status == 200 and all_ids(doc) == {"P1"}
    assert doc["meta"]["receivedRequestSummary"]["pagination"] == {"skip": 0, "limit": 5}
    grouped = {**body, "query": {**body["query"], "requestParameters": {"g_variant": body["query"]["requestParameters"]}}}
    assert beacon.ask("/api/g_variants", "POST", token=beacon.token(), json=grouped)[1]["responseSummary"] == \
        doc["responseSummary"]


def test_individual_records_use_beacon_terms_and_pseudonyms(beacon: Beacon) -> None:
    _, doc, _ = beacon.ask("/api/individuals?filters=HP:0001250&requestedGranularity=record",
                           token=beacon.token("demo-dataset", "HMB"))
    records = doc["response"]["resultSets"][0]["results"]
    assert [r["id"] for r in records] == ["P1", "P2"]
    assert [r["sex"] for r in records] == [{"id": "NCIT:C16576", "label": "female"},
                                           {"id": "NCIT:C20197", "label": "male"}]
    assert records[0]["phenotypicFeatures"] == [{"featureType": {"id": "HP:0001250", "label": "HP:0001250"}}]
    assert records[0]["diseases"] == [{"diseaseCode": {"id": "MONDO:0005027", "label": "disease"}}]


def test_pagination_pages_records_but_counts_all(beacon: Beacon) -> None:
    token = beacon.token("demo-dataset", "HMB")  # admits P1 (carries V1) and P2 (carries V2)
    _, doc, _ = beacon.ask("/api/g_variants?referenceName=chr1&start=0&end=1000&requestedGranularity=record&limit=1",
                           token=token)
    result_set = doc["response"]["resultSets"][0]
    assert result_set["resultsCount"] == 2 and len(result_set["results"]) == 1


def test_include_resultset_responses(beacon: Beacon) -> None:
    token = beacon.token("ctrl", "GRU")
    query = variant_query(VC, "count")
    assert {rs["id"] for rs in beacon.ask(query, token=token)[1]["response"]["resultSets"]} == {"ctrl"}
    assert {rs["id"] for rs in beacon.ask(query + "&includeResultsetResponses=MISS", token=token)[1]
            ["response"]["resultSets"]} == {"demo-dataset", "reg"}  # reg: REGISTERED, any token
    assert len(beacon.ask(query + "&includeResultsetResponses=ALL", token=token)[1]["response"]["resultSets"]) == 3
    assert "response" not in beacon.ask(query + "&includeResultsetResponses=NONE", token=token)[1]


# --- refusals -------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["expired", "bad-signature", "untrusted", "hs256", "none", "garbage", "no-exp"])
def test_unusable_tokens_get_401_with_a_reason_and_no_data(beacon: Beacon, case: str) -> None:
    other = beacon.other
    now = int(time.time())
    tokens = {
        "expired": other.visa("demo-dataset", exp=now - 3600, iat=now - 7200),
        "bad-signature": other.visa("demo-dataset")[:-4] + "AAAA",
        "untrusted": jwt.encode({"iss": "https://evil.example", "sub": "x", "iat": now, "exp": now + 60},
                                other.key, algorithm="ES256"),
        "hs256": jwt.encode({"iss": other.name, "sub": "x", "iat": now, "exp": now + 60}, "k" * 32, algorithm="HS256"),
        "none": jwt.encode({"iss": other.name, "sub": "x", "iat": now, "exp": now + 60}, None, algorithm="none"),
        "garbage": "not.a.jwt",
        "no-exp": jwt.encode({"iss": other.name, "sub": "x", "iat": now}, other.key, algorithm="ES256",
                             headers={"kid": "k1"}),
    }
    status, doc, headers = beacon.ask(variant_query(V1, "boolean"), token=tokens[case])
    assert status == 401 and doc["error"]["errorCode"] == 401 and "responseSummary" not in doc
    assert doc["error"]["errorMessage"]
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert beacon.index.calls == []  # nothing was asked of the index


def test_bad_requests_are_beacon_errors(beacon: Beacon) -> None:
    cases = {
        "/api/g_variants?start=100&alternateBases=G": 400,            # no referenceName
        "/api/g_variants?referenceName=1&start=5&end=5": 400,          # empty range
        "/api/g_variants?referenceName=1&start=5&alternateBases=<DEL>": 400,
        "/api/g_variants?geneId=BRCA1": 400,                           # unsupported here
        "/api/g_variants?referenceName=1&start=1,2&end=3": 400,        # half a bracket
        "/api/g_variants?requestedGranularity=everything": 400,
        "/api/individuals?referenceName=1": 400,
        "/api/nowhere": 404,
    }
    for path, expected in cases.items():
        status, doc, _ = beacon.ask(path)
        assert (status, doc["error"]["errorCode"]) == (expected, expected), path
    status, doc, _ = beacon.ask("/api/g_variants", "POST", data=b"{not json")
    assert status == 400 and "JSON" in doc["error"]["errorMessage"]


def test_index_outage_is_503_without_data(beacon: Beacon) -> None:
    beacon.index.unavailable = True
    status, doc, _ = beacon.ask(variant_query(V1, "count"))
    assert status == 503 and doc["error"]["errorCode"] == 503 and "responseSummary" not in doc
    status, doc, _ = beacon.ask("/api/datasets")  # the list still answers from the configuration
    assert status == 200 and [d["id"] for d in doc["response"]["collections"]] == ["demo-dataset", "reg"]


def test_query_budget_returns_429_once_spent(tmp_path: Path) -> None:
    beacon = make_beacon(tmp_path, budget=2)
    anonymous = [(variant_query(V1, "boolean"), "GET", None, {})] * 3
    results = beacon.ask_many([("/api/info", "GET", None, {})] * 3 + anonymous)
    assert [r[0] for r in results] == [200, 200, 200, 200, 200, 429]  # info endpoints are not charged
    status, doc, headers = results[-1]
    assert doc["error"]["errorCode"] == 429 and int(headers["Retry-After"]) >= 1
    # A token holder is a different client than the address.
    assert beacon.ask(variant_query(V1, "boolean"), token=beacon.token())[0] == 200


# --- privacy of anonymous answers ------------------------------------------------------------------

def test_minimum_cell_size_hides_rare_variants_and_small_groups_without_a_visa(tmp_path: Path) -> None:
    beacon = make_beacon(tmp_path, min_cell_size=2)
    assert beacon.ask(variant_query(V2, "boolean"))[1]["responseSummary"]["exists"] is False  # one carrier
    assert beacon.ask(variant_query(V1, "count"))[1]["responseSummary"]["numTotalResults"] == 1  # three carriers
    _, doc, _ = beacon.ask("/api/individuals?filters=HP:0005978&requestedGranularity=count")
    assert doc["responseSummary"]["numTotalResults"] == 0 and doc["responseSummary"]["countPrecision"] == "imprecise"
    # A visa holder sees exact data of the participants their purpose admits.
    assert beacon.ask(variant_query(V2, "count", datasets="demo-dataset"), token=beacon.token("demo-dataset", "GRU"))[
        1]["responseSummary"] == {"exists": True, "numTotalResults": 1}


def test_a_suppressed_count_looks_exactly_like_a_true_zero(tmp_path: Path) -> None:
    beacon = make_beacon(tmp_path, min_cell_size=2)
    absent = Variant("absent", "chr1", 200, "C", "G")  # same place as V2, an allele nobody carries
    (_, rare, _), (_, none, _) = beacon.ask_many([(variant_query(V2, "count", includeResultsetResponses="ALL"),
                                                   "GET", None, {}),
                                                  (variant_query(absent, "count", includeResultsetResponses="ALL"),
                                                   "GET", None, {})])
    assert rare["responseSummary"] == none["responseSummary"] == {"exists": False, "numTotalResults": 0,
                                                                  "countPrecision": "imprecise"}
    assert rare["response"] == none["response"] and rare["info"] == none["info"]


def test_count_rounding_without_a_visa(tmp_path: Path) -> None:
    beacon = make_beacon(tmp_path, rounding=10)
    _, doc, _ = beacon.ask("/api/individuals?filters=HP:0001250&requestedGranularity=count")
    assert doc["responseSummary"]["numTotalResults"] == 10 and doc["responseSummary"]["countPrecision"] == "rounded"
    assert doc["response"]["resultSets"][0]["resultsCount"] == 10


# --- audit ----------------------------------------------------------------------------------------

def test_every_answer_is_audited_without_personal_data(beacon: Beacon) -> None:
    beacon.ask_many([
        ("/api/info", "GET", None, {}),
        (variant_query(V1, "record"), "GET", beacon.token(), {}),
        (variant_query(V1, "count"), "GET", "garbage", {}),
    ])
    info, granted, denied = beacon.audit
    assert info["decision"] == "granted" and info["actor"] == "anonymous" and info["action"] == "query"
    assert granted["actor"] == "dev-user" and granted["granularity"] == "record" and granted["record_count"] == 1
    assert granted["dataset"] == "demo-dataset,reg" and granted["data_ref"].startswith("/g_variants?")
    assert denied["decision"] == "denied" and denied["rule"] == "auth:malformed" and denied["record_count"] == 0
    catalog = SchemaCatalog.load(REPO_ROOT / "schemas")
    for event in beacon.audit:
        assert event["service"] == "publish" and event["participant"] is None
        assert catalog.decode(catalog.encode("org.gdx.AuditEvent", event)) == ("org.gdx.AuditEvent", event)
        assert "P1" not in str(event) and "127.0.0.1" not in str(event)


def test_no_answer_leaves_when_the_audit_fails(tmp_path: Path) -> None:
    def broken(event: dict[str, Any]) -> None:
        raise OSError("audit topic unreachable")

    beacon = make_beacon(tmp_path, sink=broken)
    status, doc, _ = beacon.ask(variant_query(V1, "record"), token=beacon.token())
    assert status == 500 and "responseSummary" not in doc and all_ids(doc) == set()


# --- informational endpoints ----------------------------------------------------------------------

def test_datasets_lists_configured_and_seen_datasets_with_their_security_level(beacon: Beacon) -> None:
    _, doc, _ = beacon.ask("/api/datasets")
    levels = {d["id"]: d["info"]["securityLevel"] for d in doc["response"]["collections"]}
    assert levels == {"demo-dataset": "PUBLIC", "reg": "REGISTERED", "ctrl": "CONTROLLED"}
    demo = doc["response"]["collections"][0]
    assert demo["dataUseConditions"]["duoDataUse"][0] == {"id": "DUO:0000042", "label": "general research use",
                                                          "version": "2021-02-23"}
    _, conf, _ = beacon.ask("/api/configuration")
    assert {d["id"]: d["securityLevel"] for d in conf["info"]["datasets"]} == levels


def test_service_info_and_map_point_at_this_server(beacon: Beacon) -> None:
    _, info, _ = beacon.ask("/api/service-info")
    assert info["type"] == {"group": "org.ga4gh", "artifact": "beacon", "version": "v2.0.0"}
    _, beacon_map, _ = beacon.ask("/api/map")
    root = beacon_map["response"]["endpointSets"]["genomicVariant"]["rootUrl"]
    assert root.startswith("http://127.0.0.1:") and root.endswith("/api/g_variants")


def test_start_api_serves_large_headers_until_cleanup(beacon: Beacon) -> None:
    async def go() -> int:
        runner = await start_api(beacon.app(), "127.0.0.1", 0)
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as session, session.get(
                    f"http://127.0.0.1:{port}/api/info", headers={"Authorization": "Bearer " + "x" * 30_000}) as r:
                return r.status
        finally:
            await runner.cleanup()

    assert asyncio.run(go()) == 200


def test_app_from_settings_trusts_gdx_token_in_dev_mode_and_counts_requests(tmp_path: Path) -> None:
    settings = PublishSettings.from_env({}, run_dir=tmp_path, dev_mode=True)
    metrics, audit = Metrics("publish"), []
    app = app_from_settings(settings, FakeIndex(people(), [V1]), audit.append, metrics)
    token = dev_token(settings, "demo-dataset", "HMB", False)

    async def go():
        async with TestClient(TestServer(app)) as client:
            response = await client.get(variant_query(V1, "record"), headers={"Authorization": f"Bearer {token}"})
            return response.status, await response.json()

    status, doc = asyncio.run(go())
    assert status == 200 and all_ids(doc) == {"P1"}  # demo-dataset is PUBLIC in the shipped configuration
    assert doc["meta"]["beaconId"] == "org.gdx.beacon" and audit[0]["actor"] == "dev-user"
    assert b'gdx_api_requests_total{endpoint="g_variants",service="publish",status="200"} 1.0' in metrics.expose()


@pytest.mark.parametrize("change, complaint", [
    ({"securityLevel": "SECRET"}, "securityLevel"),
    ({"dataUseConditions": {"duoDataUse": [{"id": "DUO:00000044", "version": "1"}]}}, "not a DUO id"),
    ({"dataUseConditions": {"duoDataUse": [{"id": "DUO:0000019,DUO:00000020", "version": "1"}]}}, "not a DUO id"),
    ({"dataUseConditions": {"duoDataUse": [{"id": "DUO:0000042"}]}}, "version"),
])
def test_a_bad_dataset_configuration_is_refused_naming_the_dataset(change: dict, complaint: str) -> None:
    doc = {**CONFIG, "datasets": [{**CONFIG["datasets"][0], **change}]}
    with pytest.raises(ConfigurationError, match=complaint) as refused:
        parse_config(doc)
    assert "demo-dataset" in str(refused.value)
    with pytest.raises(ConfigurationError, match="twice"):
        parse_config({**CONFIG, "datasets": [CONFIG["datasets"][0]] * 2})


def test_shipped_and_toml_configurations_load(tmp_path: Path) -> None:
    shipped = load_config(PublishSettings.from_env({}).beacon_config)
    assert shipped.dataset("demo-dataset").security_level == "PUBLIC"
    assert shipped.dataset("never-configured").security_level == "CONTROLLED"  # the safe default
    (tmp_path / "beacon.toml").write_text(
        '[beacon]\nid = "org.x"\nname = "x"\norganization = {id = "x", name = "X"}\n'
        '[[datasets]]\nid = "d1"\nsecurityLevel = "registered"\n')
    assert load_config(tmp_path / "beacon.toml").dataset("d1").security_level == "REGISTERED"

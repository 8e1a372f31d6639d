"""The Beacon v2 HTTP API (aiohttp): who may see which dataset at which granularity, the answers, and
an access audit event for every response.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from gdx.publish import beacon
from gdx.publish.auth import Authenticator, AuthError, Identity, Purpose
from gdx.publish.beacon import BeaconRequest, BeaconRequestError, DatasetAnswer, IndexClient, IndexUnavailable
from gdx.publish.config import BeaconConfig, DatasetConfig
from gdx.publish.privacy import BudgetExhausted, Privacy

log = logging.getLogger(__name__)

AuditSink = Callable[[dict[str, Any]], Any]
FilterFactory = Callable[[Sequence[Purpose | None]], beacon.ParticipantFilter]
_RANK = {g: i for i, g in enumerate(beacon.GRANULARITIES)}
# Per-request state: the request as understood (for error answers) and the audit event being built.
_BEACON_REQUEST = web.RequestKey("beacon_request", BeaconRequest)
_AUDIT = web.RequestKey("audit", dict)


class AccessDenied(Exception):
    """A valid token that does not grant what was asked for: 403."""


class NotFound(Exception):
    """No such endpoint or dataset: 404."""


# --- who sees what --------------------------------------------------------------------------------

def admit_all(dataset: str, consent: tuple[str, ...]) -> bool:
    """Answers without a visa count every released participant (the index holds released data only)."""
    return True


def consent_filter(purposes: Sequence[Purpose | None]) -> beacon.ParticipantFilter:
    """Admits a participant whose consent APPROVEs every purpose the visa(s) grant the dataset for.

    Every purpose, not any: a consent must allow each project the grants name, since the answer
    cannot say which project it serves. A grant without a purpose admits nobody.
    """
    if not purposes or any(p is None for p in purposes):
        return lambda dataset, consent: False
    from gdx.consent_gate.matching import Decision, ResearchPurpose, match

    wanted = [ResearchPurpose.from_codes(p.code, p.not_for_profit) for p in purposes if p is not None]
    decided: dict[tuple[str, ...], bool] = {}

    def admitted(dataset: str, consent: tuple[str, ...]) -> bool:
        key = tuple(consent)
        if key not in decided:
            decided[key] = all(match(key, purpose).decision is Decision.APPROVE for purpose in wanted)
        return decided[key]

    return admitted


@dataclass(frozen=True)
class DatasetAccess:
    """A dataset the request may see, up to `granularity`; `purposes` set when a visa grants it."""

    dataset: DatasetConfig
    granularity: str  # count or record
    purposes: tuple[Purpose | None, ...] = ()

    @property
    def by_visa(self) -> bool:
        return bool(self.purposes)


@dataclass
class AccessPlan:
    datasets: list[DatasetAccess]
    granularity: str
    notes: list[str] = field(default_factory=list)


def plan_access(config: BeaconConfig, seen: Sequence[str], identity: Identity | None,
                request: BeaconRequest) -> AccessPlan:
    """Which datasets answer and at which granularity.

    Visa grant: up to record, over consent-matching participants. PUBLIC without a grant: boolean or
    count. REGISTERED: the same, once any trusted token is shown. CONTROLLED: only with a grant.
    Raises AuthError (no token, and nothing answerable without one) or AccessDenied.
    """
    candidates = config.all_datasets(seen)
    notes: list[str] = []
    if request.datasets:
        known = {d.id for d in candidates}
        unknown = [d for d in request.datasets if d not in known]
        if unknown:
            raise NotFound(f"unknown dataset(s): {', '.join(unknown)}")
        candidates = [d for d in candidates if d.id in request.datasets]
    assembly = beacon.canonical_assembly(request.parameters.get("assemblyId"))
    accessible: list[DatasetAccess] = []
    locked: list[DatasetConfig] = []
    for ds in candidates:
        if assembly and ds.assembly and beacon.canonical_assembly(ds.assembly) != assembly:
            notes.append(f"dataset {ds.id} is {ds.assembly}, not {request.parameters['assemblyId']}: not queried")
            continue
        grants = identity.grants_for(ds.id) if identity else []
        if grants:
            purposes = tuple(dict.fromkeys(g.purpose for g in grants))
            if None in purposes:
                notes.append(f"dataset {ds.id}: a visa grant names no research purpose (gdx_purpose), "
                             "so no participant's consent can be matched")
            accessible.append(DatasetAccess(ds, "record", purposes))
        elif ds.security_level == "PUBLIC" or (ds.security_level == "REGISTERED" and identity is not None):
            accessible.append(DatasetAccess(ds, "count"))
        else:
            locked.append(ds)
    for ds in locked:
        needs = "a token from a trusted issuer" if ds.security_level == "REGISTERED" else "a visa that grants it"
        notes.append(f"dataset {ds.id} needs {needs}: not queried")
    if locked and (request.datasets or not accessible):
        names = ", ".join(d.id for d in locked)
        if identity is None:
            raise AuthError(f"dataset(s) {names} need an Authorization: Bearer token", "missing")
        raise AccessDenied(f"the token does not grant dataset(s) {names}")
    best = max((a.granularity for a in accessible), key=_RANK.__getitem__, default="count")
    granularity = min(request.granularity, best, key=_RANK.__getitem__)
    if granularity != request.granularity:
        notes.append(f"{request.granularity} granularity needs a visa that grants the dataset; "
                     f"answered with {granularity}")
    return AccessPlan(accessible, granularity, notes)


# --- answers --------------------------------------------------------------------------------------

@dataclass
class _Context:
    config: BeaconConfig
    index: IndexClient
    auth: Authenticator
    privacy: Privacy
    audit_sink: AuditSink
    base_path: str
    max_page_size: int
    filter_for: FilterFactory


def _page(request: BeaconRequest, max_page_size: int) -> tuple[int, int]:
    limit = request.limit if 0 < request.limit <= max_page_size else max_page_size
    return request.skip, limit


async def _answer_dataset(ctx: _Context, request: BeaconRequest, access: DatasetAccess, granularity: str,
                          base_url: str) -> DatasetAnswer:
    ds = access.dataset.id
    granularity = min(granularity, access.granularity, key=_RANK.__getitem__)
    admitted = ctx.filter_for(access.purposes) if access.by_visa else admit_all
    policy = ctx.privacy.counts if not access.by_visa else None
    min_cell = True
    skip, limit = _page(request, ctx.max_page_size)
    notes: list[str] = []
    if request.endpoint == "g_variants":
        query = request.index_query()
        if granularity == "record":
            found = await ctx.index.query_variants(query, [ds], admitted, "record", skip, limit)
            population = (f"participants of {ds} whose consent allows the granted research purpose "
                          f"({'; '.join(p.code for p in access.purposes if p)})")
            results = [beacon.variant_record(hit, ds, population, f"{base_url}/datasets")
                       for hit in found.get("hits", [])]
            total = int(found.get("total", 0))
            return DatasetAnswer(ds, granularity, total, total > 0, results)
        if policy is not None and policy.min_cell_size > 1:
            # A variant is only shown when enough people carry it: the cell is its carriers.
            scan = ctx.privacy.scan_limit
            found = await ctx.index.query_variants(query, [ds], admitted, "count", 0, scan)
            hits = found.get("hits", [])
            total = sum(1 for h in hits if policy.visible(int((h.get("datasets") or {}).get(ds, {}).get("carriers", 0))))
            min_cell = False
            if int(found.get("total", 0)) > len(hits):
                notes.append(f"only the first {len(hits)} matching variants were checked for the minimum cell size")
        else:
            found = await ctx.index.query_variants(query, [ds], admitted, granularity, 0, 0)
            total = int(found.get("total", 0))
    else:
        if granularity == "record":
            found = await ctx.index.query_individuals(request.index_query()["filters"], [ds], admitted, skip, limit)
            results = [beacon.individual_record(hit) for hit in found.get("hits", [])]
            total = int(found.get("total", 0))
            return DatasetAnswer(ds, granularity, total, total > 0, results)
        found = await ctx.index.query_individuals(request.index_query()["filters"], [ds], admitted, 0, 0)
        total = int(found.get("total", 0))
    if policy is None:
        return DatasetAnswer(ds, granularity, total, total > 0, notes=notes)
    shown = policy.protect(total, min_cell=min_cell)
    if shown.adjusted_to:
        notes.append(shown.adjusted_to)
    return DatasetAnswer(ds, granularity, shown.value, shown.exists, precision=shown.precision, notes=notes)


def _base_url(http: web.Request, base_path: str) -> str:
    return f"{http.scheme}://{http.host}{base_path}"


async def _datasets_seen(ctx: _Context) -> tuple[list[str], str | None]:
    try:
        return list(await ctx.index.datasets_seen()), None
    except (TimeoutError, IndexUnavailable, ConnectionError, OSError) as exc:
        log.warning("index unavailable for the dataset list: %s", exc)
        return [], "the index is unavailable: datasets known only from data are not listed"


async def _read_request(http: web.Request, endpoint: str, config: BeaconConfig) -> BeaconRequest:
    body = None
    if http.method == "POST" and http.can_read_body:
        try:
            body = json.loads(await http.read() or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise BeaconRequestError("the request body is not valid JSON") from None
    return _parse(http, endpoint, body, config)


def _parse(http: web.Request, endpoint: str, body: Any, config: BeaconConfig) -> BeaconRequest:
    http[_BEACON_REQUEST] = beacon.default_request(endpoint, config.default_granularity)
    request = beacon.parse_request(endpoint, http.query, body, default_granularity=config.default_granularity)
    http[_BEACON_REQUEST] = request
    return request


def _summary_ref(request: BeaconRequest) -> str:
    """What was asked, for the audit trail: parameters and filter terms, never tokens or addresses."""
    parts = [f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in request.parameters.items()]
    if request.filters:
        parts.append("filters=" + ",".join(f["id"] for f in request.filters))
    if request.datasets:
        parts.append("datasets=" + ",".join(request.datasets))
    parts.append(f"requestedGranularity={request.granularity}")
    return f"/{request.endpoint}?" + "&".join(parts)


async def _authenticate(ctx: _Context, http: web.Request) -> Identity | None:
    header = http.headers.get("Authorization")
    # Verification may fetch an issuer's JWKS: never on the event loop (no header: nothing to verify).
    identity = await asyncio.to_thread(ctx.auth.authenticate, header) if header else ctx.auth.authenticate(None)
    if identity is not None:
        http[_AUDIT]["actor"] = identity.subject
    return identity


async def _query(ctx: _Context, http: web.Request, endpoint: str) -> web.Response:
    request = await _read_request(http, endpoint, ctx.config)
    audit = http[_AUDIT]
    audit["data_ref"] = _summary_ref(request)
    identity = await _authenticate(ctx, http)
    seen, unavailable = await _datasets_seen(ctx)
    if unavailable:
        raise IndexUnavailable(unavailable)
    plan = plan_access(ctx.config, seen, identity, request)
    client = identity.client_key if identity else f"address {http.remote}"
    ctx.privacy.budget.charge(client, "token subject" if identity else "address")
    base_url = _base_url(http, ctx.base_path)
    answers = await asyncio.gather(*(_answer_dataset(ctx, request, access, plan.granularity, base_url)
                                     for access in plan.datasets))
    info: dict[str, Any] = {"datasetAccess": {a.dataset.id: min(plan.granularity, a.granularity, key=_RANK.__getitem__)
                                              for a in plan.datasets}}
    warnings = list(plan.notes) + (list(identity.warnings) if identity else [])
    if warnings:
        info["notes"] = warnings
    doc = beacon.query_document(ctx.config, request, plan.granularity, answers, info)
    audit.update(dataset=",".join(a.dataset.id for a in plan.datasets), granularity=plan.granularity,
                 record_count=sum(len(a.results) for a in answers),
                 rule="visa:ControlledAccessGrants" if any(a.by_visa for a in plan.datasets) else "public",
                 reason=f"answered {plan.granularity} over {len(plan.datasets)} dataset(s)")
    return web.json_response(doc)


# --- the application ------------------------------------------------------------------------------

def _error_status(exc: BaseException) -> tuple[int, str, str]:
    """(HTTP status, message for the client, audit rule) for an exception."""
    if isinstance(exc, BeaconRequestError):
        return 400, str(exc), "bad-request"
    if isinstance(exc, AuthError):
        return 401, exc.reason, f"auth:{exc.code}"
    if isinstance(exc, AccessDenied):
        return 403, str(exc), "auth:not-granted"
    if isinstance(exc, NotFound):
        return 404, str(exc), "not-found"
    if isinstance(exc, BudgetExhausted):
        return 429, str(exc), "budget"
    if isinstance(exc, (IndexUnavailable, ConnectionError, asyncio.TimeoutError)):
        return 503, "the index is unavailable; try again later", "index-unavailable"
    if isinstance(exc, web.HTTPException):
        return exc.status, exc.reason, f"http:{exc.status}"
    return 500, "internal error", "internal-error"


def make_app(index_client: IndexClient, config: BeaconConfig, auth: Authenticator, privacy: Privacy,
             audit_sink: AuditSink, *, base_path: str = "/api", max_page_size: int = 100,
             metrics: Any = None, participant_filter: FilterFactory | None = None) -> web.Application:
    """The Beacon API under `base_path`. `audit_sink(event)` receives an org.gdx.AuditEvent-shaped dict
    for every answer (errors too); if it fails the client gets 500 and no data.

    `participant_filter(purposes)` builds the consent filter for visa-granted datasets (default:
    gdx.consent_gate.matching, see consent_filter).
    """
    base_path = base_path.rstrip("/")
    ctx = _Context(config, index_client, auth, privacy, audit_sink, base_path, max_page_size,
                   participant_filter or consent_filter)

    async def root(http: web.Request) -> web.Response:
        return web.json_response(beacon.info_document(config))

    async def service_info(http: web.Request) -> web.Response:
        return web.json_response(beacon.service_info_document(config, _base_url(http, base_path)))

    async def configuration(http: web.Request) -> web.Response:
        seen, warning = await _datasets_seen(ctx)
        doc = beacon.configuration_document(config, config.all_datasets(seen))
        if warning:
            doc["info"]["notes"] = [warning]
        return web.json_response(doc)

    async def beacon_map(http: web.Request) -> web.Response:
        return web.json_response(beacon.map_document(config, _base_url(http, base_path)))

    async def entry_types(http: web.Request) -> web.Response:
        return web.json_response(beacon.entry_types_document(config))

    async def filtering_terms(http: web.Request) -> web.Response:
        return web.json_response(beacon.filtering_terms_document(config, await index_client.filtering_terms()))

    async def datasets(http: web.Request) -> web.Response:
        request = await _read_request(http, "datasets", config)
        seen, warning = await _datasets_seen(ctx)
        listed = config.all_datasets(seen)
        if request.datasets:
            listed = [d for d in listed if d.id in request.datasets]
        skip, limit = _page(request, max_page_size)
        request.skip, request.limit = skip, limit
        doc = beacon.datasets_document(config, request, listed, {"notes": [warning]} if warning else None)
        http[_AUDIT].update(granularity="record", record_count=len(doc["response"]["collections"]),
                             dataset=",".join(d["id"] for d in doc["response"]["collections"]))
        return web.json_response(doc)

    async def g_variants(http: web.Request) -> web.Response:
        return await _query(ctx, http, "g_variants")

    async def individuals(http: web.Request) -> web.Response:
        return await _query(ctx, http, "individuals")

    @web.middleware
    async def beacon_errors(request: web.Request,
                            handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        http = request  # the HTTP request; "request" elsewhere in this module is the Beacon request
        started = time.perf_counter()
        request_id = uuid.uuid4().hex
        endpoint = (http.path[len(base_path):] if http.path.startswith(base_path) else http.path).strip("/")
        http[_AUDIT] = {"actor": "anonymous", "data_ref": f"/{endpoint}", "dataset": "",
                         "granularity": None, "record_count": None, "rule": "public", "reason": "answered"}
        headers = {"X-Request-Id": request_id}
        try:
            response = await handler(request)
            decision = "granted"
        except Exception as exc:  # noqa: BLE001 - every failure becomes a Beacon error answer
            status, message, rule = _error_status(exc)
            if status == 500:
                log.exception("request %s failed", request_id)
            elif status == 503:
                log.warning("request %s: index unavailable: %s", request_id, exc)
            understood = http.get(_BEACON_REQUEST) or beacon.default_request(endpoint, config.default_granularity)
            if isinstance(exc, AuthError):
                headers["WWW-Authenticate"] = ('Bearer error="invalid_request"' if exc.code == "missing"
                                               else 'Bearer error="invalid_token"')
            if isinstance(exc, BudgetExhausted):
                headers["Retry-After"] = str(max(1, int(exc.retry_after + 0.999)))
            response = web.json_response(beacon.error_document(config, status, message, understood), status=status)
            http[_AUDIT].update(rule=rule, reason=message, granularity=None, record_count=0)
            decision = "denied"
        event = {
            "event_id": request_id, "time": int(time.time() * 1000), "service": "publish", "action": "query",
            "dataset": http[_AUDIT]["dataset"], "participant": None, "actor": http[_AUDIT]["actor"],
            "data_ref": http[_AUDIT]["data_ref"], "decision": decision, "rule": http[_AUDIT]["rule"],
            "reason": http[_AUDIT]["reason"], "consent_version": None,
            "granularity": http[_AUDIT]["granularity"], "record_count": http[_AUDIT]["record_count"],
            "correlation_id": request_id,
        }
        try:
            outcome = audit_sink(event)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:  # noqa: BLE001 - no answer leaves without its audit record
            log.exception("request %s: audit sink failed; answering 500", request_id)
            understood = http.get(_BEACON_REQUEST) or beacon.default_request(endpoint, config.default_granularity)
            response = web.json_response(
                beacon.error_document(config, 500, "access audit unavailable; nothing was answered", understood),
                status=500)
        for name, value in headers.items():
            response.headers[name] = value
        if metrics is not None:
            label = endpoint if endpoint in _ENDPOINT_NAMES else "other"
            metrics.api_requests.labels(service="publish", endpoint=label, status=str(response.status)).inc()
            metrics.api_seconds.labels(service="publish", endpoint=label).observe(time.perf_counter() - started)
        return response

    app = web.Application(middlewares=[beacon_errors])
    routes = {"": root, "info": root, "service-info": service_info, "configuration": configuration,
              "map": beacon_map, "entry_types": entry_types, "filtering_terms": filtering_terms,
              "datasets": datasets, "g_variants": g_variants, "individuals": individuals}
    for name, handler in routes.items():
        path = f"{base_path}/{name}" if name else (base_path or "/")
        app.router.add_route("GET", path, handler)
        app.router.add_route("POST", path, handler)
        if name == "" and base_path:
            app.router.add_route("GET", base_path + "/", handler)
    return app


_ENDPOINT_NAMES = frozenset({"", "info", "service-info", "configuration", "map", "entry_types", "filtering_terms",
                             "datasets", "g_variants", "individuals"})


# A Passport carrying many visas is larger than aiohttp's default 8 KiB limit for one header.
SERVER_ARGS: dict[str, Any] = {"max_field_size": 256 * 1024}


async def start_api(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve `app` on host:port (large Authorization headers allowed); `await runner.cleanup()` stops it."""
    runner = web.AppRunner(app, access_log=None, **SERVER_ARGS)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def app_from_settings(settings: Any, index_client: IndexClient, audit_sink: AuditSink,
                      metrics: Any = None) -> web.Application:
    """The API as PublishSettings configure it (development issuer trusted in dev mode)."""
    from gdx.publish.config import load_config

    return make_app(index_client, load_config(settings.beacon_config), Authenticator.from_settings(settings),
                    Privacy.from_settings(settings), audit_sink, base_path=settings.base_path,
                    max_page_size=settings.max_page_size, metrics=metrics)


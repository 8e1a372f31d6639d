"""Least-privilege ACLs of a secured broker, derived from the topic catalog's `producers` and `consumers`.

One Kafka principal (SCRAM user) per service, `cli` for operator commands, `subscriber-<name>` per
subscriber feed; `admin` is a super user and needs none. Each principal may:

- WRITE the topics the catalog lists it as producer of, READ those it lists it as consumer of
  (READ/WRITE imply DESCRIBE in Kafka); `subscriber:{subscriber}` on the feed template is the feed's
  own subscriber, `subscriber:*` every subscriber;
- create, write and configure the topics of a catalog template it produces (publish: `<prefix>gdx.feed.*`,
  made when a subscription appears; the subscriber gets access at the next `gdx topics apply`);
- use the consumer groups named after it (`<prefix>gdx.<service>...`, a subscriber `<prefix>gdx.feed.<name>...`);
- `cli` also DESCRIBEs every gdx topic and group (`gdx status`, `gdx wait --idle`): offsets, never data.

Nothing else: with `allow.everyone.if.no.acl.found=false` every other request is refused by the broker.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gdx.common.errors import ConfigurationError
from gdx.common.topics import TopicCatalog, TopicSpec

SERVICES = ("ingest", "anonymize", "consent_gate", "index", "publish")
OPERATOR = "cli"
SUBSCRIBER_PREFIX = "subscriber-"
_SUBSCRIBER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True, order=True)
class Grant:
    """One ALLOW rule: principal (user name) may `operation` the `resource` named `name` (literal or prefixed)."""

    principal: str
    resource: str  # topic | group
    name: str
    pattern: str  # literal | prefixed
    operation: str  # read | write | describe


def subscriber_principal(subscriber: str) -> str:
    if not _SUBSCRIBER_NAME.match(subscriber):
        raise ConfigurationError(f"subscriber name {subscriber!r}: letters, digits, '_' and '-' only (at most 64)")
    return SUBSCRIBER_PREFIX + subscriber


def managed_principal(principal: str) -> bool:
    """Principals whose ACLs `gdx topics apply` owns (and so may remove)."""
    return principal in SERVICES or principal == OPERATOR or principal.startswith(SUBSCRIBER_PREFIX)


def feed_subscribers(catalog: TopicCatalog, topic_names: Iterable[str]) -> list[str]:
    """Subscribers whose feed topic exists among `topic_names` (physical names)."""
    template = next(t for t in catalog.templates if "{subscriber}" in t.name)
    head, _, tail = (catalog.prefix + template.name).partition("{subscriber}")
    found = []
    for name in topic_names:
        if name.startswith(head) and name.endswith(tail) and len(name) > len(head) + len(tail):
            sub = name[len(head):len(name) - len(tail)]
            if _SUBSCRIBER_NAME.match(sub):
                found.append(sub)
    return sorted(set(found))


def _principals(role: str, spec: TopicSpec, subscriber: str | None, subscribers: list[str]) -> list[str]:
    if role.startswith("subscriber:"):
        which = role.split(":", 1)[1]
        if which == "*":
            return [subscriber_principal(s) for s in subscribers]
        if which == "{subscriber}":
            if subscriber is None:
                raise ConfigurationError(f"topic {spec.name}: 'subscriber:{{subscriber}}' only fits a feed template")
            return [subscriber_principal(subscriber)]
        return [subscriber_principal(which)]
    if role not in SERVICES and role != OPERATOR:
        raise ConfigurationError(f"topic {spec.name}: unknown principal {role!r} in the catalog "
                                 f"(services, {OPERATOR!r} or 'subscriber:...')")
    return [role]


def grants(catalog: TopicCatalog, subscribers: Iterable[str] = ()) -> set[Grant]:
    """Every ACL the catalog implies, for its topics and the feed topics of `subscribers`."""
    subs = sorted(set(subscribers))
    topics: list[tuple[str, TopicSpec, str | None]] = [(catalog.name(s.name), s, None) for s in catalog.specs]
    topics += [(catalog.feed(s), catalog.spec(catalog.feed(s)), s) for s in subs]
    out: set[Grant] = set()
    for physical, spec, subscriber in topics:
        if spec.identifiable and set(spec.consumers) != {"anonymize"}:
            raise ConfigurationError(f"topic {spec.name} carries identifiable data: only anonymize may read it, "
                                     f"the catalog says {list(spec.consumers)}")
        for role in spec.producers:
            out |= {Grant(p, "topic", physical, "literal", "write") for p in _principals(role, spec, subscriber, subs)}
        for role in spec.consumers:
            out |= {Grant(p, "topic", physical, "literal", "read") for p in _principals(role, spec, subscriber, subs)}
    p = catalog.prefix
    # a template's topics (subscriber feeds) are created at run time by their producer (publish's feed worker):
    # it may create, write and configure topics under the template's fixed head, nothing else
    for template in catalog.templates:
        head = p + template.name.partition("{")[0]
        for role in template.producers:
            if role in SERVICES:
                out |= {Grant(role, "topic", head, "prefixed", op)
                        for op in ("create", "write", "describe_configs", "alter_configs")}
    out |= {Grant(s, "group", f"{p}gdx.{s}", "prefixed", "read") for s in SERVICES}
    out |= {Grant(subscriber_principal(s), "group", f"{p}gdx.feed.{s}", "prefixed", "read") for s in subs}
    out |= {Grant(OPERATOR, "topic", f"{p}gdx.", "prefixed", "describe"),
            Grant(OPERATOR, "group", f"{p}gdx.", "prefixed", "describe")}
    return out


def in_scope(grant: Grant, catalog: TopicCatalog) -> bool:
    """ACLs `gdx topics apply` reconciles: managed principals on this prefix's gdx resources."""
    return managed_principal(grant.principal) and grant.name.startswith(f"{catalog.prefix}gdx.")


# -- on the broker (kafka-python admin) ---------------------------------------------------------------------------
def _to_acl(grant: Grant) -> Any:
    from kafka.admin import (
        ACL,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePattern,
        ResourceType,
    )

    return ACL(principal=f"User:{grant.principal}", host="*", operation=ACLOperation[grant.operation.upper()],
               permission_type=ACLPermissionType.ALLOW,
               resource_pattern=ResourcePattern(ResourceType[grant.resource.upper()], grant.name,
                                                ACLResourcePatternType[grant.pattern.upper()]))


def _from_acl(acl: Any) -> Grant | None:
    from kafka.admin import ACLPermissionType

    if acl.permission_type != ACLPermissionType.ALLOW or acl.host != "*" or not acl.principal.startswith("User:"):
        return None
    rp = acl.resource_pattern
    return Grant(acl.principal[len("User:"):], rp.resource_type.name.lower(), rp.resource_name,
                 rp.pattern_type.name.lower(), acl.operation.name.lower())


def current_grants(admin: Any) -> set[Grant]:
    from kafka.admin import (
        ACLFilter,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePatternFilter,
        ResourceType,
    )

    acls, _ = admin.describe_acls(ACLFilter(
        principal=None, host=None, operation=ACLOperation.ANY, permission_type=ACLPermissionType.ANY,
        resource_pattern=ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY)))
    return {g for g in (_from_acl(a) for a in acls) if g is not None}


@dataclass
class AclChanges:
    created: list[Grant]
    deleted: list[Grant]
    unchanged: int


def apply_acls(admin: Any, catalog: TopicCatalog, subscribers: Iterable[str] = ()) -> AclChanges:
    """Make the broker's ACLs for this catalog exactly `grants(catalog, subscribers)` (idempotent)."""
    from kafka.errors import KafkaError

    wanted = grants(catalog, subscribers)
    have = {g for g in current_grants(admin) if in_scope(g, catalog)}
    create = sorted(wanted - have)
    delete = sorted(have - wanted)
    if create:
        result = admin.create_acls([_to_acl(g) for g in create])
        if result.get("failed"):
            raise KafkaError(f"creating ACLs failed: {result['failed'][:3]}")
    if delete:
        from kafka.errors import NoError

        for _, _, error in admin.delete_acls([_to_acl(g) for g in delete]):
            if error is not NoError:
                raise KafkaError(f"deleting ACLs failed: {error}")
    if create or delete:
        _wait_effective(admin, catalog, wanted)
    return AclChanges(create, delete, len(wanted & have))


def _wait_effective(admin: Any, catalog: TopicCatalog, wanted: set[Grant], timeout_s: float = 30.0) -> None:
    """Return once the broker's authorizer holds exactly `wanted`: it applies the metadata log a moment after the
    controller accepted the change, and a service started before that would be refused its own topics."""
    import time

    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout_s
    while {g for g in current_grants(admin) if in_scope(g, catalog)} != wanted:
        if time.monotonic() > deadline:
            raise KafkaError(f"the broker did not apply the ACLs within {timeout_s:.0f}s")
        time.sleep(0.2)

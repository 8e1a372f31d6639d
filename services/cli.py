"""The `gdx` command: ingest, consent, topics, tail, status, wait, serve, and the other tools.

Every command exits 0 on success and non-zero with a one-line reason on stderr otherwise.
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from gdx.common.errors import GdxError
from gdx.common.settings import Settings, SettingsError
from kafka.errors import KafkaError

COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {}


class CommandError(GdxError):
    """A command failed for a reason the user can act on."""


def command(fn: Callable[[argparse._SubParsersAction], None]) -> Callable[[argparse._SubParsersAction], None]:
    COMMANDS[fn.__name__.replace("_", "-")] = fn
    return fn


# -- topics and schemas ------------------------------------------------------------------------
@command
def topics(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("topics", help="create or update the catalog's topics (and ACLs on a secured broker)")
    p.add_argument("action", choices=["apply", "list"])
    p.add_argument("--feed", action="append", default=[], help="also provision the feed topic of this subscriber")
    p.set_defaults(run=_topics)


def _topics(args: argparse.Namespace) -> int:
    from gdx.common.kafka import apply_topics
    from gdx.common.topics import TopicCatalog
    from kafka.errors import KafkaError

    settings = Settings.from_env()
    catalog = TopicCatalog.load(settings.schema_dir, settings.topic_prefix)
    if args.action == "list":
        for spec in catalog.specs:
            print(f"{catalog.prefix}{spec.name}\t{spec.stage}\t{spec.partitions}\t{spec.cleanup_policy}\t"
                  f"{','.join(spec.values)}")
        return 0
    # raw topics get GDX_RAW_RETENTION_MS (settings.raw_retention_ms), whatever the catalog says
    try:
        changes = apply_topics(settings, catalog, extra=[catalog.feed(s) for s in args.feed])
    except (KafkaError, ValueError) as exc:
        if settings.kafka_security != "sasl_ssl":
            raise
        raise CommandError(f"{exc} (on a secured broker topics, users and ACLs are managed as the admin principal, "
                           f"not {settings.kafka_username!r})") from None
    for change in changes:
        print(f"{change.action:10s} {change.topic}")
    if settings.kafka_security == "sasl_ssl":
        _apply_acls(settings, catalog, args.feed)
    return 0


def _apply_acls(settings: Settings, catalog: Any, feeds: list[str]) -> None:
    """Secured broker: SCRAM users for new subscribers, then exactly the catalog's ACLs (needs the admin user)."""
    from gdx.common.acl import OPERATOR, SERVICES, apply_acls, feed_subscribers, subscriber_principal
    from gdx.common.credentials import new_password, write_secret
    from gdx.common.kafka import make_admin, upsert_scram_users
    from kafka.errors import (
        ClusterAuthorizationFailedError,
        SecurityDisabledError,
        TopicAuthorizationFailedError,
    )

    admin = make_admin(settings, "gdx-topics")
    try:
        subscribers = sorted(set(feeds) | set(feed_subscribers(catalog, admin.list_topics())))
        have = set(admin.describe_user_scram_credentials() or {})
        missing = [subscriber_principal(s) for s in subscribers if subscriber_principal(s) not in have]
        folder = _credentials_dir(settings, required=bool(missing))
        # services whose password file is there but who have no SCRAM user yet (a broker bootstrapped with admin only)
        missing += [p for p in (*SERVICES, OPERATOR) if p not in have and folder and (folder / f"{p}.password").is_file()]
        if missing:
            passwords = {}
            for principal in missing:
                path = folder / f"{principal}.password"
                if not path.is_file():  # an operator may have put the subscriber's password there already
                    write_secret(path, new_password() + "\n")
                passwords[principal] = path.read_text().strip()
            upsert_scram_users(admin, passwords)
            for principal in missing:
                print(f"{'user':10s} {principal} (password in {folder / (principal + '.password')})")
        result = apply_acls(admin, catalog, subscribers)
    except (ClusterAuthorizationFailedError, TopicAuthorizationFailedError) as exc:
        raise CommandError(f"the broker refused ({exc.__class__.__name__}): ACLs and users are managed as the "
                           f"admin principal, not {settings.kafka_username!r}") from None
    except SecurityDisabledError:
        raise CommandError("GDX_KAFKA_SECURITY=sasl_ssl but the broker has no authorizer") from None
    finally:
        admin.close()
    print(f"{'acls':10s} {len(result.created)} added, {len(result.deleted)} removed, {result.unchanged} unchanged "
          f"({len(subscribers)} subscriber feeds)")


def _credentials_dir(settings: Settings, required: bool = True) -> Any:
    """GDX_KAFKA_CREDENTIALS_DIR, else the folder of the admin's own password file."""
    if settings.kafka_credentials_dir is not None:
        return settings.kafka_credentials_dir
    if settings.kafka_password_file is not None:
        return settings.kafka_password_file.parent
    if required:
        raise CommandError("set GDX_KAFKA_CREDENTIALS_DIR: where new users' password files go")
    return None


@command
def credentials(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("credentials", help="secured broker: list SCRAM users, or rotate one's password (admin only)")
    p.add_argument("action", choices=["list", "rotate"])
    p.add_argument("principal", nargs="?", help="with rotate: the user (a service, cli, subscriber-<name>, admin)")
    p.add_argument("--password-file", type=_path, default=None,
                   help="with rotate: file receiving the new password (default <credentials dir>/<principal>.password)")
    p.set_defaults(run=_credentials)


def _path(value: str) -> Any:
    from pathlib import Path

    return Path(value).expanduser()


def _credentials(args: argparse.Namespace) -> int:
    from gdx.common.credentials import new_password, write_secret
    from gdx.common.kafka import make_admin, upsert_scram_users

    settings = Settings.from_env()
    if settings.kafka_security != "sasl_ssl":
        raise CommandError("the broker is not secured (GDX_KAFKA_SECURITY=plaintext): there are no users")
    admin = make_admin(settings, "gdx-credentials")
    try:
        if args.action == "list":
            for user, info in sorted((admin.describe_user_scram_credentials() or {}).items()):
                mechs = ",".join(f"{c['mechanism'].name.replace('_', '-')}({c['iterations']})"
                                 for c in (info or {}).get("credential_infos") or [])
                print(f"{user}\t{mechs}")
            return 0
        if not args.principal:
            raise CommandError("rotate needs the principal whose password changes")
        path = args.password_file or _credentials_dir(settings) / f"{args.principal}.password"
        password = new_password()
        # the broker first: should it refuse, the old password (and file) stay valid
        upsert_scram_users(admin, {args.principal: password})
        write_secret(path, password + "\n")
    finally:
        admin.close()
    print(f"rotated {args.principal}: new password in {path}; restart the processes that use it")
    return 0


@command
def tail(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tail", help="print a topic's events as JSON lines, decoding with gdx.schemas only")
    p.add_argument("topic")
    p.add_argument("--from-beginning", action="store_true")
    p.add_argument("--max", type=int, default=0, help="stop after this many events")
    p.add_argument("--timeout", type=float, default=0, help="stop after this many idle seconds (0: follow)")
    p.set_defaults(run=_tail)


def _tail(args: argparse.Namespace) -> int:
    import base64
    import time

    from gdx.common.avro import DecodeError, SchemaCatalog, UnknownSchemaError
    from gdx.common.kafka import make_consumer, read_schema_topic
    from gdx.common.topics import TopicCatalog
    from kafka import TopicPartition

    settings = Settings.from_env()
    topics_ = TopicCatalog.load(settings.schema_dir, settings.topic_prefix)
    catalog = read_schema_topic(settings, topics_, SchemaCatalog({}))
    consumer = make_consumer(settings, None, "gdx-tail")
    parts = consumer.partitions_for_topic(args.topic)
    if not parts:
        raise CommandError(f"topic {args.topic} does not exist")
    tps = [TopicPartition(args.topic, p) for p in sorted(parts)]
    consumer.assign(tps)
    if args.from_beginning:
        consumer.seek_to_beginning(*tps)
    else:
        consumer.seek_to_end(*tps)

    def plain(v: Any) -> Any:
        if isinstance(v, bytes):
            return {"$base64": base64.b64encode(v).decode()}
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list):
            return [plain(x) for x in v]
        return v

    shown, idle_since = 0, time.monotonic()
    try:
        while True:
            polled = consumer.poll(timeout_ms=500)
            if not polled and args.timeout and time.monotonic() - idle_since > args.timeout:
                return 0
            for recs in polled.values():
                idle_since = time.monotonic()
                for rec in recs:
                    line: dict[str, Any] = {"topic": rec.topic, "partition": rec.partition, "offset": rec.offset,
                                            "key": rec.key.decode("utf-8", "replace") if rec.key else None}
                    try:
                        if args.topic.endswith("gdx.schemas"):
                            line["value"] = json.loads(rec.value)
                        else:
                            try:
                                line["schema"], value = catalog.decode(rec.value)
                            except UnknownSchemaError:
                                catalog = read_schema_topic(settings, topics_, catalog)
                                line["schema"], value = catalog.decode(rec.value)
                            line["value"] = plain(value)
                    except (DecodeError, UnknownSchemaError) as exc:
                        line["error"] = str(exc)
                    print(json.dumps(line), flush=True)
                    shown += 1
                    if args.max and shown >= args.max:
                        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        consumer.close()


# -- services ----------------------------------------------------------------------------------
SERVICES = ("ingest", "anonymize", "consent_gate", "index", "publish")


@command
def serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run one service in the foreground")
    p.add_argument("service", choices=SERVICES)
    p.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> int:
    import importlib

    from kafka.errors import KafkaError

    _preload_allocator(args.service)
    _tune_malloc()
    _stacks_on_signal()
    module = importlib.import_module(f"gdx.{args.service}.app")
    _freeze_imports()
    try:
        return int(module.main() or 0)
    except KafkaError as exc:
        # broker unreachable beyond the clients' retries: exit 75 (EX_TEMPFAIL) so a supervisor restarts
        print(f"gdx serve {args.service}: Kafka unavailable, exiting for a restart: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 75


JEMALLOC = ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
            "/usr/lib64/libjemalloc.so.2", "/usr/lib/libjemalloc.so.2", "/usr/local/lib/libjemalloc.so.2")


def _preload_allocator(service: str) -> None:
    """The index runs on jemalloc (GDX_INDEX_ALLOCATOR): this process executes itself again, same PID and
    arguments, with the library in LD_PRELOAD. On glibc's malloc the index's heap fragmented (SQLite's
    page caches between query and batch buffers): in soaks the memory in use stayed flat while the free
    memory malloc kept, and could not give back, grew with the RSS by 3 to 6 MB a minute; on jemalloc the
    RSS less SQLite's caches stayed flat. Where the library is not installed, glibc's, with a warning."""
    if service != "index" or "libjemalloc" in os.environ.get("LD_PRELOAD", ""):
        return
    from gdx.index.settings import IndexSettings

    if IndexSettings.from_env().allocator != "jemalloc":
        return
    lib = next((path for path in JEMALLOC if os.path.exists(path)), None)
    if lib is None:
        print("gdx serve index: libjemalloc.so.2 not found (Debian: apt-get install libjemalloc2); running on"
              " glibc's malloc, whose heap fragments under the index's load", file=sys.stderr)
        return
    preload = ":".join(p for p in (lib, os.environ.get("LD_PRELOAD", "")) if p)
    try:
        os.execve(sys.executable, sys.orig_argv, {**os.environ, "LD_PRELOAD": preload})
    except OSError as exc:
        print(f"gdx serve index: could not start again on jemalloc ({exc}); running on glibc's malloc",
              file=sys.stderr)


def _freeze_imports() -> None:
    """Leave what importing the service made (modules, classes, functions: about 70,000 objects that live as
    long as the process) out of the cyclic collector's passes. A full pass over them took 110 ms here, and a
    service makes one a minute (`tidy_heap`); without them it takes about a millisecond."""
    gc.collect()  # garbage of the imports is freed, not kept for good
    gc.freeze()


def _stacks_on_signal() -> None:
    """`kill -USR1 <pid>` writes every thread's stack to the service's stderr (its log): what a
    service that seems stuck is doing, without stopping it."""
    if hasattr(signal, "SIGUSR1"):
        try:
            faulthandler.register(signal.SIGUSR1, all_threads=True)
        except (AttributeError, ValueError, OSError):  # stderr is not a file (embedded, captured)
            pass


def _tune_malloc(arenas: int = 2, mmap_threshold: int = 1 << 20) -> None:
    """Two settings of glibc's malloc (each unless its MALLOC_*_ environment variable is set, which wins);
    called before any thread starts, does nothing where malloc is not glibc's.

    - At most `arenas` arenas (MALLOC_ARENA_MAX). A service's threads (query API threads, Kafka IO)
      each get an arena of their own by default, up to 8 per core, and memory freed in an arena stays
      with it: in the index's soak a third of its RSS was free memory kept by arenas.
    - Blocks of `mmap_threshold` bytes and more mapped on their own (MALLOC_MMAP_THRESHOLD_). By default
      the threshold rises to the largest block freed so far: after the first multi-megabyte fetch
      response every later one came from the heap, between long-lived objects, and the index's RSS
      swung with up to 106 MB of free heap it could not give back while the memory in use stayed flat
      (155 MB from minute four of a 10-minute soak). Mapped blocks go back to the system when freed.
    """
    import ctypes
    import os

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    if "MALLOC_ARENA_MAX" not in os.environ:
        mallopt(-8, arenas)  # M_ARENA_MAX
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        mallopt(-3, mmap_threshold)  # M_MMAP_THRESHOLD


@command
def config(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="list every setting: variable, default, meaning")
    p.add_argument("--markdown", action="store_true")
    p.set_defaults(run=_config)


def _config(args: argparse.Namespace) -> int:
    import importlib

    classes: list[Any] = [Settings]
    for name in SERVICES:
        try:
            mod = importlib.import_module(f"gdx.{name}.settings")
        except ImportError:
            continue
        classes += [c for c in vars(mod).values() if isinstance(c, type) and issubclass(c, Settings)
                    and c.__module__ == mod.__name__]
    from gdx.ops_commands import StatusSettings  # gdx status / wait / trace

    classes.append(StatusSettings)
    seen = set()
    if args.markdown:
        print("| variable | default | meaning |\n|---|---|---|")
    for cls in classes:
        for var, default, doc in cls.describe():
            if var in seen:
                continue
            seen.add(var)
            print(f"| `{var}` | `{default}` | {doc} |" if args.markdown else f"{var}={default}\t# {doc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gdx", description="gdx, the Genomic Data eXchange")
    sub = parser.add_subparsers(dest="command", required=True)
    _load_plugins()
    for register in COMMANDS.values():
        register(sub)
    return parser


def _load_plugins() -> None:
    """Commands defined next to the code they drive (gdx.<service>.commands) register themselves."""
    import importlib

    for name in ("gdx.ingest.commands", "gdx.anonymize.commands", "gdx.consent_gate.commands", "gdx.index.commands",
                 "gdx.publish.commands", "gdx.ops_commands", "gdx.reconcile"):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if not exc.name or not name.startswith(exc.name):
                raise


def _kafka_reason(exc: Exception) -> str:
    """One line for a broker error; on a secured broker, who was refused."""
    from kafka.errors import AuthorizationError, SaslAuthenticationFailedError

    text = " ".join(str(exc).split())
    if isinstance(exc, AuthorizationError | SaslAuthenticationFailedError):
        try:
            user = Settings.from_env().kafka_username or "ANONYMOUS"
        except SettingsError:
            user = "?"
        verb = "refused the credentials of" if isinstance(exc, SaslAuthenticationFailedError) else "refused this to"
        return f"the broker {verb} user {user!r}: {text}"
    return f"Kafka: {text}"


def _tune_gc() -> None:
    """A variant batch decodes into thousands of short-lived dicts and lists: at the default gen-0
    threshold (700) the cycle collector ran several times per batch, rescanning everything the
    process keeps, and took as much CPU as decoding did. Objects alive after start-up are frozen
    out of collection; the older generations are still collected often enough (every 500,000 and
    5,000,000 allocations) that cycles (kafka-python's futures make some) cannot pile up."""
    gc.freeze()
    gc.set_threshold(50_000, 10, 10)


def main(argv: list[str] | None = None) -> int:
    _tune_gc()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (GdxError, SettingsError, OSError, ValueError) as exc:
        print(f"gdx {args.command}: {exc}", file=sys.stderr)
        return 1
    except KafkaError as exc:
        print(f"gdx {args.command}: {_kafka_reason(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"gdx {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

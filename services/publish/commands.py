"""`gdx token` (a development Passport visa) and `gdx subscribe` (subscriber feeds)."""

from __future__ import annotations

import argparse

from gdx.cli import command


@command
def token(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("token", help="development mode only: a GA4GH Passport visa JWT from the local issuer")
    p.add_argument("--dataset", required=True)
    p.add_argument("--purpose", required=True, help="DUO research purpose: GRU, HMB, DS:<term>, POA")
    p.add_argument("--not-for-profit", action="store_true")
    p.set_defaults(run=_token)


def _token(args: argparse.Namespace) -> int:
    from gdx.publish.auth import dev_token
    from gdx.publish.settings import PublishSettings

    print(dev_token(PublishSettings.from_env(), args.dataset, args.purpose, args.not_for_profit))
    return 0


@command
def subscribe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("subscribe", help="add, list or remove a subscriber feed (topic gdx.feed.<name>.v1)",
                       description="Subscriptions are kept in GDX_PUBLISH_SUBSCRIPTIONS_FILE (default "
                                   "<run dir>/publish/subscriptions.json); the running publish service "
                                   "picks up every change within a second or two.")
    p.add_argument("name", nargs="?", help="subscriber name: a-z, 0-9, '_' and '-'")
    p.add_argument("--dataset", action="append", default=[], help="dataset the subscriber receives (repeatable)")
    p.add_argument("--purpose", help="DUO research purpose: GRU, HMB, DS:<term>, POA (modifiers may follow)")
    p.add_argument("--not-for-profit", action="store_true")
    p.add_argument("--list", action="store_true", help="print the subscriptions as JSON lines")
    p.add_argument("--remove", action="store_true", help="remove the subscriber NAME (its topic is kept)")
    p.set_defaults(run=_subscribe)


def _subscribe(args: argparse.Namespace) -> int:
    import json
    import sys

    from gdx.cli import CommandError
    from gdx.common.errors import TransientError
    from gdx.publish.feeds import Subscription, SubscriptionFile, ensure_feed_topic, subscriptions_path
    from gdx.publish.settings import PublishSettings

    settings = PublishSettings.from_env()
    file = SubscriptionFile(subscriptions_path(settings))
    if args.list:
        from gdx.common.topics import TopicCatalog

        topics = TopicCatalog.load(settings.schema_dir, settings.topic_prefix)
        for s in file.load().values():
            print(json.dumps({**s.to_json(), "topic": topics.feed(s.name)}))
        return 0
    if not args.name:
        raise CommandError("a subscriber NAME is needed (or --list)")
    if args.remove:
        file.remove(args.name)
        print(f"removed subscriber {args.name}")
        return 0
    if not args.dataset or not args.purpose:
        raise CommandError("--dataset and --purpose are needed to subscribe")
    subscription = Subscription(args.name, tuple(args.dataset), args.purpose, args.not_for_profit)
    from gdx.common.topics import TopicCatalog

    topics = TopicCatalog.load(settings.schema_dir, settings.topic_prefix)
    try:
        ensure_feed_topic(settings, topics)(subscription.topic)  # the subscriber can start reading right away
    except TransientError as exc:
        # not fatal: the feed worker creates the topic when it picks the subscription up
        print(f"gdx subscribe: note: {exc}; the publish service creates it (on a secured broker, run "
              f"`gdx topics apply --feed {args.name}` as the admin to give the subscriber its user and access)",
              file=sys.stderr)
    added = file.add(subscription)
    print(f"{'subscribed' if added else 'already subscribed'}: {args.name} -> {topics.feed(args.name)}")
    return 0

"""`gdx token`: a development Passport visa."""

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

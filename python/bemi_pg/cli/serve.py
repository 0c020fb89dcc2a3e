"""bemi-pg serve: the web page over the trail (bemi_pg.serve) on uvicorn.

    bemi-pg serve -d app -U bemi_reader [--listen-port 8080] [--allow-revert]

People sign in with their own PostgreSQL role and password; the read-only token (--token, else
one generated and printed here) lets anyone who has it view, as the --dsn role or --token-role.
Binds 127.0.0.1 unless --listen says otherwise: put it behind the application's reverse proxy
(with TLS, and --https-only) to reach it from elsewhere. docs/serve.md.
"""

from __future__ import annotations

import argparse
import os
import secrets

from bemi_pg.cli.connection import source_dsn
from bemi_pg.cli.errors import Failure


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    s = sub.add_parser("serve", help="a web page to browse, compare and revert the trail (docs/serve.md)")
    # -h/-p are the database's, as everywhere in bemi-pg.
    s.add_argument("--listen", default="127.0.0.1", metavar="ADDRESS",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--listen-port", type=int, default=8080, metavar="PORT", help="port to listen on (default 8080)")
    s.add_argument("--allow-revert", action="store_true",
                   help="show the revert forms: signed-in people revert with their own role's privileges (default: off)")
    token = s.add_mutually_exclusive_group()
    token.add_argument("--token", help="the read-only viewing token (default: BEMI_SERVE_TOKEN, else a new one, printed)")
    token.add_argument("--no-token", action="store_true", help="no token viewing: everyone signs in with a role")
    s.add_argument("--token-role", metavar="ROLE",
                   help="token viewers read as this role (SET ROLE), e.g. one with only SELECT on bemi.changes")
    s.add_argument("--root-path", default="", help="the path prefix a reverse proxy serves it under, e.g. /audit")
    s.add_argument("--https-only", action="store_true", help="send the session cookie over HTTPS only (behind TLS)")
    s.set_defaults(run=serve)


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from bemi_pg.serve import Refused, Settings, create_app

    dsn = source_dsn(args)
    given = args.token or os.environ.get("BEMI_SERVE_TOKEN")
    token = None if args.no_token else given or secrets.token_urlsafe(24)
    settings = Settings(dsn=dsn, token=token, token_role=args.token_role, allow_revert=args.allow_revert,
                        https_only=args.https_only)
    try:
        app = create_app(settings)
    except Refused as refused:
        if given or args.token_role:
            raise Failure(str(refused).removeprefix("bemi: ")) from None
        # A generated token only where it is safe; signing in with a role still works.
        print(f"token viewing is off: {str(refused).removeprefix('bemi: ')}", flush=True)
        settings = Settings(dsn=dsn, token=None, allow_revert=args.allow_revert, https_only=args.https_only)
        app = create_app(settings)
    where = f"http://{'[' + args.listen + ']' if ':' in args.listen else args.listen}:{args.listen_port}{args.root_path}"
    if not args.quiet:
        print(f"bemi-pg serve on {where}/ (revert {'on' if args.allow_revert else 'off'}); sign in with a database role", flush=True)
        if settings.token and not given:
            print(f"read-only token: {settings.token}  (or open {where}/signin?token={settings.token})", flush=True)
    uvicorn.run(app, host=args.listen, port=args.listen_port, root_path=args.root_path, log_level="warning" if args.quiet else "info",
                proxy_headers=True)
    return 0

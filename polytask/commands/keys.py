"""``polytask keys create|list|revoke``: API keys for ``polytask serve``, stored hashed in the SQLite store."""

from __future__ import annotations

import json
import time

from polytask.errors import PolytaskError


def register(sub) -> None:
    p = sub.add_parser("keys", help="create, list and revoke API keys for `polytask serve`")
    ksub = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    c = ksub.add_parser("create", help="create a key (printed once; only its hash is stored)")
    c.add_argument("--collection", action="append", default=[], metavar="NAME",
                   help="a collection the key may read and write (repeat for several)")
    c.add_argument("--admin", action="store_true", help="the key sees every collection")
    c.add_argument("--label", default="", help="a note to recognise the key by in `keys list`")
    ls = ksub.add_parser("list", help="list keys (prefixes only)")
    ls.add_argument("--json", action="store_true")
    r = ksub.add_parser("revoke", help="revoke a key by id or prefix (see `keys list`)")
    r.add_argument("key", help="the id, the prefix, or the key itself")
    for q in (c, ls, r):
        q.add_argument("--store", default=None, help="SQLite store file (default: $POLYTASK_HOME/store.sqlite)")
    p.set_defaults(func=run)


def run(args) -> int:
    from polytask.serve.keys import KeyStore

    keys = KeyStore(args.store)
    if args.keys_command == "create":
        if not args.collection and not args.admin:
            raise PolytaskError("give --collection NAME (repeatable) or --admin")
        key, rec = keys.create(args.collection, admin=args.admin, label=args.label)
        scope = "all collections (admin)" if rec.admin else ", ".join(rec.collections)
        print(key)
        print(f"key {rec.id} ({rec.prefix}...) for {scope}; shown once, store it now", flush=True)
        return 0
    if args.keys_command == "list":
        rows = keys.list()
        if args.json:
            print(json.dumps([k.to_dict() for k in rows]))
            return 0
        if not rows:
            print("no keys; create one with: polytask keys create --collection NAME")
        for k in rows:
            scope = "admin" if k.admin else ",".join(k.collections)
            state = "revoked" if k.revoked_at else "active"
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(k.created_at))
            print(f"{k.id:>4}  {k.prefix}...  {state:<7}  {when}  {scope}  {k.label}")
        return 0
    rec = keys.revoke(args.key)
    print(f"revoked key {rec.id} ({rec.prefix}...)")
    return 0

"""``polytask index add|list|remove``: the document store.

``add`` takes files and folders (searched recursively for supported types). Each file is
its own transaction: when several are given, a file that cannot be read is skipped with a
warning naming it, the others are indexed, and the exit code is 2 if any failed (with a
count on the last line). A single bad file is a plain error: one line, exit 2, store unchanged.

A file uploaded through ``polytask serve`` is listed, and removed, by the name it was uploaded
under (its bytes are polytask's copy in the uploads folder, deleted with the document).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from polytask.errors import PolytaskError
from polytask.store import DEFAULT_COLLECTION, MAX_FILE_BYTES, DocStore
from polytask.store.parsers import SUFFIX_KIND


def add_store_arg(p) -> None:
    p.add_argument("--store", default=None, help="SQLite store file (default: $POLYTASK_HOME/store.sqlite)")


def register(sub) -> None:
    p = sub.add_parser("index", help="add, list and remove documents in the document store")
    isub = p.add_subparsers(dest="index_command", metavar="ACTION", required=True)

    a = isub.add_parser("add", help="index files (.txt .md .html .docx .pdf .eml) or folders of them")
    a.add_argument("paths", nargs="+", metavar="PATH")
    a.add_argument("--collection", default=DEFAULT_COLLECTION, help="collection name (default: %(default)s)")
    a.add_argument("--max-mb", type=float, default=MAX_FILE_BYTES / 2**20,
                   help="refuse files larger than this many MiB (default: %(default)g)")
    a.add_argument("--json", action="store_true", help="print one JSON object")
    add_store_arg(a)

    ls = isub.add_parser("list", help="list indexed documents")
    ls.add_argument("--collection", default=None)
    ls.add_argument("--json", action="store_true")
    add_store_arg(ls)

    rm = isub.add_parser("remove", help="remove files (or uploads, by the name `list` shows), or a whole collection")
    rm.add_argument("paths", nargs="*", metavar="PATH", help="a file's path, or an uploaded document's name")
    rm.add_argument("--collection", default=None, help="only from this collection; alone: remove the collection")
    add_store_arg(rm)
    p.set_defaults(func=run)


def expand(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIX_KIND)
            if not found:
                raise PolytaskError(f"{p}: folder has no supported files ({', '.join(sorted(SUFFIX_KIND))})")
            files.extend(found)
        else:
            files.append(p)
    return files


def run(args) -> int:
    with DocStore(args.store) as store:
        return {"add": run_add, "list": run_list, "remove": run_remove}[args.index_command](args, store)


def run_add(args, store: DocStore) -> int:
    files = expand(args.paths)
    max_bytes = int(args.max_mb * 2**20)
    if len(files) == 1:
        results, failed = [store.add(files[0], args.collection, max_bytes)], []
    else:
        results, failed = [], []
        for f in files:
            try:
                results.append(store.add(f, args.collection, max_bytes))
            except PolytaskError as e:
                failed.append({"path": str(f), "error": str(e)})
                print(f"polytask index add: warning: skipped {e}", file=sys.stderr)
    counts = {s: sum(r.status == s for r in results) for s in ("added", "updated", "unchanged")}
    if args.json:
        print(json.dumps({"collection": args.collection, "store": str(store.path), **counts, "failed": failed,
                          "documents": [r.__dict__ for r in results]}))
    else:
        for r in results:
            print(f"{r.status:9s} {r.passages:4d} passages  {r.path}")
        print(f"collection {args.collection!r}: {counts['added']} added, {counts['updated']} updated, "
              f"{counts['unchanged']} unchanged, {len(failed)} failed")
    if failed:
        print(f"polytask index add: error: {len(failed)} of {len(files)} files could not be indexed", file=sys.stderr)
        return 2
    return 0


def run_list(args, store: DocStore) -> int:
    docs = store.documents(args.collection)
    uploads = store.upload_names()
    if args.json:  # "name": what `remove` takes, the uploaded name or the path
        print(json.dumps({"store": str(store.path), "documents": [
            {**d.__dict__, "name": uploads.get(d.path, d.path), "uploaded": d.path in uploads} for d in docs]}))
        return 0
    if not docs:
        print(f"no documents in {store.path}" + (f" collection {args.collection!r}" if args.collection else ""))
        return 0
    for d in docs:
        shown = f"{uploads[d.path]}  (uploaded)" if d.path in uploads else d.path
        print(f"{d.collection:12s} {d.kind:4s} {d.pages:4d}p {d.passages:5d} passages  {shown}")
    return 0


def run_remove(args, store: DocStore) -> int:
    if not args.paths:
        if not args.collection:
            raise PolytaskError("give files to remove, or --collection NAME to remove a whole collection")
        n = store.remove_collection(args.collection)
        print(f"removed collection {args.collection!r} ({n} documents)")
        return 0
    for p in args.paths:
        n = store.remove(p, args.collection)
        print(f"removed {p} ({n} document{'s' * (n != 1)})")
    return 0

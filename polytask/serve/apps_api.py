"""HTTP endpoints for the applications: collections and documents, ask, summaries, replies, the agent.

Thin wrappers: each handler checks the key's access, opens the store and calls the
application's own Python function with one of the server's ``LM``s (the base model, or the
adapter's for ask and replies), whose engine is that model's batching scheduler. A collection
the key may not see answers 404, exactly like one that does not exist, so a key cannot even
learn which other collections there are.
"""

import hashlib
import os
import threading
from collections import OrderedDict
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, File, HTTPException, Query, UploadFile
from pydantic import BaseModel, Field

from polytask.errors import PolytaskError
from polytask.serve.auth import Key
from polytask.serve.keys import COLLECTION_NAME, ApiKey
from polytask.serve.records import display_name, upload_path
from polytask.serve.state import ServeState
from polytask.store import DocStore
from polytask.store.parsers import SUFFIX_KIND

MAX_CONVERSATIONS = 1000  # agent conversations kept in memory; the oldest go first


class AskBody(BaseModel):
    question: str = Field(min_length=1, max_length=2000)


class MessageBody(BaseModel):
    text: str = Field(min_length=1, max_length=4000)


class ReplyBody(BaseModel):
    email: str = Field(min_length=1, max_length=100_000, description="the message, optionally with its headers")
    n: int = Field(default=3, ge=1, le=5, description="how many replies, each with a different intent")
    always: bool = Field(default=False, description="suggest replies even when none seems needed")


def add_app_routes(app: FastAPI, state: ServeState) -> None:
    def collection_for(key: ApiKey, name: str) -> str:
        if not COLLECTION_NAME.match(name) or not key.can_see(name):
            raise HTTPException(404, f"collection {name!r} not found")
        return name

    def open_store() -> DocStore:
        return DocStore(state.store_path)

    def shown_name(path: str, names: dict[str, str]) -> str:
        # Clients never see server paths: an upload shows its name, an indexed file its base name.
        return names.get(path) or Path(path).name

    def doc_or_404(db: DocStore, collection: str, doc_id: int):
        for d in db.documents(collection):
            if d.id == doc_id:
                return d
        raise HTTPException(404, f"document {doc_id} not found in collection {collection!r}")

    def doc_json(d, names: dict[str, str]) -> dict:
        return {"id": d.id, "name": shown_name(d.path, names), "title": d.title, "kind": d.kind, "pages": d.pages,
                "passages": d.passages}

    # -- collections and documents ------------------------------------------------------------------
    @app.get("/api/collections", tags=["documents"])
    def list_collections(key: Key) -> dict:
        with open_store() as db:
            docs = db.documents()
        counts: dict[str, int] = {}
        for d in docs:
            counts[d.collection] = counts.get(d.collection, 0) + 1
        names = set(key.collections) | ({c for c in counts if COLLECTION_NAME.match(c)} if key.admin else set())
        return {"collections": [{"name": c, "documents": counts.get(c, 0)} for c in sorted(names)]}

    @app.get("/api/collections/{collection}/documents", tags=["documents"])
    def list_documents(collection: str, key: Key) -> dict:
        collection = collection_for(key, collection)
        with open_store() as db:
            names = db.upload_names()
            return {"collection": collection, "documents": [doc_json(d, names) for d in db.documents(collection)]}

    @app.post("/api/collections/{collection}/documents", tags=["documents"], status_code=201)
    def upload_document(collection: str, key: Key, file: UploadFile = File(...)) -> dict:  # noqa: B008
        collection = collection_for(key, collection)
        name = display_name(file.filename)
        suffix = Path(name).suffix.lower()
        if suffix not in SUFFIX_KIND:
            raise HTTPException(415, f"{name}: unsupported file type {suffix or '(none)'}; "
                                     f"upload one of {', '.join(sorted(SUFFIX_KIND))}")
        data = file.file.read(state.max_upload_bytes + 1)
        if len(data) > state.max_upload_bytes:
            raise HTTPException(413, f"{name}: larger than the upload limit of {state.max_upload_bytes} bytes")
        dest = upload_path(state.uploads_dir, collection, name, suffix)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{hashlib.sha256(data).hexdigest()[:8]}.tmp")
        previous = dest.read_bytes() if dest.exists() else None
        tmp.write_bytes(data)
        os.replace(tmp, dest)
        try:
            with open_store() as db:
                result = db.add(dest, collection, max_bytes=state.max_upload_bytes)
        except BaseException as e:
            # The store is unchanged (one transaction); put the file back as it was.
            if previous is None:
                dest.unlink(missing_ok=True)
            else:
                dest.write_bytes(previous)
            if isinstance(e, PolytaskError):  # about the file: name it as the client did, not by our path
                raise PolytaskError(str(e).replace(str(dest), name)) from None
            raise
        with open_store() as db:
            db.add_upload(dest, collection, name, len(data))
        return {"id": result.doc_id, "name": name, "status": result.status, "passages": result.passages}

    @app.delete("/api/collections/{collection}/documents/{doc_id}", tags=["documents"])
    def delete_document(collection: str, doc_id: int, key: Key) -> dict:
        collection = collection_for(key, collection)
        with open_store() as db:
            d = doc_or_404(db, collection, doc_id)
            db.remove(d.path, collection)  # an upload's copy goes with it
        return {"deleted": doc_id}

    @app.delete("/api/collections/{collection}", tags=["documents"])
    def delete_collection(collection: str, key: Key) -> dict:
        collection = collection_for(key, collection)
        with open_store() as db:
            docs = db.documents(collection)
            if docs:
                db.remove_collection(collection)  # uploads' copies go with it
        return {"collection": collection, "deleted": len(docs)}

    # -- ask ----------------------------------------------------------------------------------------
    @app.post("/api/collections/{collection}/ask", tags=["apps"])
    def ask_collection(collection: str, body: AskBody, key: Key) -> dict:
        collection = collection_for(key, collection)
        from polytask.apps.ask import ask

        with open_store() as db:
            answer = ask(body.question, collection=collection, store=db, lm=state.task_lm).to_dict()
            names = db.upload_names()
        for item in answer["sources"] + answer["retrieved"]:
            item["file"] = shown_name(item["file"], names)
        return answer

    # -- summaries ----------------------------------------------------------------------------------
    @app.get("/api/collections/{collection}/documents/{doc_id}/summary", tags=["apps"])
    def document_summary(collection: str, doc_id: int, key: Key,
                         length: str = Query("short", pattern="^(short|medium|long)$")) -> dict:
        collection = collection_for(key, collection)
        from polytask.apps.summarize import summarize

        with open_store() as db:
            d = doc_or_404(db, collection, doc_id)
            text = db.document_text(d.id)
        digest = hashlib.sha256(text.encode()).hexdigest()
        cached = state.records.summary(digest, length)
        if cached is None:
            cached = summarize(d.path, length, lm=state.base.lm, chat_lm=lambda: state.task_lm).text
            state.records.save_summary(digest, length, cached)
        return {"id": doc_id, "length": length, "summary": cached}

    # -- suggested replies --------------------------------------------------------------------------
    @app.post("/api/reply", tags=["apps"])
    def suggest_replies(body: ReplyBody, key: Key) -> dict:
        from polytask.apps.reply import reply
        from polytask.store.parsers import email_from_text

        mail = email_from_text(body.email, Path("the pasted e-mail"))
        if not mail.body and not mail.subject:
            raise HTTPException(422, "email: the pasted e-mail has no text")
        out = reply(mail, body.n, lm=state.task_lm, always=body.always)
        return {"needs_reply": out.needs_reply, "reason": out.reason, "subject": out.subject,
                "replies": [{"intent": r.intent, "text": r.text} for r in out.replies]}

    # -- the virtual agent ----------------------------------------------------------------------------
    # Conversations live in memory (the agent's turn state) and in the store (messages, hand-offs).
    # Each request lends the agent a store connection of its own thread (SQLite connections are per thread).
    agents: OrderedDict[str, tuple[threading.Lock, object]] = OrderedDict()
    agents_lock = threading.Lock()
    kb_cache: dict = {}

    def knowledge_base():
        from polytask.apps.agent import load_kb

        if "kb" not in kb_cache:
            kb_cache["kb"] = load_kb(state.kb_dir or files("polytask") / "assets" / "kb")
        return kb_cache["kb"]

    def conversation_or_404(key: ApiKey, conversation_id: str):
        owner = state.records.conversation_owner(conversation_id)
        with agents_lock:
            entry = agents.get(conversation_id)
            if entry is not None:
                agents.move_to_end(conversation_id)
        if owner is None or entry is None or (owner != key.id and not key.admin):
            raise HTTPException(404, f"conversation {conversation_id!r} not found")
        return entry

    @app.post("/api/agent/conversations", tags=["apps"], status_code=201)
    def start_conversation(key: Key) -> dict:
        from polytask.apps.agent import Agent

        with open_store() as db:
            agent = Agent(knowledge_base(), store=db)
        agent.store = None  # lent per request
        state.records.own_conversation(agent.id, key.id)
        with agents_lock:
            agents[agent.id] = (threading.Lock(), agent)
            while len(agents) > MAX_CONVERSATIONS:
                agents.popitem(last=False)
        return {"id": agent.id, "greeting": agent.greeting()}

    @app.post("/api/agent/conversations/{conversation_id}/messages", tags=["apps"])
    def agent_message(conversation_id: str, body: MessageBody, key: Key) -> dict:
        lock, agent = conversation_or_404(key, conversation_id)
        with lock, open_store() as db:
            agent.store = db
            try:
                turn = agent.respond(body.text)
            finally:
                agent.store = None
        return {"reply": turn.text, "action": turn.action, "intent": turn.intent, "confidence": turn.confidence,
                "article": turn.article, "handoff": turn.action == "handoff",
                "handoff_id": (turn.handoff or {}).get("handoff_id")}

    @app.get("/api/agent/conversations/{conversation_id}", tags=["apps"])
    def get_conversation(conversation_id: str, key: Key) -> dict:
        lock, agent = conversation_or_404(key, conversation_id)
        with lock:
            return {"id": agent.id, "closed": agent.closed, "transcript": list(agent.transcript)}

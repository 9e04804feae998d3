// polytask web page: plain JS over the JSON API; no external assets, so it works offline.
"use strict";

const $ = (sel) => document.querySelector(sel);
let apiKey = "";
let session = 0;  // bumped by every key change; a response that arrives for an older key is dropped
let conversationId = null;

// A response to a request made under an earlier key: what it holds belongs to that key, so it
// must not reach the screen that was cleared for the new one.
class StaleResponse extends Error {}

function setStatus(text, isError = false) {
  const el = $("#status");
  el.textContent = text;
  el.className = isError ? "error" : "";
}

async function api(method, path, body) {
  const requestedIn = session;
  const opts = { method, headers: { Authorization: `Bearer ${apiKey}` } };
  if (body instanceof FormData) {
    opts.body = body;
  } else if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  const data = r.headers.get("content-type")?.includes("json") ? await r.json() : await r.text();
  if (requestedIn !== session) throw new StaleResponse("the API key changed");
  if (!r.ok) {
    const msg = (data && data.error && data.error.message) || `${r.status} ${r.statusText}`;
    throw new Error(msg);
  }
  return data;
}

function reportError(e) {
  if (!(e instanceof StaleResponse)) setStatus(e.message, true);
}

async function busy(button, work) {
  button.disabled = true;
  try {
    await work();
  } catch (e) {
    reportError(e);
  } finally {
    button.disabled = false;
  }
}

const collection = () => $("#collection").value;

// ---------------------------------------------------------------------------- key and collections
// Everything on the screen came through the previous key: a new key, right or wrong, starts from nothing.
function clearScreen() {
  conversationId = null;
  summaries.clear();
  pendingSummaries.clear();
  hovered = null;
  renderCard();
  $("#collection").replaceChildren();
  $("#doc-list").replaceChildren();
  $("#answer").textContent = "";
  $("#answer").className = "";
  $("#sources").replaceChildren();
  $("#reply-verdict").textContent = "";
  $("#reply-hint").hidden = true;
  $("#replies").replaceChildren();
  $("#copied").textContent = "";
  $("#agent-log").replaceChildren();
}

async function useKey(key) {
  session += 1;
  apiKey = key.trim();
  clearScreen();
  setStatus("checking the key…");
  const data = await api("GET", "/api/collections");
  localStorage.setItem("polytask-key", apiKey);  // only a key the server accepted
  const select = $("#collection");
  select.replaceChildren(...data.collections.map((c) => new Option(`${c.name} (${c.documents})`, c.name)));
  setStatus(data.collections.length ? "ready" : "this key has no collections");
  await Promise.all([loadDocuments(), startConversation()]);
}

// ---------------------------------------------------------------------------- documents
async function loadDocuments() {
  const shown = collection();
  if (!shown) return;
  const data = await api("GET", `/api/collections/${encodeURIComponent(shown)}/documents`);
  if (shown !== collection()) return;  // another collection was chosen meanwhile; its own load fills the list
  const option = $("#collection").selectedOptions[0];
  if (option) option.textContent = `${shown} (${data.documents.length})`;
  const items = data.documents.map((d) => {
    const li = document.createElement("li");
    li.dataset.docId = d.id;
    li.tabIndex = 0;  // the summary card also opens from the keyboard
    li.textContent = d.name;
    const meta = document.createElement("span");
    meta.className = "meta";
    const ownTitle = d.title && ![d.name, d.name.replace(/\.[^.]+$/, "")].includes(d.title);  // not just the file name
    meta.textContent = `${ownTitle ? d.title + " · " : ""}${d.passages} passages`;
    li.append(meta);
    const summary = summaries.get(`${shown}/${d.id}`);
    if (summary?.text) li.title = summary.text;
    li.addEventListener("mouseenter", () => hoverDocument(li, d.id));
    li.addEventListener("focus", () => hoverDocument(li, d.id));
    li.addEventListener("mouseleave", () => leaveDocument(li));
    li.addEventListener("blur", () => leaveDocument(li));
    return li;
  });
  hovered = null;  // its list item is about to go
  renderCard();
  $("#doc-list").replaceChildren(...items);
}

// ---------------------------------------------------------------------------- hover summaries
// The card is drawn from state alone (which document is hovered, which summaries have arrived)
// and redrawn whenever either changes. Responses may arrive in any order, for a document hovered
// long ago or twice; none of them writes to the card directly, so none can leave it stale.
const summaries = new Map();  // "collection/docId" -> {text} or {error}, once its request is done
const pendingSummaries = new Map();  // "collection/docId" -> the one request in flight for it
let hovered = null;  // {key, li}: the document the pointer (or focus) is on

function renderCard() {
  const card = $("#summary-card");
  card.hidden = !hovered;
  if (!hovered) return;
  const s = summaries.get(hovered.key);
  card.textContent = !s ? "Summarizing…" : s.error ? `No summary: ${s.error}` : s.text;
  card.style.top = `${hovered.li.offsetTop + hovered.li.offsetHeight}px`;
}

function hoverDocument(li, docId) {
  const key = `${collection()}/${docId}`;
  hovered = { key, li };
  if (summaries.get(key)?.error) summaries.delete(key);  // a failed summary is tried again
  if (!summaries.has(key) && !pendingSummaries.has(key)) {
    const path = `/api/collections/${encodeURIComponent(collection())}/documents/${docId}/summary`;
    const request = api("GET", path)
      .then((data) => {
        summaries.set(key, { text: data.summary });
        li.title = data.summary;
      }, (e) => {
        if (!(e instanceof StaleResponse)) summaries.set(key, { error: e.message });
      })
      .finally(() => {
        if (pendingSummaries.get(key) === request) pendingSummaries.delete(key);
        renderCard();
      });
    pendingSummaries.set(key, request);
  }
  renderCard();
}

function leaveDocument(li) {
  if (hovered?.li !== li) return;
  hovered = null;
  renderCard();
}

$("#upload-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const file = $("#file").files[0];
  if (!file) return setStatus("choose a file first", true);
  busy($("#upload-btn"), async () => {
    const form = new FormData();
    form.append("file", file);
    setStatus(`uploading ${file.name}…`);
    const r = await api("POST", `/api/collections/${encodeURIComponent(collection())}/documents`, form);
    setStatus(`${r.name}: ${r.status}, ${r.passages} passages`);
    $("#file").value = "";
    await loadDocuments();
  });
});

// ---------------------------------------------------------------------------- ask
$("#ask-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const question = $("#question").value.trim();
  if (!question) return;
  busy($("#ask-btn"), async () => {
    $("#answer").textContent = "Thinking…";
    $("#sources").replaceChildren();
    const a = await api("POST", `/api/collections/${encodeURIComponent(collection())}/ask`, { question })
      .catch((e) => { $("#answer").textContent = ""; throw e; });  // the status line says why
    // A declined question is said plainly, with no source list: there is nothing to quote.
    $("#answer").textContent = a.text;
    $("#answer").className = a.found ? "found" : "notfound";
    if (a.found) {
      const sure = document.createElement("span");
      sure.className = "confidence";
      sure.textContent = ` (confidence ${Math.round(a.confidence * 100)}%)`;
      $("#answer").append(sure);
    }
    for (const s of a.sources) {
      const li = document.createElement("li");
      const where = document.createElement("div");
      where.className = "where";
      where.textContent = [s.file, s.location, s.page ? `page ${s.page}` : ""].filter(Boolean).join(" · ");
      const quote = document.createElement("blockquote");
      quote.textContent = s.quote;
      li.append(where, quote);
      $("#sources").append(li);
    }
    setStatus(a.found ? "answered" : "not in the documents");
  });
});

// ---------------------------------------------------------------------------- suggested replies
async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // No clipboard permission (plain http on another host): copy through a selected textarea.
    const ta = document.createElement("textarea");
    ta.value = text;
    document.body.append(ta);
    ta.select();
    document.execCommand("copy");
    ta.remove();
  }
}

$("#reply-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const email = $("#email").value;
  if (!email.trim()) return;
  busy($("#reply-btn"), async () => {
    $("#replies").replaceChildren();
    $("#copied").textContent = "";
    $("#reply-hint").hidden = true;
    $("#reply-verdict").textContent = "Reading…";
    const r = await api("POST", "/api/reply", { email, n: 3 })
      .catch((e) => { $("#reply-verdict").textContent = ""; throw e; });
    // Why, in the CLI's words ("Reply needed: asks: Could we meet on Thursday?").
    $("#reply-verdict").textContent = `${r.needs_reply ? "Reply needed" : "No reply needed"}: ${r.reason}`;
    $("#reply-hint").hidden = !r.replies.length;
    for (const s of r.replies) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "reply";
      b.dataset.text = s.text;
      const intent = document.createElement("span");
      intent.className = "intent";
      intent.textContent = s.intent ? `${s.intent}:` : "";
      b.append(intent, document.createTextNode(s.text));
      b.addEventListener("click", async () => {
        await copyText(s.text);
        $("#copied").textContent = `Copied: ${s.text}`;
      });
      $("#replies").append(b);
    }
  });
});

// ---------------------------------------------------------------------------- agent
function addMessage(role, text, extra) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  div.textContent = text;
  if (extra) {
    const cite = document.createElement("span");
    cite.className = "cite";
    cite.textContent = extra;
    div.append(cite);
  }
  $("#agent-log").append(div);
  $("#agent-log").scrollTop = $("#agent-log").scrollHeight;
  return div;
}

// The greeting is the conversation's first message: shown when the panel opens, before anyone writes.
async function startConversation() {
  const c = await api("POST", "/api/agent/conversations");
  conversationId = c.id;
  $("#agent-log").replaceChildren();
  addMessage("agent greeting", c.greeting);
}

$("#agent-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("#agent-input").value.trim();
  if (!text) return;
  busy($("#agent-send"), async () => {
    if (!conversationId) await startConversation();  // its start failed when the key was given
    addMessage("user", text);
    $("#agent-input").value = "";
    const r = await api("POST", `/api/agent/conversations/${conversationId}/messages`, { text });
    const notes = [r.intent ? `intent: ${r.intent.replaceAll("_", " ")}` : "",
                   r.handoff ? `handed over to a person (#${r.handoff_id})` : ""].filter(Boolean).join(" · ");
    const div = addMessage("agent", r.reply, notes);
    if (r.handoff) div.classList.add("handoff");
  });
});

// ---------------------------------------------------------------------------- start
$("#key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  busy($("#key-btn"), () => useKey($("#key").value));
});
$("#collection").addEventListener("change", () => loadDocuments().catch(reportError));

(function start() {
  const fromUrl = new URLSearchParams(location.hash.slice(1)).get("key");
  if (fromUrl) history.replaceState(null, "", location.pathname);  // keep the key out of the address bar
  const key = fromUrl || localStorage.getItem("polytask-key");
  if (key) {
    $("#key").value = key;
    useKey(key).catch(reportError);
  } else {
    setStatus("enter an API key (polytask keys create --collection NAME)");
  }
})();

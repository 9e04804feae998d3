// polytask web page: plain JS over the JSON API; no external assets, so it works offline.
"use strict";

const $ = (sel) => document.querySelector(sel);
let apiKey = "";
let conversationId = null;
const summaries = new Map();  // "collection/docId" -> summary text

function setStatus(text, isError = false) {
  const el = $("#status");
  el.textContent = text;
  el.className = isError ? "error" : "";
}

async function api(method, path, body) {
  const opts = { method, headers: { Authorization: `Bearer ${apiKey}` } };
  if (body instanceof FormData) {
    opts.body = body;
  } else if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  const data = r.headers.get("content-type")?.includes("json") ? await r.json() : await r.text();
  if (!r.ok) {
    const msg = (data && data.error && data.error.message) || `${r.status} ${r.statusText}`;
    throw new Error(msg);
  }
  return data;
}

async function busy(button, work) {
  button.disabled = true;
  try {
    await work();
  } catch (e) {
    setStatus(e.message, true);
  } finally {
    button.disabled = false;
  }
}

const collection = () => $("#collection").value;

// ---------------------------------------------------------------------------- key and collections
async function useKey(key) {
  apiKey = key.trim();
  localStorage.setItem("polytask-key", apiKey);
  const data = await api("GET", "/api/collections");
  const select = $("#collection");
  select.replaceChildren(...data.collections.map((c) => new Option(`${c.name} (${c.documents})`, c.name)));
  setStatus(data.collections.length ? "ready" : "this key has no collections");
  await loadDocuments();
}

// ---------------------------------------------------------------------------- documents
async function loadDocuments() {
  const list = $("#doc-list");
  list.replaceChildren();
  if (!collection()) return;
  const data = await api("GET", `/api/collections/${encodeURIComponent(collection())}/documents`);
  const option = $("#collection").selectedOptions[0];
  if (option) option.textContent = `${collection()} (${data.documents.length})`;
  for (const d of data.documents) {
    const li = document.createElement("li");
    li.dataset.docId = d.id;
    li.textContent = d.name;
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = `${d.title && d.title !== d.name ? d.title + " · " : ""}${d.passages} passages`;
    li.append(meta);
    li.addEventListener("mouseenter", () => showSummary(li, d.id));
    li.addEventListener("mouseleave", () => { $("#summary-card").hidden = true; });
    list.append(li);
  }
}

async function showSummary(li, docId) {
  const card = $("#summary-card");
  const cacheKey = `${collection()}/${docId}`;
  card.style.top = `${li.offsetTop + li.offsetHeight}px`;
  card.style.left = `${li.offsetLeft + 20}px`;
  card.hidden = false;
  card.dataset.docId = docId;
  if (summaries.has(cacheKey)) {
    card.textContent = summaries.get(cacheKey);
    return;
  }
  card.textContent = "Summarizing…";
  try {
    const data = await api("GET", `/api/collections/${encodeURIComponent(collection())}/documents/${docId}/summary`);
    summaries.set(cacheKey, data.summary);
    li.title = data.summary;
    if (card.dataset.docId === String(docId)) card.textContent = data.summary;
  } catch (e) {
    card.textContent = `No summary: ${e.message}`;
  }
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
    const a = await api("POST", `/api/collections/${encodeURIComponent(collection())}/ask`, { question });
    $("#answer").textContent = a.text;
    $("#answer").className = a.found ? "found" : "notfound";
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
    setStatus("answered");
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
    $("#reply-verdict").textContent = "Reading…";
    const r = await api("POST", "/api/reply", { email, n: 3 });
    $("#reply-verdict").textContent = r.needs_reply ? "Suggested replies (click to copy):" : `No reply needed. ${r.reason || ""}`;
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

$("#agent-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("#agent-input").value.trim();
  if (!text) return;
  busy($("#agent-send"), async () => {
    if (!conversationId) {
      const c = await api("POST", "/api/agent/conversations");
      conversationId = c.id;
      addMessage("agent greeting", c.greeting);
    }
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
$("#collection").addEventListener("change", () => loadDocuments().catch((e) => setStatus(e.message, true)));

(function start() {
  const fromUrl = new URLSearchParams(location.hash.slice(1)).get("key");
  if (fromUrl) history.replaceState(null, "", location.pathname);  // keep the key out of the address bar
  const key = fromUrl || localStorage.getItem("polytask-key");
  if (key) {
    $("#key").value = key;
    useKey(key).catch((e) => setStatus(e.message, true));
  } else {
    setStatus("enter an API key (polytask keys create --collection NAME)");
  }
})();

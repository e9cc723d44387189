// The console's chat client: channels, threads, buttons and live updates over server-sent
// events. Every piece of text is inserted as text, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { users: [], channels: [], channel: null, thread: null };

function clientId() {
  return (crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random().toString(16).slice(2)).replace(/[^a-zA-Z0-9-]/g, "");
}

function user() { return $("user").value; }

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: body ? { "content-type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
    credentials: "same-origin",
  });
  let data = null;
  try { data = await res.json(); } catch (_) { data = null; }
  if (!res.ok) throw new Error((data && data.error) || res.statusText);
  return data;
}

// Renders the small markup subset the bot uses: *bold*, `code` and @mentions.
function formatInto(el, text) {
  const re = /(\*[^*\n]+\*|`[^`\n]+`|@[a-z0-9_.-]+)/gi;
  let last = 0;
  for (const m of text.matchAll(re)) {
    if (m.index > last) el.append(document.createTextNode(text.slice(last, m.index)));
    const tok = m[0];
    let node;
    if (tok.startsWith("*")) { node = document.createElement("strong"); node.textContent = tok.slice(1, -1); }
    else if (tok.startsWith("`")) { node = document.createElement("code"); node.textContent = tok.slice(1, -1); }
    else { node = document.createElement("span"); node.className = "mention"; node.textContent = tok; }
    el.append(node);
    last = m.index + tok.length;
  }
  if (last < text.length) el.append(document.createTextNode(text.slice(last)));
}

function renderMessage(m, inThread) {
  const el = document.createElement("div");
  el.className = "msg" + (m.is_bot ? " bot" : "");
  el.dataset.id = m.id;
  const meta = document.createElement("div");
  meta.className = "meta";
  const author = document.createElement("span");
  author.className = "author";
  author.textContent = m.author;
  const time = document.createElement("time");
  time.dateTime = m.created_at;
  time.textContent = new Date(m.created_at).toLocaleTimeString();
  meta.append(author, time);
  if (m.updated_at !== m.created_at) meta.append(document.createTextNode(" (edited)"));
  const text = document.createElement("div");
  text.className = "text";
  formatInto(text, m.message.text || "");
  el.append(meta, text);
  if (m.message.detail) {
    const pre = document.createElement("pre");
    pre.textContent = m.message.detail;
    el.append(pre);
  }
  const buttons = m.message.buttons || [];
  if (buttons.length) {
    const row = document.createElement("div");
    row.className = "buttons";
    for (const b of buttons) {
      const btn = document.createElement("button");
      btn.type = "button";
      btn.className = "btn " + b.style;
      btn.textContent = b.label;
      btn.dataset.action = b.action;
      btn.addEventListener("click", () => click(m, b, inThread));
      row.append(btn);
    }
    el.append(row);
  }
  if (!inThread && m.replies > 0) {
    const link = document.createElement("a");
    link.className = "replies";
    link.textContent = m.replies + (m.replies === 1 ? " reply" : " replies");
    link.href = "#" + m.channel + "/" + m.id;
    link.addEventListener("click", (e) => { e.preventDefault(); openThread(m.id); });
    el.append(link);
  }
  return el;
}

function upsert(container, m, inThread) {
  const el = renderMessage(m, inThread);
  const old = container.querySelector(`.msg[data-id="${m.id}"]`);
  if (old) { old.replaceWith(el); return; }
  const atBottom = container.scrollHeight - container.scrollTop - container.clientHeight < 40;
  container.append(el);
  if (atBottom) container.scrollTop = container.scrollHeight;
}

function notice(where, text, isError) {
  const n = document.createElement("div");
  n.className = "notice" + (isError ? " error" : "");
  const only = document.createElement("span");
  only.className = "only";
  only.textContent = isError ? "Error" : "Only visible to you";
  const body = document.createElement("span");
  body.textContent = text;
  n.append(only, body);
  $(where).append(n);
  setTimeout(() => n.remove(), 20000);
}

// Asks for text in a small form (a reason, an edited payload); resolves to null on Cancel.
function ask(question, prefill) {
  return new Promise((resolve) => {
    const dialog = document.createElement("dialog");
    dialog.className = "ask";
    const form = document.createElement("form");
    form.method = "dialog";
    const label = document.createElement("label");
    label.textContent = question;
    const text = document.createElement("textarea");
    text.name = "text";
    text.rows = prefill ? 10 : 4;
    text.maxLength = 4000;
    text.value = prefill || "";
    label.append(text);
    const ok = document.createElement("button");
    ok.value = "ok";
    ok.textContent = "Send";
    const cancel = document.createElement("button");
    cancel.value = "cancel";
    cancel.textContent = "Cancel";
    form.append(label, ok, cancel);
    dialog.append(form);
    document.body.append(dialog);
    dialog.addEventListener("close", () => {
      const answer = dialog.returnValue === "ok" ? text.value : null;
      dialog.remove();
      resolve(answer);
    });
    dialog.showModal();
    text.focus();
  });
}

async function click(m, b, inThread) {
  const where = inThread ? "thread-notices" : "notices";
  let reason = null;
  if (b.prompt) {
    reason = await ask(b.prompt, b.prefill);
    if (reason === null) return;
  }
  try {
    const res = await api("POST", "/api/actions", { user: user(), message_id: m.id, action: b.action, reason, client_id: clientId() });
    for (const t of res.notices || []) notice(where, t);
  } catch (e) { notice(where, e.message, true); }
}

async function send(text, thread) {
  const where = thread ? "thread-notices" : "notices";
  try {
    const res = await api("POST", "/api/messages", { channel: state.channel, user: user(), text, thread_id: thread, client_id: clientId() });
    for (const t of res.notices || []) notice(where, t);
  } catch (e) { notice(where, e.message, true); }
}

async function openChannel(name) {
  state.channel = name;
  $("channel-name").textContent = "#" + name;
  for (const a of document.querySelectorAll("#channels a")) a.classList.toggle("active", a.dataset.channel === name);
  const list = $("messages");
  list.replaceChildren();
  const messages = await api("GET", `/api/channels/${encodeURIComponent(name)}/messages`);
  for (const m of messages) upsert(list, m, false);
  list.scrollTop = list.scrollHeight;
  if (!state.thread) history.replaceState(null, "", "#" + name);
}

async function openThread(id) {
  state.thread = id;
  $("thread").hidden = false;
  const list = $("thread-messages");
  list.replaceChildren();
  const messages = await api("GET", `/api/threads/${id}`);
  for (const m of messages) upsert(list, m, true);
  history.replaceState(null, "", "#" + state.channel + "/" + id);
}

function closeThread() {
  state.thread = null;
  $("thread").hidden = true;
  history.replaceState(null, "", "#" + state.channel);
}

function connect() {
  const es = new EventSource("/api/stream");
  es.onopen = () => $("live").classList.add("on");
  es.onerror = () => $("live").classList.remove("on");
  es.addEventListener("message", (e) => {
    const m = JSON.parse(e.data);
    if (m.channel === state.channel && m.thread_id === null) upsert($("messages"), m, false);
    if (state.thread !== null && (m.id === state.thread || m.thread_id === state.thread)) upsert($("thread-messages"), m, true);
  });
  es.addEventListener("resync", () => {
    openChannel(state.channel);
    if (state.thread !== null) openThread(state.thread);
  });
}

async function main() {
  const info = await api("GET", "/api/state");
  state.users = info.users;
  state.channels = info.channels;
  const picker = $("user");
  for (const u of info.users) {
    const o = document.createElement("option");
    o.value = u; o.textContent = "@" + u;
    picker.append(o);
  }
  const saved = localStorage.getItem("baton.user");
  if (saved && info.users.includes(saved)) picker.value = saved;
  picker.addEventListener("change", () => localStorage.setItem("baton.user", picker.value));
  for (const c of info.channels) {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = "#" + c; a.textContent = "#" + c; a.dataset.channel = c;
    a.addEventListener("click", (e) => { e.preventDefault(); closeThread(); openChannel(c); });
    li.append(a);
    $("channels").append(li);
  }
  for (const c of info.commands) {
    const li = document.createElement("li");
    const code = document.createElement("code");
    code.textContent = c.usage;
    li.append(code, document.createTextNode(" " + (c.description || "")));
    $("commands").append(li);
  }
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("text").value.trim();
    if (!text) return;
    $("text").value = "";
    send(text, null);
  });
  $("thread-composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("thread-text").value.trim();
    if (!text || state.thread === null) return;
    $("thread-text").value = "";
    send(text, state.thread);
  });
  $("close-thread").addEventListener("click", closeThread);
  const [channel, thread] = location.hash.slice(1).split("/");
  await openChannel(info.channels.includes(channel) ? channel : (info.channels.includes("general") ? "general" : info.channels[0]));
  if (thread && /^\d+$/.test(thread)) await openThread(Number(thread));
  connect();
}

main().catch((e) => notice("notices", "Could not load the console: " + e.message, true));

// The page's behaviour: one PetrelClient, a conversation list, the open conversation's
// messages, and forms to open a chat, create a group, send and page back in history.
// The test driver (tests/web/drive.mjs) uses the same controls a person would.

import { KIND, PetrelClient, loadSchema } from "./petrel.js";

const params = new URLSearchParams(location.search);
const user = Number(params.get("user"));
const device = params.get("device") || "web";
const token = params.get("token") || "";
const wsUrl = params.get("ws")
  || `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;

const $ = (id) => document.getElementById(id);
const key = (c) => `${c.kind}:${c.id}`;
const conversations = new Map(); // key -> { conversation, title, messages: Map(seq -> push) }
let open = null;

function conversationOf(c) {
  const k = key(c);
  if (!conversations.has(k)) {
    const title = c.kind === KIND.GROUP ? `group ${c.id}` : `user ${c.id}`;
    conversations.set(k, { conversation: c, title, messages: new Map() });
  }
  return conversations.get(k);
}

function renderList() {
  const list = $("conversations");
  list.replaceChildren(...[...conversations.values()].map((entry) => {
    const b = document.createElement("button");
    b.textContent = entry.title;
    b.dataset.key = key(entry.conversation);
    if (open === entry) b.className = "active";
    b.onclick = () => show(entry);
    return b;
  }));
}

function renderMessages() {
  const box = $("messages");
  if (!open) return box.replaceChildren();
  const pushes = [...open.messages.values()].sort((a, b) => a.seq - b.seq);
  box.replaceChildren(...pushes.map((p) => {
    const div = document.createElement("div");
    div.className = p.sender === user ? "msg mine" : "msg";
    div.dataset.seq = p.seq;
    const who = document.createElement("div");
    who.className = "who";
    who.textContent = `${p.sender} · #${p.seq}`;
    const text = document.createElement("div");
    text.className = "text";
    text.textContent = p.content?.text?.text ?? "(unsupported content)";
    div.append(who, text);
    return div;
  }));
  box.scrollTop = box.scrollHeight;
}

function show(entry) {
  open = entry;
  renderList();
  renderMessages();
}

function add(push) {
  const entry = conversationOf(push.conversation);
  entry.messages.set(push.seq, push);
  if (!open) open = entry;
  renderList();
  if (open === entry) renderMessages();
}

$("me").textContent = `user ${user} (${device})`;
const client = new PetrelClient(await loadSchema(), { url: wsUrl, user, device, token });
window.petrel = client; // for the console, and the test driver's state checks
client.onState = (s) => {
  $("state").textContent = s;
  $("state").className = s === "online" ? "online" : "";
};
client.onMessage = add;
client.onEvent = (name, body) => {
  if (name === "ConversationEvent" && body.conversation) {
    conversationOf(body.conversation);
    renderList();
  }
};
client.start();

$("new-chat").onsubmit = (e) => {
  e.preventDefault();
  const v = $("peer").value.trim();
  const c = v.startsWith("g:")
    ? { kind: KIND.GROUP, id: Number(v.slice(2)) }
    : { kind: KIND.SINGLE, id: Number(v) };
  show(conversationOf(c));
  $("peer").value = "";
};

$("new-group").onsubmit = async (e) => {
  e.preventDefault();
  const members = $("members").value.split(",").map((s) => Number(s.trim())).filter(Boolean);
  const c = await client.createGroup(`group of ${user}`, members);
  show(conversationOf(c));
  $("members").value = "";
};

$("composer").onsubmit = async (e) => {
  e.preventDefault();
  const text = $("text").value;
  if (!open || !text) return;
  $("text").value = "";
  const ack = await client.sendText(open.conversation, text);
  // Our own message, as the server stored it (the push goes to our other devices).
  add({ conversation: open.conversation, seq: ack.seq, sender: user, content: { text: { text } } });
};

$("older").onclick = async () => {
  if (!open) return;
  const seqs = [...open.messages.keys()];
  const before = seqs.length ? Math.min(...seqs) : 0;
  const page = await client.history(open.conversation, before);
  for (const p of page.messages) add(p);
};

// Petrel's wire protocol for browsers (docs/PROTOCOL.md): the 16-byte frame header, the
// protobuf bodies (protobufjs over proto/schema), and a client that speaks it over a
// WebSocket with login, heartbeats, requests, pushes and reconnects with back-off.
//
// No build step: the page loads protobufjs's browser bundle, then this module.

/* global protobuf */

const MAGIC0 = 0x50; // "P"
const MAGIC1 = 0x54; // "T"
const VERSION = 1;
const HEADER_LEN = 16;
const FLAG_RESPONSE = 0x01;

// Frame type byte -> body message name (proto/src/frame_type.rs).
export const FRAME_TYPES = {
  0x01: "Login", 0x02: "RenewToken", 0x03: "Logout", 0x04: "Ping",
  0x10: "SendMessage", 0x11: "SyncRequest", 0x12: "HistoryRequest",
  0x13: "ConversationOp", 0x14: "Typing",
  0x81: "LoginResult", 0x82: "RenewResult", 0x84: "Pong", 0x85: "Error", 0x86: "Kick",
  0x90: "Ack", 0x91: "MessagePush", 0x92: "SyncResponse", 0x93: "ConversationOpResult",
  0x94: "ConversationEvent", 0x95: "Gap", 0x96: "TypingNotice",
};
const TYPE_OF = Object.fromEntries(Object.entries(FRAME_TYPES).map(([t, n]) => [n, Number(t)]));

export const KIND = { SINGLE: 1, GROUP: 2, CHATROOM: 3, PUBLIC_ACCOUNT: 4 };
export const PLATFORM_WEB = 3;

/** Loads the schemas (served next to the page under schema/). */
export async function loadSchema(base = "schema/") {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => base + target;
  await root.load(
    ["petrel/v1/common.proto", "petrel/v1/content.proto", "petrel/v1/session.proto",
     "petrel/v1/message.proto", "petrel/v1/conversation.proto"],
    { keepCase: false },
  );
  return root;
}

/** Encodes one frame: header + protobuf body. */
export function encodeFrame(root, name, requestId, body) {
  const type = TYPE_OF[name];
  if (type === undefined) throw new Error(`unknown frame type ${name}`);
  const Message = root.lookupType(`petrel.v1.${name}`);
  const err = Message.verify(body);
  if (err) throw new Error(`${name}: ${err}`);
  const bytes = Message.encode(Message.create(body)).finish();
  const frame = new Uint8Array(HEADER_LEN + bytes.length);
  const view = new DataView(frame.buffer);
  frame[0] = MAGIC0; frame[1] = MAGIC1; frame[2] = VERSION; frame[3] = type;
  view.setUint32(8, requestId >>> 0);
  view.setUint32(12, bytes.length);
  frame.set(bytes, HEADER_LEN);
  return frame;
}

/** Decodes every whole frame at the front of `buf`; returns [frames, rest]. */
export function decodeFrames(root, buf) {
  const frames = [];
  let at = 0;
  while (buf.length - at >= HEADER_LEN) {
    if (buf[at] !== MAGIC0 || buf[at + 1] !== MAGIC1) throw new Error("bad magic");
    const view = new DataView(buf.buffer, buf.byteOffset + at);
    const len = view.getUint32(12);
    if (buf.length - at < HEADER_LEN + len) break;
    const type = buf[at + 3];
    const name = FRAME_TYPES[type];
    const requestId = view.getUint32(8);
    const response = (buf[at + 4] & FLAG_RESPONSE) !== 0;
    const bytes = buf.subarray(at + HEADER_LEN, at + HEADER_LEN + len);
    const body = name
      ? root.lookupType(`petrel.v1.${name}`).toObject(
          root.lookupType(`petrel.v1.${name}`).decode(bytes),
          { longs: Number, enums: Number, defaults: true },
        )
      : null;
    frames.push({ type, name, requestId, response, body });
    at += HEADER_LEN + len;
  }
  return [frames, buf.subarray(at)];
}

/**
 * A Petrel client over a WebSocket. Events: onState(text), onMessage(push),
 * onEvent(name, body). Reconnects with exponential back-off and jitter (0.5 s doubling up
 * to 30 s) and syncs what it missed after every login.
 */
export class PetrelClient {
  constructor(root, { url, user, device, token }) {
    Object.assign(this, { root, url, user, device, token });
    this.nextRequest = 1;
    this.pending = new Map();
    this.buf = new Uint8Array(0);
    this.backoffMs = 500;
    this.cursors = new Map(); // conversation key -> last seq seen
    this.inboxCursor = 0;
    this.inboxPosition = new Uint8Array(0);
    this.onState = () => {};
    this.onMessage = () => {};
    this.onEvent = () => {};
    this.closed = false;
    this.connected = false;
  }

  start() {
    this.closed = false;
    this.connect();
  }

  stop() {
    this.closed = true;
    if (this.ws) this.ws.close();
  }

  connect() {
    this.onState("connecting");
    const ws = new WebSocket(this.url);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => this.login();
    ws.onmessage = (e) => this.receive(new Uint8Array(e.data));
    ws.onclose = () => this.lost("closed");
    ws.onerror = () => {};
  }

  lost(why) {
    this.connected = false;
    clearInterval(this.heartbeat);
    for (const { reject } of this.pending.values()) reject(Object.assign(new Error(why), { lost: true }));
    this.pending.clear();
    this.buf = new Uint8Array(0);
    if (this.closed) {
      this.onState("offline");
      return;
    }
    const delay = Math.max(
      this.backoffMs * (0.5 + Math.random() / 2), (this.retryAt || 0) - Date.now());
    this.backoffMs = Math.min(this.backoffMs * 2, 30000);
    this.onState(`reconnecting in ${Math.round(delay)} ms`);
    setTimeout(() => this.connect(), delay);
  }

  receive(bytes) {
    const joined = new Uint8Array(this.buf.length + bytes.length);
    joined.set(this.buf);
    joined.set(bytes, this.buf.length);
    const [frames, rest] = decodeFrames(this.root, joined);
    this.buf = rest.slice();
    for (const f of frames) {
      if (f.response && this.pending.has(f.requestId)) {
        const { resolve, reject } = this.pending.get(f.requestId);
        this.pending.delete(f.requestId);
        if (f.name === "Error") reject(Object.assign(new Error(f.body.message), f.body));
        else resolve(f.body);
      } else if (f.name === "Kick") {
        // Replaced by another device, or signed out by the server: reconnecting would
        // only fight the other session.
        this.closed = true;
        this.onState(`signed out (kick reason ${f.body.reason})`);
      } else if (f.name === "MessagePush") {
        this.seen(f.body);
        this.onMessage(f.body);
      } else {
        this.onEvent(f.name, f.body);
      }
    }
  }

  request(name, body) {
    const id = this.nextRequest++;
    const frame = encodeFrame(this.root, name, id, body);
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.ws.send(frame);
    });
  }

  async login() {
    let result;
    try {
      result = await this.request("Login", {
        token: this.token, userId: this.user, deviceId: this.device,
        platform: PLATFORM_WEB, clientVersion: "petrel-web/0.1",
      });
    } catch (e) {
      // A lost connection has its reconnect scheduled already (lost()); a refusal
      // with retry_after_ms (server busy, rate limited) is retried after that long;
      // any other refusal (a bad or expired token) is final until the page gets a new one.
      if (e.lost) return;
      if (e.retryAfterMs) {
        this.retryAt = Date.now() + e.retryAfterMs;
        this.ws.close();
        return;
      }
      this.onState(`login failed: ${e.message}`);
      this.closed = true;
      this.ws.close();
      return;
    }
    this.connected = true;
    this.backoffMs = 500;
    this.onState("online");
    const every = Math.max(5, result.heartbeatIntervalS || 50) * 1000;
    this.heartbeat = setInterval(
      () => this.request("Ping", { clientTimeMs: Date.now() }).catch(() => {}), every);
    // A connection lost mid-sync loses nothing: the next login syncs from the same
    // cursors.
    await this.sync().catch(() => {});
  }

  /** Fetches everything missed since the last cursors, page by page. */
  async sync() {
    for (;;) {
      const page = await this.request("SyncRequest", {
        inboxCursor: this.inboxCursor,
        inboxPosition: this.inboxPosition,
        cursors: [...this.cursors.entries()].map(([key, seq]) => {
          const [kind, id] = key.split(":").map(Number);
          return { conversation: { kind, id }, afterSeq: seq };
        }),
      });
      for (const push of page.messages) {
        if (this.seen(push)) this.onMessage(push);
      }
      this.inboxCursor = page.inboxCursor;
      this.inboxPosition = page.inboxPosition || new Uint8Array(0);
      if (!page.hasMore) return;
    }
  }

  /** Records a push's seq; false if it was seen already. */
  seen(push) {
    const key = `${push.conversation.kind}:${push.conversation.id}`;
    const last = this.cursors.get(key) || 0;
    if (push.seq <= last && push.conversation.kind !== KIND.CHATROOM) return false;
    this.cursors.set(key, Math.max(last, push.seq));
    return true;
  }

  sendText(conversation, text) {
    const clientMsgId = Date.now() * 1000 + Math.floor(Math.random() * 1000);
    return this.request("SendMessage", {
      clientMsgId, conversation, content: { text: { text } },
    });
  }

  async createGroup(name, members) {
    const result = await this.request("ConversationOp", { createGroup: { name, members } });
    return result.conversation;
  }

  history(conversation, beforeSeq = 0, limit = 50) {
    return this.request("HistoryRequest", { conversation, beforeSeq, limit });
  }
}

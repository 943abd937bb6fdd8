#!/usr/bin/env python3
"""A minimal Petrel client in Python, for interoperability with the Rust SDK.

It speaks the wire protocol of docs/PROTOCOL.md with message classes generated from
proto/schema/petrel/v1/*.proto (by grpcio-tools' bundled protoc, into a temporary
directory at start-up, so the code always matches the schema in this checkout).
Three modes, each exiting 0 on success and 1 on any failure (reason on stderr):

Chat (default): log in, tell the peer we are typing (a Typing indicator, PROTOCOL.md
5.9), send one text message to it, wait for the Ack, then wait for a message from the
peer whose text is --expect (printing "got: TEXT"). Prints "typing: USER" when the peer's
typing indicator arrives first.

    pip install -r examples/python/requirements.txt
    python3 examples/python/petrel_client.py --server 127.0.0.1:9500 --user 101 \\
        --device py --token "$(petrel token issue --user 101 --device py)" \\
        --peer 202 --send "hello from python" --expect "hello from rust"

Chatroom gap (--room ROOM): join the room, print "joined room ROOM", stop reading for
--stall seconds (a slow member, with a small socket receive buffer), then read until a
push whose text is --expect. Prints "gap: FROM-TO" for every Gap notice (PROTOCOL.md
5.4) and checks that the pushes and the gaps together cover every seq exactly once.

Shutdown probe (--shutdown-probe): log in, print "ready", then send a message to --peer
every 100 ms until the server answers SHUTTING_DOWN (it is stopping: print "refused:
SHUTTING_DOWN"), stop sending, wait for Kick SERVER_SHUTDOWN, reconnect (retrying until
--timeout) and send the refused message again with the same client_msg_id, as
PROTOCOL.md 5.7 says a client should ("resent after reconnect: seq N").
"""

import argparse
import glob
import os
import random
import socket
import struct
import sys
import tempfile
import time

HEADER = struct.Struct(">2sBBB3sII")  # magic, version, type, flags, reserved, request id, body length
MAGIC = b"PT"
VERSION = 1
RESPONSE = 0x01

# Frame type bytes (docs/PROTOCOL.md, section 4).
LOGIN, SEND_MESSAGE, CONVERSATION_OP, TYPING = 0x01, 0x10, 0x13, 0x14
LOGIN_RESULT, ERROR, KICK, ACK, MESSAGE_PUSH = 0x81, 0x85, 0x86, 0x90, 0x91
CONVERSATION_OP_RESULT, CONVERSATION_EVENT, GAP, TYPING_NOTICE = 0x93, 0x94, 0x95, 0x96

_GENERATED = None


def generate_messages():
    """Compiles the .proto files into a temporary directory and imports them."""
    schema = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto", "schema")
    global _GENERATED  # removed when the interpreter exits
    _GENERATED = tempfile.TemporaryDirectory(prefix="petrel-py-")
    out = _GENERATED.name
    from grpc_tools import protoc  # imported here so --help works without it
    import grpc_tools

    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    files = sorted(glob.glob(os.path.join(schema, "petrel", "v1", "*.proto")))
    status = protoc.main(["protoc", f"-I{schema}", f"-I{include}", f"--python_out={out}", *files])
    if status != 0:
        raise RuntimeError(f"protoc failed with status {status}")
    sys.path.insert(0, out)
    from petrel.v1 import common_pb2, content_pb2, conversation_pb2, message_pb2, session_pb2

    return common_pb2, content_pb2, conversation_pb2, message_pb2, session_pb2


class Connection:
    """Frames over a blocking socket."""

    def __init__(self, address, timeout, rcvbuf=None):
        host, port = address.rsplit(":", 1)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            # Before connect, so the advertised window stays small: a stalled reader
            # then falls behind the server quickly.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((host, int(port)))
        self.timeout = timeout
        self.buf = b""
        self.next_id = 0

    def send(self, frame_type, message):
        self.next_id += 1
        body = message.SerializeToString()
        header = HEADER.pack(MAGIC, VERSION, frame_type, 0, b"\0\0\0", self.next_id, len(body))
        self.sock.sendall(header + body)
        return self.next_id

    def recv(self, wait=None):
        """The next frame as (type, flags, request id, body bytes); None if `wait`
        seconds pass first."""
        self.sock.settimeout(self.timeout if wait is None else wait)
        while True:
            if len(self.buf) >= HEADER.size:
                magic, version, ftype, flags, _, rid, length = HEADER.unpack_from(self.buf)
                if magic != MAGIC or version != VERSION:
                    raise RuntimeError(f"not a Petrel stream: {self.buf[:4]!r}")
                if len(self.buf) >= HEADER.size + length:
                    body = self.buf[HEADER.size : HEADER.size + length]
                    self.buf = self.buf[HEADER.size + length :]
                    return ftype, flags, rid, body
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                if wait is None:
                    raise
                return None
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buf += chunk

    def close(self):
        self.sock.close()


_last_attempt = 0


def next_login_attempt():
    """Login.attempt (docs/PROTOCOL.md, "Login attempts"): increasing across this
    device's logins, so a late, abandoned attempt never replaces the newer session. The
    Rust SDK keeps a counter in its store; this example has no store, so it uses the
    wall clock in milliseconds (later after a restart too), bumped past the last one."""
    global _last_attempt
    _last_attempt = max(_last_attempt + 1, int(time.time() * 1000))
    return _last_attempt


def log_in(pb, args, rcvbuf=None):
    common_pb2, _, _, _, session_pb2 = pb
    conn = Connection(args.server, args.timeout, rcvbuf)
    rid = conn.send(
        LOGIN,
        session_pb2.Login(
            token=args.token,
            user_id=args.user,
            device_id=args.device,
            # Must be the platform the token was issued for (else TOKEN_MISMATCH).
            platform=common_pb2.PLATFORM_DESKTOP,
            client_version="petrel-python-example/0.2",
            attempt=next_login_attempt(),
        ),
    )
    ftype, flags, got_rid, body = conn.recv()
    if ftype != LOGIN_RESULT or got_rid != rid:
        err = session_pb2.Error.FromString(body) if ftype == ERROR else None
        raise RuntimeError(f"login refused: type {ftype:#04x} {err}")
    result = session_pb2.LoginResult.FromString(body)
    print(f"logged in as {result.user_id}, session {result.session_id}", flush=True)
    return conn


def text_message(pb, kind, conversation_id, text, client_msg_id=None, reply_to=0, mentions=()):
    """A SendMessage of `text`; `reply_to` quotes an earlier seq and `mentions` names users
    (docs/PROTOCOL.md 5.12): the server counts it as an unread mention for each of them.
    The text's own mention list repeats them, for display."""
    common_pb2, content_pb2, _, message_pb2, _ = pb
    return message_pb2.SendMessage(
        client_msg_id=client_msg_id or random.getrandbits(63) + 1,
        conversation=common_pb2.ConversationId(kind=kind, id=conversation_id),
        content=content_pb2.Content(text=content_pb2.Text(text=text, mentions=list(mentions))),
        reply_to=reply_to,
        mentions=list(mentions),
    )


def chat(pb, args):
    common_pb2, content_pb2, conversation_pb2, message_pb2, session_pb2 = pb
    conn = log_in(pb, args)
    deadline = time.monotonic() + args.timeout
    peer = common_pb2.ConversationId(kind=common_pb2.CONVERSATION_KIND_SINGLE, id=args.peer)
    conn.send(TYPING, message_pb2.Typing(conversation=peer, typing=True))  # never answered
    mentions = [args.peer] if args.mention_peer else []
    send = text_message(
        pb, common_pb2.CONVERSATION_KIND_SINGLE, args.peer, args.send, mentions=mentions
    )
    send_rid = conn.send(SEND_MESSAGE, send)
    acked = False
    done = False  # the expected message arrived; finishing once the receipts are answered
    pending = {}  # request id -> what to print when the server answers it
    while time.monotonic() < deadline:
        ftype, flags, got_rid, body = conn.recv()
        if ftype == ACK and got_rid == send_rid:
            ack = message_pb2.Ack.FromString(body)
            print(f"acked: seq {ack.seq}", flush=True)
            acked = True
            if args.edit:  # replace our message's text (docs/PROTOCOL.md 5.11)
                edit = conversation_pb2.EditMessage(
                    conversation=peer,
                    seq=ack.seq,
                    content=content_pb2.Content(text=content_pb2.Text(text=args.edit)),
                )
                op = conversation_pb2.ConversationOp(edit_message=edit)
                pending[conn.send(CONVERSATION_OP, op)] = f"edited: seq {ack.seq}"
            if args.recall:  # then take it back (docs/PROTOCOL.md 5.10)
                recall = conversation_pb2.RecallMessage(conversation=peer, seq=ack.seq)
                op = conversation_pb2.ConversationOp(recall_message=recall)
                pending[conn.send(CONVERSATION_OP, op)] = f"recalled: seq {ack.seq}"
        elif ftype == CONVERSATION_OP_RESULT and got_rid in pending:
            print(pending.pop(got_rid), flush=True)
        elif ftype == ERROR:
            err = session_pb2.Error.FromString(body)
            raise RuntimeError(f"server error {err.code}: {err.message}")
        elif ftype == KICK:
            raise RuntimeError(f"kicked: {session_pb2.Kick.FromString(body)}")
        elif ftype == TYPING_NOTICE:
            notice = message_pb2.TypingNotice.FromString(body)
            if notice.user == args.peer and notice.typing:
                print(f"typing: {notice.user}", flush=True)
        elif ftype == MESSAGE_PUSH:
            push = message_pb2.MessagePush.FromString(body)
            text = push.content.text.text
            if push.sender == args.peer and push.edited_at_ms:
                print(f"peer edited: seq {push.seq}: {text}", flush=True)
            elif push.sender == args.peer and text == args.expect:
                if not acked or pending:
                    raise RuntimeError("the peer answered before our message was acked")
                if push.reply_to or push.mentions:
                    mentioned = "mentions me" if args.user in push.mentions else "no mention"
                    print(f"refs: reply to {push.reply_to}, {mentioned}", flush=True)
                print(f"got: {text}", flush=True)
                # Receipts (docs/PROTOCOL.md 5.6): stored here ("delivered"), then read.
                # Wait for both answers, so the server has them before we hang up.
                delivered = conversation_pb2.MarkDelivered(conversation=peer, seq=push.seq)
                op = conversation_pb2.ConversationOp(mark_delivered=delivered)
                pending[conn.send(CONVERSATION_OP, op)] = f"marked delivered: seq {push.seq}"
                read = conversation_pb2.MarkRead(conversation=peer, seq=push.seq)
                op = conversation_pb2.ConversationOp(mark_read=read)
                pending[conn.send(CONVERSATION_OP, op)] = f"marked read: seq {push.seq}"
                done = True
        elif ftype == CONVERSATION_EVENT:
            event = conversation_pb2.ConversationEvent.FromString(body)
            kinds = {
                conversation_pb2.CONVERSATION_EVENT_KIND_DELIVERY_RECEIPT: "delivered",
                conversation_pb2.CONVERSATION_EVENT_KIND_READ_RECEIPT: "read",
            }
            if event.actor == args.peer and event.kind in kinds:
                print(f"{kinds[event.kind]} by peer: seq {event.seq}", flush=True)
        if done and not pending:
            return 0
    raise RuntimeError(f"no message {args.expect!r} from {args.peer} within {args.timeout} s")


def room(pb, args):
    _, _, conversation_pb2, message_pb2, session_pb2 = pb
    conn = log_in(pb, args, rcvbuf=4096)
    rid = conn.send(
        CONVERSATION_OP,
        conversation_pb2.ConversationOp(join_chatroom=conversation_pb2.JoinChatroom(room_id=args.room)),
    )
    while True:
        ftype, flags, got_rid, body = conn.recv()
        if got_rid == rid and flags & RESPONSE:
            if ftype != CONVERSATION_OP_RESULT:
                raise RuntimeError(f"join refused: {session_pb2.Error.FromString(body)}")
            break
    print(f"joined room {args.room}", flush=True)
    time.sleep(args.stall)  # a member that does not read while the room floods

    seqs, gaps = [], []
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        ftype, flags, _, body = conn.recv()
        if ftype == GAP:
            gap = message_pb2.Gap.FromString(body)
            if gap.conversation.id != args.room:
                continue
            if seqs and gap.from_seq <= seqs[-1]:
                raise RuntimeError(f"gap {gap.from_seq}-{gap.to_seq} after push {seqs[-1]}")
            gaps.append((gap.from_seq, gap.to_seq))
            print(f"gap: {gap.from_seq}-{gap.to_seq}", flush=True)
        elif ftype == MESSAGE_PUSH:
            push = message_pb2.MessagePush.FromString(body)
            if push.conversation.id != args.room:
                continue
            seqs.append(push.seq)
            if push.content.text.text == args.expect:
                break
        elif ftype == KICK:
            raise RuntimeError(f"kicked: {session_pb2.Kick.FromString(body)}")
    else:
        raise RuntimeError(f"no message {args.expect!r} in room {args.room} within {args.timeout} s")
    # Every seq from the first one seen to the last is either pushed or in a gap, once.
    covered = sorted(seqs + [s for a, b in gaps for s in range(a, b + 1)])
    if covered != list(range(covered[0], covered[-1] + 1)):
        raise RuntimeError(f"pushes and gaps do not cover the room's seqs exactly once: {gaps}")
    skipped = sum(b - a + 1 for a, b in gaps)
    print(f"got: {args.expect} ({len(seqs)} pushes, {skipped} skipped in {len(gaps)} gaps)", flush=True)
    return 0


def shutdown_probe(pb, args):
    common_pb2, _, _, message_pb2, session_pb2 = pb
    conn = log_in(pb, args)
    print("ready", flush=True)
    deadline = time.monotonic() + args.timeout
    sent = {}  # request id -> SendMessage
    refused = None
    kicked = False
    next_send = time.monotonic()
    while time.monotonic() < deadline and not kicked:
        if refused is None and time.monotonic() >= next_send:
            # Ten a second: well inside the server's default rate limit (20/s).
            next_send = time.monotonic() + 0.1
            msg = text_message(pb, common_pb2.CONVERSATION_KIND_SINGLE, args.peer, f"probe {len(sent)}")
            sent[conn.send(SEND_MESSAGE, msg)] = msg
        try:
            frame = conn.recv(wait=0.05)
        except ConnectionError:
            raise RuntimeError("closed without a Kick SERVER_SHUTDOWN")
        while frame is not None:
            ftype, flags, rid, body = frame
            if ftype == ERROR and flags & RESPONSE:
                err = session_pb2.Error.FromString(body)
                if err.code != session_pb2.ERROR_CODE_SHUTTING_DOWN:
                    raise RuntimeError(f"server error {err.code}: {err.message}")
                if refused is None:
                    refused = sent[rid]
                    print(f"refused: SHUTTING_DOWN (client_msg_id {refused.client_msg_id}): {err.message}", flush=True)
            elif ftype == KICK:
                kick = session_pb2.Kick.FromString(body)
                if kick.reason != session_pb2.KICK_REASON_SERVER_SHUTDOWN:
                    raise RuntimeError(f"unexpected kick {kick}")
                print("kicked: SERVER_SHUTDOWN", flush=True)
                kicked = True
                break
            frame = conn.recv(wait=0.001)
    if refused is None or not kicked:
        raise RuntimeError(f"no SHUTTING_DOWN answer and shutdown kick (refused={refused is not None})")
    conn.close()

    # Reconnect (the server is restarting) and send the refused message again.
    while True:
        try:
            conn = log_in(pb, args)
            break
        except (OSError, ConnectionError, RuntimeError) as e:
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not reconnect: {e}")
            time.sleep(0.2)
    rid = conn.send(SEND_MESSAGE, refused)
    while True:
        ftype, flags, got_rid, body = conn.recv()
        if got_rid == rid and flags & RESPONSE:
            if ftype != ACK:
                raise RuntimeError(f"resend refused: {session_pb2.Error.FromString(body)}")
            ack = message_pb2.Ack.FromString(body)
            print(f"resent after reconnect: seq {ack.seq} duplicate {ack.duplicate}", flush=True)
            return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", required=True)
    p.add_argument("--user", type=int, required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--peer", type=int, help="chat and shutdown probe: the other user")
    p.add_argument("--send", help="chat: the text to send")
    p.add_argument("--expect", help="chat, room: the text that ends the run")
    p.add_argument("--room", type=int, help="join this chatroom and report gaps")
    p.add_argument("--stall", type=float, default=2.0, help="room: seconds without reading")
    p.add_argument("--edit", help="chat: once acked, edit our message to this text")
    p.add_argument("--recall", action="store_true", help="chat: once acked, recall our message")
    p.add_argument("--mention-peer", action="store_true", help="chat: our message mentions the peer")
    p.add_argument("--shutdown-probe", action="store_true", help="send until the server stops")
    p.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args()

    pb = generate_messages()
    if args.shutdown_probe:
        if args.peer is None:
            p.error("--shutdown-probe needs --peer")
        return shutdown_probe(pb, args)
    if args.room is not None:
        if args.expect is None:
            p.error("--room needs --expect")
        return room(pb, args)
    if None in (args.peer, args.send, args.expect):
        p.error("chat needs --peer, --send and --expect")
    return chat(pb, args)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # report any failure as exit status 1 with a reason
        print(f"petrel_client.py: {e}", file=sys.stderr)
        sys.exit(1)

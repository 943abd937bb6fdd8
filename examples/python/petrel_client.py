#!/usr/bin/env python3
"""A minimal Petrel client in Python, for interoperability with the Rust SDK.

It speaks the wire protocol of docs/PROTOCOL.md with message classes generated from
proto/schema/petrel/v1/*.proto (by grpcio-tools' bundled protoc, into a temporary
directory at start-up, so the code always matches the schema in this checkout):

    pip install -r examples/python/requirements.txt
    python3 examples/python/petrel_client.py --server 127.0.0.1:9500 --user 101 \
        --device py --token "$(petrel token issue --user 101 --device py)" \
        --peer 202 --send "hello from python" --expect "hello from rust"

It logs in, sends one text message to the peer, waits for the Ack, then waits for a
message from the peer whose text is --expect (printing "got: TEXT"). Exit status 0 on
success, 1 on any failure (with the reason on stderr).
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
LOGIN, SEND_MESSAGE = 0x01, 0x10
LOGIN_RESULT, ERROR, KICK, ACK, MESSAGE_PUSH = 0x81, 0x85, 0x86, 0x90, 0x91

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
    from petrel.v1 import common_pb2, content_pb2, message_pb2, session_pb2

    return common_pb2, content_pb2, message_pb2, session_pb2


class Connection:
    """Frames over a blocking socket."""

    def __init__(self, address, timeout):
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.buf = b""
        self.next_id = 0

    def send(self, frame_type, message):
        self.next_id += 1
        body = message.SerializeToString()
        header = HEADER.pack(MAGIC, VERSION, frame_type, 0, b"\0\0\0", self.next_id, len(body))
        self.sock.sendall(header + body)
        return self.next_id

    def recv(self):
        """The next frame as (type, flags, request id, body bytes)."""
        while True:
            if len(self.buf) >= HEADER.size:
                magic, version, ftype, flags, _, rid, length = HEADER.unpack_from(self.buf)
                if magic != MAGIC or version != VERSION:
                    raise RuntimeError(f"not a Petrel stream: {self.buf[:4]!r}")
                if len(self.buf) >= HEADER.size + length:
                    body = self.buf[HEADER.size : HEADER.size + length]
                    self.buf = self.buf[HEADER.size + length :]
                    return ftype, flags, rid, body
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("the server closed the connection")
            self.buf += chunk


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", required=True)
    p.add_argument("--user", type=int, required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--peer", type=int, required=True)
    p.add_argument("--send", required=True)
    p.add_argument("--expect", required=True)
    p.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args()

    common_pb2, content_pb2, message_pb2, session_pb2 = generate_messages()
    conn = Connection(args.server, args.timeout)
    deadline = time.monotonic() + args.timeout

    rid = conn.send(
        LOGIN,
        session_pb2.Login(
            token=args.token,
            user_id=args.user,
            device_id=args.device,
            platform=common_pb2.PLATFORM_DESKTOP,
            client_version="petrel-python-example/0.1",
        ),
    )
    ftype, flags, got_rid, body = conn.recv()
    if ftype != LOGIN_RESULT or got_rid != rid:
        err = session_pb2.Error.FromString(body) if ftype == ERROR else None
        raise RuntimeError(f"login refused: type {ftype:#04x} {err}")
    result = session_pb2.LoginResult.FromString(body)
    print(f"logged in as {result.user_id}, session {result.session_id}", flush=True)

    peer = common_pb2.ConversationId(kind=common_pb2.CONVERSATION_KIND_SINGLE, id=args.peer)
    send = message_pb2.SendMessage(
        client_msg_id=random.getrandbits(63) + 1,
        conversation=peer,
        content=content_pb2.Content(text=content_pb2.Text(text=args.send)),
    )
    send_rid = conn.send(SEND_MESSAGE, send)

    acked = False
    while time.monotonic() < deadline:
        ftype, flags, got_rid, body = conn.recv()
        if ftype == ACK and got_rid == send_rid:
            ack = message_pb2.Ack.FromString(body)
            print(f"acked: seq {ack.seq}", flush=True)
            acked = True
        elif ftype == ERROR:
            err = session_pb2.Error.FromString(body)
            raise RuntimeError(f"server error {err.code}: {err.message}")
        elif ftype == KICK:
            raise RuntimeError(f"kicked: {session_pb2.Kick.FromString(body)}")
        elif ftype == MESSAGE_PUSH:
            push = message_pb2.MessagePush.FromString(body)
            text = push.content.text.text
            if push.sender == args.peer and text == args.expect:
                if not acked:
                    raise RuntimeError("the peer answered before our message was acked")
                print(f"got: {text}", flush=True)
                return 0
    raise RuntimeError(f"no message {args.expect!r} from {args.peer} within {args.timeout} s")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # report any failure as exit status 1 with a reason
        print(f"petrel_client.py: {e}", file=sys.stderr)
        sys.exit(1)

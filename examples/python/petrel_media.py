#!/usr/bin/env python3
"""Uploads to and downloads from Petrel's media service (docs/MEDIA.md), stdlib only.

The answer of an upload is what a message's Media needs: put "uri", "size", "mime" and
"thumbnail_base64" into content_pb2.Media (and "width"/"height" into an Image).

    python3 examples/python/petrel_media.py --media http://127.0.0.1:9600 \\
        --token "$(petrel token issue --user 101 --device py)" upload photo.jpg --kind image
    python3 examples/python/petrel_media.py --media http://127.0.0.1:9600 --token "$T" \\
        download /v1/media/9f86d0... --out copy.jpg

Files larger than --chunk bytes go through an upload session (create, PUT each chunk at
its offset, resume from the server's offset after a failed chunk, complete). Prints the
upload answer as one JSON line; a download checks the bytes against the SHA-256 in the
URI and prints "downloaded N bytes, sha256 HEX". Exits 1 with the reason on any error.
"""

import argparse
import hashlib
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request


class MediaError(Exception):
    """The service answered with an error (its JSON body)."""

    def __init__(self, status, body):
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = {"error": "http", "message": body.decode("utf-8", "replace")}
        self.status = status
        self.code = parsed.get("error")
        self.offset = parsed.get("offset")
        super().__init__(f"HTTP {status} {self.code}: {parsed.get('message')}")


def request(method, url, token, body=None, headers=None, timeout=60):
    """Sends one request; returns the body, or raises MediaError for an error status."""
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.read()
    except urllib.error.HTTPError as e:
        raise MediaError(e.code, e.read()) from None


def upload(base, token, path, kind, duration_ms=None, name=None, chunk=4 << 20):
    """Uploads the file at path as kind; returns the server's answer (a dict)."""
    size = os.path.getsize(path)
    if size <= chunk:
        query = {"kind": kind}
        if duration_ms is not None:
            query["duration_ms"] = str(duration_ms)
        if name is not None:
            query["name"] = name
        with open(path, "rb") as f:
            data = f.read()
        url = f"{base}/v1/media?{urllib.parse.urlencode(query)}"
        return json.loads(request("POST", url, token, data))
    spec = {"kind": kind, "size": size, "duration_ms": duration_ms, "name": name}
    session = json.loads(
        request(
            "POST",
            f"{base}/v1/uploads",
            token,
            json.dumps(spec).encode(),
            {"Content-Type": "application/json"},
        )
    )
    session_url = f"{base}/v1/uploads/{session['upload_id']}"
    offset, failures = session["offset"], 0
    with open(path, "rb") as f:
        while offset < size:
            f.seek(offset)
            data = f.read(chunk)
            try:
                answer = json.loads(request("PUT", f"{session_url}?offset={offset}", token, data))
                offset, failures = answer["offset"], 0
            except (MediaError, OSError) as e:
                # Limits and auth are final; a wrong offset or a cut chunk is resumed.
                if isinstance(e, MediaError) and e.status not in (400, 409):
                    raise
                failures += 1
                if failures >= 3:
                    raise
                offset = json.loads(request("GET", session_url, token))["offset"]
    return json.loads(request("POST", f"{session_url}/complete", token, b""))


def download(base, token, uri):
    """Downloads uri (an upload answer's or a message's) and checks its SHA-256."""
    url = uri if uri.startswith(("http://", "https://")) else f"{base}{uri}"
    data = request("GET", url, token)
    digest = hashlib.sha256(data).hexdigest()
    if not uri.rstrip("/").endswith(digest):
        raise RuntimeError(f"downloaded bytes hash to {digest}, not the one in {uri}")
    return data


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--media", required=True, help="the service's base URL, http://HOST:PORT")
    p.add_argument("--token", required=True, help="the same token as the IM login")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upload", help="upload a file; prints the answer as JSON")
    up.add_argument("file")
    up.add_argument("--kind", choices=["image", "voice", "video", "file"], default="file")
    up.add_argument("--duration-ms", type=int)
    up.add_argument("--name")
    up.add_argument("--chunk", type=int, default=4 << 20, help="bytes per request")
    down = sub.add_parser("download", help="download a URI into --out")
    down.add_argument("uri")
    down.add_argument("--out", required=True)
    args = p.parse_args()
    base = args.media.rstrip("/")
    if args.command == "upload":
        answer = upload(
            base, args.token, args.file, args.kind, args.duration_ms, args.name, args.chunk
        )
        print(json.dumps(answer), flush=True)
    else:
        data = download(base, args.token, args.uri)
        with open(args.out, "wb") as f:
            f.write(data)
        print(f"downloaded {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # report any failure as exit status 1 with a reason
        print(f"petrel_media.py: {e}", file=sys.stderr)
        sys.exit(1)

//! A blocking HTTP/1.1 test client on a raw `TcpStream`, for the media service and
//! server API tests: it can send what a real client library refuses to (a body shorter
//! than its `Content-Length`, odd paths, a body that is not JSON), one request per
//! connection (`Connection: close`). Loopback only; no TLS, no chunked request bodies.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

/// An HTTP answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body as text (lossy), for assertion messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `error` code of a JSON error body.
    pub fn error_code(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }
}

/// Sends `method path` with `headers` and `body` (a `Content-Length` is added unless
/// `declared_len` overrides it; the body is then sent as is and the write side closed).
pub fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    declared_len: Option<usize>,
) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect to the HTTP service");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        declared_len.unwrap_or(body.len())
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    // The server may answer (413, 401) and close before reading the whole body.
    let _ = stream.write_all(body);
    if declared_len.is_some() {
        let _ = stream.shutdown(Shutdown::Write);
    }
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    parse(&raw)
}

/// Parses a whole `Connection: close` answer (status 0 when the server sent nothing).
pub fn parse(raw: &[u8]) -> Response {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Response {
            status: 0,
            headers: Vec::new(),
            body: raw.to_vec(),
        };
    };
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

/// The payload of a chunked body (extensions and trailers ignored).
fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_field = std::str::from_utf8(&data[..eol]).unwrap_or("0");
        let size_field = size_field.split(';').next().unwrap_or("0").trim();
        let size = usize::from_str_radix(size_field, 16).unwrap_or(0);
        let start = eol + 2;
        if size == 0 || data.len() < start + size {
            return out;
        }
        out.extend_from_slice(&data[start..start + size]);
        data = data.get(start + size + 2..).unwrap_or_default();
    }
}

/// Sends `method path` with an optional bearer `key` and `content_type` (the server API
/// tests' shape of [`send`]).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
) -> Response {
    let auth = key.map(bearer);
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some((name, value)) = &auth {
        headers.push((name, value));
    }
    if let Some(ct) = content_type {
        headers.push(("Content-Type", ct));
    }
    send(addr, method, path, &headers, body, None)
}

/// `Authorization: Bearer TOKEN`.
pub fn bearer(token: &str) -> (&'static str, String) {
    ("Authorization", format!("Bearer {token}"))
}

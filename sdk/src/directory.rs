//! Asking the server's dispatch directory where to connect (docs/CLUSTER.md,
//! "Dispatch"): `GET <url>/v1/dispatch` with this client's token, answered with an
//! ordered list of endpoints — the nodes of this user's pool that are up, then the
//! backup domains. The connection task asks at start and after
//! [`crate::ClientConfig::directory_after_failures`] failed connects in a row, tries
//! the directory URLs in order, and keeps its configured endpoints (after the
//! directory's) for when every directory is unreachable.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;

use crate::stream::{TlsConfig, connect_tls};

/// Largest answer read (a few dozen endpoints).
const MAX_ANSWER: usize = 64 * 1024;

/// The directory's answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Dispatch {
    /// The pool the server has this user in (`general` unless the app's backend chose).
    pub pool: String,
    /// Whether no node of that pool is up (the list starts with the backup domains).
    #[serde(default)]
    pub pool_down: bool,
    /// Where to connect, in order.
    pub endpoints: Vec<String>,
}

/// How this client speaks TLS to `https://` directories: its own roots and server name,
/// ALPN http/1.1 (the servers' own config offers `petrel`), and a session store of its
/// own — the directory's tickets are not the IM listeners' (another server config), so
/// asking it never spends or spoils the ticket the next connect resumes with. Built
/// once per client, so the directory's own sessions resume from one ask to the next.
pub struct DirectoryTls {
    connector: tokio_rustls::TlsConnector,
    /// The name its certificate must carry; `None`: the URL's host.
    server_name: Option<String>,
}

impl DirectoryTls {
    /// From the client's TLS settings.
    pub fn new(tls: &TlsConfig) -> DirectoryTls {
        let mut config = (*tls.config).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = rustls::client::Resumption::in_memory_sessions(8);
        DirectoryTls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name: tls.server_name.clone(),
        }
    }
}

/// Asks each of `urls` in turn (each within `timeout`) and returns the first answer;
/// an error naming every failure if none answered. With `tls` the directories are
/// `https://`.
pub async fn ask(
    urls: &[String],
    token: &str,
    timeout: Duration,
    tls: Option<&DirectoryTls>,
) -> Result<Dispatch, String> {
    let mut failures = Vec::new();
    for url in urls {
        match tokio::time::timeout(timeout, ask_one(url, token, tls)).await {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) => failures.push(format!("{url}: {e}")),
            Err(_) => failures.push(format!("{url}: no answer in {timeout:?}")),
        }
    }
    Err(failures.join("; "))
}

async fn ask_one(url: &str, token: &str, tls: Option<&DirectoryTls>) -> Result<Dispatch, String> {
    let target = parse_url(url)?;
    let tcp = TcpStream::connect(&target.authority)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    match (target.https, tls) {
        (false, _) => request(TokioIo::new(tcp), &target, token).await,
        (true, Some(tls)) => {
            let name = tls.server_name.as_deref();
            let stream = connect_tls(&tls.connector, name, &target.authority, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            request(TokioIo::new(stream), &target, token).await
        }
        (true, None) => Err("an https:// directory needs the client's tls settings".to_owned()),
    }
}

/// `GET <prefix>/v1/dispatch` on a fresh connection `io` to `target`; the answer,
/// parsed.
async fn request<I>(io: I, target: &Target, token: &str) -> Result<Dispatch, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    // Drives the connection; it ends when `sender` is dropped with this function.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = Request::builder()
        .method(Method::GET)
        .uri(format!("{}/v1/dispatch", target.prefix))
        .header(hyper::header::HOST, &target.authority)
        .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if status != StatusCode::OK {
        return Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("not a dispatch answer: {e}"))
}

/// A directory URL's parts.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    /// Whether it is `https`.
    https: bool,
    /// `host:port` (the scheme's port if the URL names none), to connect to and to
    /// send as `Host`.
    authority: String,
    /// What goes before `/v1/dispatch` (empty, or a path prefix without its last `/`).
    prefix: String,
}

/// Parses `http(s)://host[:port][/prefix]`; IPv6 hosts in brackets.
fn parse_url(url: &str) -> Result<Target, String> {
    let bad = |why: &str| format!("directory URL {url:?}: {why} (http(s)://host[:port][/prefix])");
    let uri: hyper::Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
    let https = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad("the scheme must be http or https")),
    };
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("no user info"));
    }
    let host = authority.host();
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    if uri.query().is_some() {
        return Err(bad("no query"));
    }
    Ok(Target {
        https,
        // `host()` keeps an IPv6 address's brackets.
        authority: format!("{host}:{port}"),
        prefix: uri.path().trim_end_matches('/').to_owned(),
    })
}

/// Checks a directory URL for a client that speaks TLS (`tls`) or not: the request
/// carries the login token, so a TLS client asks `https://` directories only, and a
/// plaintext one, which has no roots to trust, `http://` ones.
pub fn check_url(url: &str, tls: bool) -> Result<(), String> {
    match parse_url(url)?.https {
        false if tls => Err(format!(
            "directory {url:?}: with tls, directories must be https:// (the request carries \
             the login token)"
        )),
        true if !tls => Err(format!(
            "directory {url:?}: an https:// directory needs tls (whom to trust)"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::{Target, check_url, parse_url};

    #[test]
    fn urls_name_a_scheme_a_host_and_perhaps_a_port_and_a_prefix() {
        let target = |https: bool, authority: &str, prefix: &str| {
            Ok(Target {
                https,
                authority: authority.to_owned(),
                prefix: prefix.to_owned(),
            })
        };
        assert_eq!(
            parse_url("http://127.0.0.1:9080"),
            target(false, "127.0.0.1:9080", "")
        );
        assert_eq!(
            parse_url("https://dir.example/"),
            target(true, "dir.example:443", "")
        );
        assert_eq!(
            parse_url("HTTP://dir.example"),
            target(false, "dir.example:80", "")
        );
        assert_eq!(
            parse_url("https://[::1]:9080"),
            target(true, "[::1]:9080", "")
        );
        assert_eq!(
            parse_url("https://edge.example/petrel/"),
            target(true, "edge.example:443", "/petrel")
        );
        for bad in [
            "127.0.0.1:9080",
            "http://",
            "ftp://h:1",
            "http://::1:80",
            "http://u@h:1",
            "http://h:1/?q",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_tls_client_asks_https_directories_only_and_a_plain_one_http() {
        assert!(check_url("https://h:1", true).is_ok());
        assert!(check_url("http://h:1", false).is_ok());
        assert!(
            check_url("http://h:1", true)
                .unwrap_err()
                .contains("https://")
        );
        assert!(
            check_url("https://h:1", false)
                .unwrap_err()
                .contains("needs tls")
        );
    }
}

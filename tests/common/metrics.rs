//! Scraping a server's Prometheus endpoint (`metrics_addr`) and reading the samples.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

/// `GET /metrics` from `addr`; the parsed exposition.
pub fn scrape(addr: SocketAddr) -> Scrape {
    let mut s = TcpStream::connect(addr).expect("connect metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: petrel\r\n\r\n")
        .expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("response");
    let (head, body) = text.split_once("\r\n\r\n").expect("http response");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    Scrape::parse(body)
}

/// A parsed exposition.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub samples: BTreeMap<String, f64>,
    pub text: String,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_owned(), value.parse().ok()?))
            })
            .collect();
        Scrape {
            samples,
            text: text.to_owned(),
        }
    }

    /// The value of one series (0 when absent).
    pub fn get(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }

    /// The sum over every series of a family whose labels contain `filter`.
    pub fn sum(&self, family: &str, filter: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(k, _)| {
                (k.as_str() == family || k.starts_with(&format!("{family}{{")))
                    && k.contains(filter)
            })
            .map(|(_, v)| v)
            .sum()
    }
}

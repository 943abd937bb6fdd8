//! `petrel serve`'s log output when it is not a terminal (a file, a pipe, the journal):
//! plain text, no ANSI escape codes.

#[allow(unused_imports)] // common re-exports the server and client, unused here
mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

#[test]
fn logs_written_to_a_pipe_carry_no_ansi_escape_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(common::PETREL)
        .args(["serve", "--listen", "127.0.0.1:0", "--log-level", "info"])
        .arg("--data-dir")
        .arg(dir.path())
        // Colour must be off because stderr is a pipe, not because of NO_COLOR.
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn petrel serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
    let serving = lines.any(|l| l.starts_with("petrel: serving on "));
    assert!(serving, "petrel serve exited before serving");
    // Keep reading stdout so the server never writes to a closed pipe.
    let drain = std::thread::spawn(move || lines.count());
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let mut log = Vec::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_end(&mut log)
        .expect("read stderr");
    let text = String::from_utf8_lossy(&log);
    let exit = child.wait().expect("wait");
    drain.join().expect("stdout reader");
    assert!(exit.success(), "petrel serve exited with {exit}:\n{text}");
    // The first start creates the key file and says so at info level: the log is not
    // empty, so the check below looks at real log lines.
    assert!(
        text.contains("created a new token key file"),
        "expected an info line in the log:\n{text}"
    );
    assert!(
        !log.contains(&0x1b),
        "ANSI escape codes in a log written to a pipe:\n{text:?}"
    );
}

//! `petrel chat`, the terminal client on the SDK, driven through its stdin against the
//! real server, talking to an SDK client.

#[allow(unused_imports)] // common re-exports TestClient, which this test does not use
#[macro_use]
mod common;
#[path = "common/sdk_keys.rs"]
mod sdk_keys;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use common::{Dataplane, TestServer};
use petrel_sdk::{ConversationKey, Event};
use sdk_keys::{Keys, start, test_config};
use tokio::task::block_in_place;
use tokio::time::timeout;

fn petrel_chat_sends_receives_and_shows_history(dp: Dataplane) {
    common::server::block_on(dp, async move {
        let keys = Arc::new(Keys::generate());
        let server = TestServer::start_on(dp, &keys.server_config());
        let (chat_user, sdk_user) = (11_001, 11_002);
        let (sdk, mut events, _) =
            start(&keys, test_config(sdk_user, vec![server.addr.to_string()]));
        sdk.wait_connected(Duration::from_secs(30)).await.unwrap();

        let token = keys.mint(chat_user, "chat-11001", Duration::from_secs(3600));
        let mut chat = Command::new(env!("CARGO_BIN_EXE_petrel"))
            .args(["chat", "--user", &chat_user.to_string()])
            .args([
                "--server",
                &server.addr.to_string(),
                "--token",
                &token.token,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run petrel chat");
        let mut stdin = chat.stdin.take().unwrap();
        let (lines_tx, lines) = mpsc::channel::<String>();
        let stdout = chat.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        let wait_for = |needle: &str| {
            block_in_place(|| {
                loop {
                    let line = lines
                        .recv_timeout(Duration::from_secs(30))
                        .unwrap_or_else(|_| panic!("petrel chat never printed {needle:?}"));
                    if line.contains(needle) {
                        return line;
                    }
                }
            })
        };
        wait_for("* connected to");

        writeln!(stdin, "/to single:{sdk_user}").unwrap();
        writeln!(stdin, "hello from the terminal").unwrap();
        let got = timeout(Duration::from_secs(30), async {
            loop {
                if let Some(Event::Message(m)) = events.recv().await {
                    return m;
                }
            }
        })
        .await
        .expect("the SDK client got nothing");
        assert_eq!(got.text(), Some("hello from the terminal"));
        assert_eq!(got.sender, chat_user);

        sdk.send_text(ConversationKey::single(chat_user), "hello back")
            .unwrap();
        let line = wait_for("hello back");
        assert!(line.contains(&format!("from {sdk_user}")), "{line}");

        // A reply with an @mention from the terminal, and one back from the SDK.
        writeln!(stdin, "/reply 2 sure thing @{sdk_user}").unwrap();
        let reply = timeout(Duration::from_secs(30), async {
            loop {
                if let Some(Event::Message(m)) = events.recv().await {
                    return m;
                }
            }
        })
        .await
        .expect("the SDK client got no reply");
        assert_eq!(
            reply.text(),
            Some(format!("sure thing @{sdk_user}").as_str())
        );
        assert_eq!(
            (reply.reply_to, reply.mentions.clone()),
            (Some(2), vec![sdk_user])
        );
        sdk.send_text_with(
            ConversationKey::single(chat_user),
            "great",
            reply.seq,
            &[chat_user],
        )
        .unwrap();
        let line = wait_for("great");
        assert!(
            line.contains(&format!("(reply to #{}, mentions you)", reply.seq)),
            "{line}"
        );

        writeln!(stdin, "/history").unwrap();
        wait_for("#1 from 11001: hello from the terminal");
        writeln!(stdin, "/quit").unwrap();
        let status = block_in_place(|| chat.wait()).unwrap();
        assert!(status.success(), "petrel chat exited with {status}");
    })
}

dataplane_tests!(petrel_chat_sends_receives_and_shows_history,);

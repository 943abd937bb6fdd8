//! `petrel chat`: an interactive terminal client on the SDK (`petrel-sdk`), for trying a
//! server by hand. Lines are sent to the current conversation; lines starting with `/`
//! are commands (`/help` lists them). Incoming messages and connection changes are
//! printed as they arrive.

use std::io::BufRead;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use petrel_control::{KeyRing, TokenSpec};
use petrel_sdk::{
    Client, ClientConfig, ConnectionState, ConversationKey, Event, MediaClient, MediaKind, Token,
    content, pb, token_fn,
};
use tokio::sync::mpsc;

/// Arguments of `petrel chat`.
#[derive(Debug, Args)]
pub struct ChatArgs {
    /// Your user id.
    #[arg(long)]
    user: u64,
    /// Server `host:port`; repeat for backup endpoints (tried in order).
    #[arg(long = "server", required = true)]
    servers: Vec<String>,
    /// Device id.
    #[arg(long)]
    device: Option<String>,
    /// Login token (from the deployment's login service or `petrel token issue`).
    #[arg(long)]
    token: Option<String>,
    /// Development shortcut: mint a 24 h token from the server's key file (used when
    /// --token is not given).
    #[arg(long, default_value = "./petrel-data/keys")]
    key_file: PathBuf,
    /// SQLite file for the local store (default: in memory).
    #[arg(long)]
    store: Option<PathBuf>,
    /// The server's media service, e.g. `http://127.0.0.1:9600` (`petrel serve
    /// --media-addr`); needed by /send-image.
    #[arg(long, value_name = "URL")]
    media: Option<String>,
}

const HELP: &str = "\
commands:
  /to single:ID | group:ID | room:ID | account:ID   switch conversation
  /history [N]        last N messages of the current conversation (default 20)
  /list               conversations with unread counts
  /join ROOM          join a chatroom (and switch to it); shows who is online
  /who                members of the current group, or who is in the current room
  /group NAME ID,ID   create a group with these members
  /read               mark the current conversation read
  /typing [off]       tell the current conversation you are typing (or stopped)
  /recall SEQ         recall message SEQ of the current conversation (yours, recently;
                      any, as a group's owner or admin)
  /edit SEQ TEXT      replace the text of your message SEQ
  /reply SEQ TEXT     answer message SEQ of the current conversation
  /send-image FILE    upload FILE to the media service (--media) and send it here
  /quit               leave
anything else is sent as a text message to the current conversation;
@ID in a text mentions user ID (counted as an unread mention for them)";

/// Runs the client until `/quit` or end of input.
pub fn run(args: ChatArgs) -> anyhow::Result<()> {
    let device = args
        .device
        .clone()
        .unwrap_or_else(|| format!("chat-{}", args.user));
    let token = match &args.token {
        Some(t) => Token {
            token: t.clone(),
            expires_at_ms: 0,
        },
        None => mint(&args.key_file, args.user, &device).context(
            "no --token given, and no key file to mint one from (pass --token or --key-file)",
        )?,
    };
    let mut config = ClientConfig::new(args.user, device, args.servers.clone());
    config.store_path = args.store.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let media = args
        .media
        .as_deref()
        .map(|url| MediaClient::new(url, token.token.clone()))
        .transpose()?;
    runtime.block_on(chat(config, token, media))
}

fn mint(path: &std::path::Path, user: u64, device: &str) -> anyhow::Result<Token> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read key file {}", path.display()))?;
    let ring = KeyRing::parse(&text).context("invalid key file")?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("clock before 1970")?
        .as_millis() as u64;
    let issued = petrel_control::token::mint(
        &ring,
        &TokenSpec {
            user,
            device,
            platform: pb::Platform::Desktop,
            issued_at: petrel_control::Timestamp::from_millis(now_ms),
            ttl: Duration::from_secs(24 * 3600),
            token_id: rand::random(),
        },
    )
    .context("cannot mint a token")?;
    Ok(Token {
        token: issued.token,
        expires_at_ms: issued.claims.expires_at.as_millis(),
    })
}

fn parse_conversation(text: &str) -> Option<ConversationKey> {
    let (kind, id) = text.split_once(':')?;
    let id = id.trim().parse().ok()?;
    Some(match kind.trim() {
        "single" | "user" => ConversationKey::single(id),
        "group" => ConversationKey::group(id),
        "room" | "chatroom" => ConversationKey::chatroom(id),
        "account" => ConversationKey::public_account(id),
        _ => return None,
    })
}

fn show(c: ConversationKey) -> String {
    let kind = match c.kind {
        pb::ConversationKind::Single => "single",
        pb::ConversationKind::Group => "group",
        pb::ConversationKind::Chatroom => "room",
        pb::ConversationKind::PublicAccount => "account",
        pb::ConversationKind::Unspecified => "?",
    };
    format!("{kind}:{}", c.id)
}

async fn chat(
    config: ClientConfig,
    token: Token,
    media: Option<MediaClient>,
) -> anyhow::Result<()> {
    let (client, mut events) = Client::start(config, token_fn(move || Ok(token.clone())))?;
    let (lines_tx, mut lines) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    println!("{HELP}");
    let mut current: Option<ConversationKey> = None;
    let user = client.config().user_id;
    loop {
        tokio::select! {
            event = events.recv() => match event {
                None => break,
                Some(Event::Message(m)) => println!(
                    "[{}] #{} from {}{}: {}",
                    show(m.conversation),
                    m.seq,
                    m.sender,
                    refs_note(&m, user),
                    shown(&m)
                ),
                Some(Event::State(ConnectionState::Connected { endpoint, .. })) => {
                    println!("* connected to {endpoint}");
                }
                Some(Event::State(ConnectionState::Disconnected { reason, retry_in })) => {
                    println!("* disconnected ({reason}); retrying in {retry_in:?}");
                }
                Some(Event::State(ConnectionState::Stopped { reason })) => {
                    println!("* stopped: {reason}");
                }
                Some(Event::Kicked { reason, message }) => println!("* kicked: {reason:?} {message}"),
                Some(Event::Gap { conversation, from_seq, to_seq }) => println!(
                    "* [{}] #{from_seq}..#{to_seq} skipped: this device fell behind the room",
                    show(conversation)
                ),
                Some(Event::Typing { conversation, user, typing, .. }) => println!(
                    "* [{}] {user} {}",
                    show(conversation),
                    if typing { "is typing…" } else { "stopped typing" }
                ),
                Some(Event::Edited(m)) => println!(
                    "[{}] #{} from {} (edited): {}",
                    show(m.conversation),
                    m.seq,
                    m.sender,
                    shown(&m)
                ),
                Some(Event::Recalled { conversation, seq, recall }) => {
                    println!("* [{}] #{seq} was recalled by {}", show(conversation), recall.by);
                }
                Some(Event::DeliveryReceipt { conversation, user, seq }) => {
                    println!("* [{}] delivered to {user} up to #{seq}", show(conversation));
                }
                Some(Event::ReadReceipt { conversation, reader, seq }) => {
                    println!("* [{}] {reader} read up to #{seq}", show(conversation));
                }
                Some(Event::SendFailed { code, message, .. }) => {
                    println!("* send failed: {code:?} {message}");
                }
                Some(Event::Conversation(ev))
                    if ev.kind == pb::ConversationEventKind::Muted as i32 =>
                {
                    println!("* {}", describe_mute(&ev));
                }
                Some(Event::Conversation(ev))
                    if ev.kind == pb::ConversationEventKind::Dissolved as i32 =>
                {
                    let place = ConversationKey::from_wire(ev.conversation.as_ref())
                        .map_or_else(|| "?".to_owned(), show);
                    println!("* [{place}] {} dissolved the group", ev.actor);
                }
                Some(_) => {}
            },
            line = lines.recv() => {
                let Some(line) = line else { break };
                match command(&client, media.as_ref(), &mut current, line.trim()).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => println!("! {e:#}"),
                }
            }
        }
    }
    client.shutdown(false).await;
    Ok(())
}

/// " (reply to #3, mentions you)": what a message quotes and whether it names `me`.
fn refs_note(m: &petrel_sdk::Message, me: u64) -> String {
    let mut notes = Vec::new();
    if let Some(seq) = m.reply_to {
        notes.push(format!("reply to #{seq}"));
    }
    if m.mentions.contains(&me) {
        notes.push("mentions you".to_owned());
    }
    if notes.is_empty() {
        String::new()
    } else {
        format!(" ({})", notes.join(", "))
    }
}

/// The users a typed line mentions: every `@ID` word (IDs that are not numbers are
/// plain text), once each.
fn mentions_in(line: &str) -> Vec<u64> {
    let mut ids: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.strip_prefix('@'))
        .filter_map(|id| {
            id.trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// What a message says, or that it was recalled.
fn shown(m: &petrel_sdk::Message) -> String {
    match m.recalled {
        Some(r) => format!("[recalled by {}]", r.by),
        None => content::summary(&m.content),
    }
}

/// "[group:7] 5 muted 42 for 59 min" (or the whole group, or lifted the mute).
fn describe_mute(ev: &pb::ConversationEvent) -> String {
    let place =
        ConversationKey::from_wire(ev.conversation.as_ref()).map_or_else(|| "?".to_owned(), show);
    let whom = match ev.users.as_slice() {
        [] => "the group".to_owned(),
        users => users
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    };
    if ev.until_ms == 0 {
        return format!("[{place}] {} lifted the mute on {whom}", ev.actor);
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let minutes = ev.until_ms.saturating_sub(now_ms).div_ceil(60_000);
    format!("[{place}] {} muted {whom} for {minutes} min", ev.actor)
}

/// Runs one input line. Returns false to quit.
async fn command(
    client: &Client,
    media: Option<&MediaClient>,
    current: &mut Option<ConversationKey>,
    line: &str,
) -> anyhow::Result<bool> {
    if line.is_empty() {
        return Ok(true);
    }
    let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
    let rest = rest.trim();
    match word {
        "/quit" | "/exit" => return Ok(false),
        "/help" => println!("{HELP}"),
        "/to" => {
            let c = parse_conversation(rest)
                .context("usage: /to single:ID (or group:, room:, account:)")?;
            *current = Some(c);
            println!("* now talking in {}", show(c));
        }
        "/list" => {
            for c in client.conversations()? {
                let preview = c.last_message.map(|m| shown(&m)).unwrap_or_default();
                let mentions = if c.unread_mentions > 0 {
                    format!(" (@ {})", c.unread_mentions)
                } else {
                    String::new()
                };
                println!(
                    "{:<16} unread {:>4}{mentions}  {preview}",
                    show(c.conversation),
                    c.unread
                );
            }
        }
        "/history" => {
            let c = current.context("pick a conversation first: /to …")?;
            let n = if rest.is_empty() {
                20
            } else {
                rest.parse().context("/history N")?
            };
            let mut page = client.load_history(c, 0, n).await?;
            page.reverse();
            for m in page {
                println!("#{} from {}: {}", m.seq, m.sender, shown(&m));
            }
        }
        "/join" => {
            let room: u64 = rest.parse().context("usage: /join ROOM")?;
            let r = client.join_chatroom(room).await?;
            let online: Vec<u64> = r.members.iter().map(|m| m.user_id).collect();
            *current = Some(ConversationKey::chatroom(room));
            println!("* joined room {room}; online: {online:?}");
            for m in r.recent {
                let text = m
                    .decode_content()
                    .map(|c| content::summary(&c))
                    .unwrap_or_default();
                println!("  (recent) from {}: {text}", m.sender);
            }
        }
        "/who" => {
            let c = current.context("pick a conversation first: /to …")?;
            let members = client.list_members(c).await?;
            let ids: Vec<u64> = members.iter().map(|m| m.user_id).collect();
            println!("* {}: {ids:?}", show(c));
        }
        "/group" => {
            let (name, ids) = rest.split_once(' ').context("usage: /group NAME ID,ID")?;
            let members = ids
                .split(',')
                .map(|s| s.trim().parse::<u64>())
                .collect::<Result<Vec<_>, _>>()
                .context("member ids must be numbers")?;
            let g = client.create_group(name, &members).await?;
            *current = Some(g);
            println!("* created {}", show(g));
        }
        "/read" => {
            let c = current.context("pick a conversation first: /to …")?;
            let seq = client
                .load_history(c, 0, 1)
                .await?
                .first()
                .map_or(0, |m| m.seq);
            client.mark_read(c, seq).await?;
        }
        "/recall" => {
            let c = current.context("pick a conversation first: /to …")?;
            let seq: u64 = rest.parse().context("usage: /recall SEQ")?;
            client.recall(c, seq).await?;
            println!("* [{}] #{seq} recalled", show(c));
        }
        "/edit" => {
            let c = current.context("pick a conversation first: /to …")?;
            let (seq, text) = rest.split_once(' ').context("usage: /edit SEQ TEXT")?;
            let seq: u64 = seq.parse().context("usage: /edit SEQ TEXT")?;
            client.edit(c, seq, content::text(text.trim())).await?;
            println!("* [{}] #{seq} edited", show(c));
        }
        "/reply" => {
            let c = current.context("pick a conversation first: /to …")?;
            let (seq, text) = rest.split_once(' ').context("usage: /reply SEQ TEXT")?;
            let seq: u64 = seq.parse().context("usage: /reply SEQ TEXT")?;
            let text = text.trim();
            client.send_text_with(c, text, seq, &mentions_in(text))?;
        }
        "/typing" => {
            let c = current.context("pick a conversation first: /to …")?;
            let typing = match rest {
                "" | "on" => true,
                "off" => false,
                _ => bail!("usage: /typing [on|off]"),
            };
            client.set_typing(c, typing)?;
        }
        "/send-image" => {
            let to = current.context("pick a conversation first: /to single:ID")?;
            let media = media.context("no media service: start petrel chat with --media URL")?;
            if rest.is_empty() {
                bail!("/send-image FILE");
            }
            let uploaded = media
                .upload(std::path::Path::new(rest), MediaKind::Image)
                .await
                .with_context(|| format!("cannot upload {rest}"))?;
            println!(
                "* uploaded {} ({} bytes, {}x{}{})",
                uploaded.uri,
                uploaded.size,
                uploaded.width.unwrap_or(0),
                uploaded.height.unwrap_or(0),
                if uploaded.deduplicated {
                    ", already stored"
                } else {
                    ""
                }
            );
            client.send_image_ref(to, &uploaded)?;
        }
        w if w.starts_with('/') => bail!("unknown command {w}; /help lists them"),
        _ => {
            let c = current.context("pick a conversation first: /to single:ID")?;
            client.send_text_with(c, line, 0, &mentions_in(line))?;
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mute_events_read_as_sentences() {
        let mut ev = pb::ConversationEvent {
            conversation: Some(pb::ConversationId {
                kind: pb::ConversationKind::Group as i32,
                id: 7,
            }),
            kind: pb::ConversationEventKind::Muted as i32,
            actor: 5,
            users: vec![42],
            until_ms: 0,
            ..Default::default()
        };
        assert_eq!(describe_mute(&ev), "[group:7] 5 lifted the mute on 42");
        ev.users.clear();
        ev.until_ms = u64::MAX;
        assert!(
            describe_mute(&ev).starts_with("[group:7] 5 muted the group for "),
            "{}",
            describe_mute(&ev)
        );
    }

    #[test]
    fn at_words_are_mentions_once_each() {
        assert_eq!(mentions_in("hi @42, @7 and @42! mail@x @bob"), vec![7, 42]);
        assert!(mentions_in("no one").is_empty());
    }

    #[test]
    fn conversation_names_parse_and_print_back() {
        for text in ["single:5", "group:7", "room:9", "account:11"] {
            assert_eq!(show(parse_conversation(text).unwrap()), text);
        }
        assert_eq!(
            parse_conversation("user:5"),
            Some(ConversationKey::single(5))
        );
        assert_eq!(parse_conversation("nope:1"), None);
        assert_eq!(parse_conversation("group:x"), None);
    }
}

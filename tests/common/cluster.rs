//! A cluster of `petrel serve` nodes on loopback with a `nats-server` of its own (Debian's,
//! which scripts/setup.sh installs), each node a [`TestServer`] with a `[cluster]` table.
//! Every node signs and checks tokens with the same key file (node 0's).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use petrel_proto::Body;
use petrel_proto::pb;
use petrel_storage::partition::{DEFAULT_PARTITIONS, Partitions};
use petrel_storage::{ConversationKey, UserId};

use super::{Dataplane, TestClient, TestServer};

/// Cores each test node runs.
pub const CORES: u8 = 2;

/// A `nats-server` on a free loopback port, killed on drop.
pub struct Nats {
    child: Child,
    pub addr: SocketAddr,
    conf: PathBuf,
    _dir: tempfile::TempDir,
}

impl Nats {
    /// Starts one and waits until it accepts connections.
    pub fn start() -> Nats {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let conf = dir.path().join("nats.conf");
        // A sync page can pass NATS's default 1 MiB payload limit. JetStream keeps the
        // dispatch pools' key-value bucket.
        std::fs::write(
            &conf,
            format!(
                "listen: {addr}\nmax_payload: 8MB\njetstream {{ store_dir: {:?} }}\n",
                dir.path().join("jetstream").display().to_string()
            ),
        )
        .expect("conf");
        let child = spawn_nats(&conf, addr);
        Nats {
            child,
            addr,
            conf,
            _dir: dir,
        }
    }

    /// Kills it (SIGKILL: every connection drops at once), waits `down`, and starts it
    /// again on the same port.
    pub fn restart(&mut self, down: Duration) {
        self.kill();
        std::thread::sleep(down);
        self.start_again();
    }

    /// Kills it (SIGKILL); [`Nats::start_again`] brings it back.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port, after [`Nats::kill`].
    pub fn start_again(&mut self) {
        self.child = spawn_nats(&self.conf, self.addr);
    }
}

/// Starts `nats-server -c conf` and waits until it accepts connections on `addr`.
fn spawn_nats(conf: &std::path::Path, addr: SocketAddr) -> Child {
    let child = Command::new("nats-server")
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server (scripts/setup.sh installs Debian's)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "nats-server did not start on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three (or `n`) nodes and their NATS server.
pub struct Cluster {
    pub nodes: Vec<TestServer>,
    pub nats: Nats,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` nodes of [`CORES`] cores each (kernel sockets on loopback), node 0
    /// first (its key file is copied to the others), and waits until every node can
    /// write on every other. `extra` goes into each node's config before `[cluster]`.
    pub fn start(n: u8, extra: &str) -> Cluster {
        Cluster::start_with(n, extra, "")
    }

    /// [`Cluster::start`], with `cluster_extra` added to each node's `[cluster]` table.
    pub fn start_with(n: u8, extra: &str, cluster_extra: &str) -> Cluster {
        let nats = Nats::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut nodes: Vec<TestServer> = Vec::new();
        for node in 0..n {
            let data: PathBuf = dir.path().join(format!("node{node}"));
            std::fs::create_dir_all(&data).expect("data dir");
            if let Some(first) = nodes.first() {
                std::fs::copy(first.data_dir().join("keys"), data.join("keys")).expect("keys");
            }
            let config = format!(
                "cores = [0, 1]\nownership = \"per-core\"\nrate_limit_per_second = 0\n{extra}\n\
                 [cluster]\nnats_url = \"nats://{}\"\nname = \"test\"\nnodes = {n}\nnode = {node}\n\
                 heartbeat_ms = 100\nnode_timeout_ms = 1000\nrequest_timeout_ms = 2000\n\
                 {cluster_extra}",
                nats.addr
            );
            nodes.push(TestServer::start_in(Dataplane::Kernel, &data, &config));
        }
        let cluster = Cluster {
            nodes,
            nats,
            _dir: dir,
        };
        cluster.wait_until_connected();
        cluster
    }

    /// The node that owns `conversation`'s partition.
    pub fn owner(&self, conversation: ConversationKey) -> usize {
        let partitions = Partitions::new(DEFAULT_PARTITIONS).expect("partitions");
        let total = u16::from(CORES) * self.nodes.len() as u16;
        usize::from(partitions.of(conversation).0 % total / u16::from(CORES))
    }

    /// A peer of `user` whose 1:1 chat with them node `node` owns.
    pub fn peer_owned_by(&self, user: u64, node: usize, from: u64) -> u64 {
        (from..)
            .find(|&peer| {
                peer != user
                    && self.owner(ConversationKey::single(UserId(user), UserId(peer))) == node
            })
            .expect("a peer")
    }

    /// Waits until a client on every node has written on every node (the nodes have
    /// heard each other's heartbeats).
    pub fn wait_until_connected(&self) {
        let probe = 990_000u64;
        for (i, server) in self.nodes.iter().enumerate() {
            let user = probe + i as u64;
            let mut c = TestClient::login(server.addr, &server.token(user, "probe"), user, "probe");
            for node in 0..self.nodes.len() {
                let peer = self.peer_owned_by(user, node, probe + 100);
                send_until_acked(
                    &mut c,
                    single(peer),
                    1 + node as u64,
                    "probe",
                    Duration::from_secs(20),
                );
            }
        }
    }
}

/// The 1:1 chat with `peer`.
pub fn single(peer: u64) -> pb::ConversationId {
    pb::ConversationId {
        kind: pb::ConversationKind::Single as i32,
        id: peer,
    }
}

/// Sends `text` as `client_msg_id` until acked, sending it again (same id) after each
/// `SERVER_BUSY` (an owner node down or not yet heard from), for at most `limit`.
pub fn send_until_acked(
    c: &mut TestClient,
    conversation: pb::ConversationId,
    client_msg_id: u64,
    text: &str,
    limit: Duration,
) -> pb::Ack {
    send_counting_refusals(c, conversation, client_msg_id, text, limit).0
}

/// [`send_until_acked`], also returning how many times it was refused `SERVER_BUSY`.
pub fn send_counting_refusals(
    c: &mut TestClient,
    conversation: pb::ConversationId,
    client_msg_id: u64,
    text: &str,
    limit: Duration,
) -> (pb::Ack, u32) {
    let deadline = Instant::now() + limit;
    let mut refused = 0;
    loop {
        let frame = c.request(pb::SendMessage {
            client_msg_id,
            conversation: Some(conversation),
            content: petrel_proto::wire::encode_content(&super::client::text_content(text)),
            ..Default::default()
        });
        match frame.body {
            Body::Ack(ack) => return (ack, refused),
            Body::Error(e) if e.code == pb::ErrorCode::ServerBusy as i32 => {
                refused += 1;
                assert!(
                    Instant::now() < deadline,
                    "still SERVER_BUSY after {limit:?}: {e:?}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            other => panic!("send {client_msg_id} failed: {other:?}"),
        }
    }
}

/// A client that follows the cluster through restarts, as an app with the SDK would: on a
/// `Kick` or a closed connection it logs in again — first on the nodes the kick's
/// `reconnect_to` names, then on the cluster's nodes in turn — and sends the unacked
/// message again with the same id.
pub struct Roamer {
    user: u64,
    token: String,
    nodes: Vec<SocketAddr>,
    next: usize,
    hints: std::collections::VecDeque<SocketAddr>,
    client: Option<TestClient>,
    /// Logins, the first included.
    pub logins: u32,
    /// Logins on a node a kick named.
    pub hinted_logins: u32,
    /// `Kick{SERVER_SHUTDOWN}`s that named where to go.
    pub hinted_kicks: u32,
}

impl Roamer {
    /// `user` (with `token`, good on every node), first on `nodes[first]`.
    pub fn new(user: u64, token: String, nodes: Vec<SocketAddr>, first: usize) -> Roamer {
        Roamer {
            user,
            token,
            next: first % nodes.len(),
            nodes,
            hints: Default::default(),
            client: None,
            logins: 0,
            hinted_logins: 0,
            hinted_kicks: 0,
        }
    }

    fn connect(&mut self, deadline: Instant) {
        while self.client.is_none() {
            assert!(
                Instant::now() < deadline,
                "user {} found no node",
                self.user
            );
            let (addr, hinted) = match self.hints.pop_front() {
                Some(addr) => (addr, true),
                None => {
                    let addr = self.nodes[self.next];
                    self.next = (self.next + 1) % self.nodes.len();
                    (addr, false)
                }
            };
            match try_login(addr, &self.token, self.user) {
                Some(c) => {
                    self.client = Some(c);
                    self.logins += 1;
                    if hinted {
                        self.hinted_logins += 1;
                    }
                }
                None => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Sends `text` as `client_msg_id` to `conversation` until acked, through refusals
    /// (`SERVER_BUSY`, `SHUTTING_DOWN`), kicks and closed connections.
    pub fn send(
        &mut self,
        conversation: pb::ConversationId,
        client_msg_id: u64,
        text: &str,
        limit: Duration,
    ) -> pb::Ack {
        let deadline = Instant::now() + limit;
        let body = pb::SendMessage {
            client_msg_id,
            conversation: Some(conversation),
            content: petrel_proto::wire::encode_content(&super::client::text_content(text)),
            ..Default::default()
        };
        loop {
            self.connect(deadline);
            let c = self.client.as_mut().expect("connected");
            let rid = (client_msg_id % 1_000_000) as u32 + 1;
            let sent = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                c.send(&petrel_proto::Frame::new(rid, body.clone()))
            }));
            if sent.is_err() {
                self.client = None;
                continue;
            }
            loop {
                let c = self.client.as_mut().expect("connected");
                let next = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    c.try_recv(Duration::from_secs(5))
                }));
                match next {
                    Ok(Ok(Some(f))) if f.flags.is_response() && f.request_id == rid => {
                        match f.body {
                            Body::Ack(ack) => return ack,
                            Body::Error(e)
                                if e.code == pb::ErrorCode::ServerBusy as i32
                                    || e.code == pb::ErrorCode::ShuttingDown as i32 =>
                            {
                                assert!(Instant::now() < deadline, "still refused: {e:?}");
                                std::thread::sleep(Duration::from_millis(100));
                                break;
                            }
                            other => panic!("send {client_msg_id} failed: {other:?}"),
                        }
                    }
                    Ok(Ok(Some(f))) => {
                        if let Body::Kick(kick) = f.body {
                            if kick.reason == pb::KickReason::ServerShutdown as i32
                                && !kick.reconnect_to.is_empty()
                            {
                                self.hinted_kicks += 1;
                            }
                            self.hints = kick
                                .reconnect_to
                                .iter()
                                .filter_map(|a| a.parse().ok())
                                .collect();
                            self.client = None;
                            break;
                        }
                    }
                    // Closed, reset, or silent for 5 s: log in again.
                    _ => {
                        self.client = None;
                        break;
                    }
                }
            }
        }
    }
}

/// Logs `user` in on `addr`, or `None` if the node does not take it now.
fn try_login(addr: SocketAddr, token: &str, user: u64) -> Option<TestClient> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    let mut c = TestClient::over(stream);
    c.user = user;
    let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        c.request(pb::Login {
            token: token.into(),
            user_id: user,
            device_id: "roamer".into(),
            platform: pb::Platform::Desktop as i32,
            client_version: "petrel-tests".into(),
            attempt: 0,
        })
    }))
    .ok()?;
    match answer.body {
        Body::LoginResult(r) => {
            c.session_id = r.session_id;
            Some(c)
        }
        _ => None,
    }
}

//! Shards run in a thread (one shard) or in worker processes (`petrel bench` re-executed
//! with `--worker I/W`, one per ~18,000 connections, because a process here holds at
//! most 20,000 file descriptors). Either way the coordinator sees the same messages.
//!
//! The worker protocol is JSON lines: the parent writes the [`ShardJob`] as the first
//! line of the worker's stdin and later `start <unix-ns>`; the worker prints
//! [`ToParent`] lines on stdout (nothing else goes to its stdout).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};

use anyhow::{Context, bail};
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use serde::{Deserialize, Serialize};

use super::driver::{self, Phase, ShardControl, ShardJob};
use super::stats::{Counts, Stats, StatsWire};

/// A shard's message to the coordinator.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToParent {
    /// Live counters.
    Progress {
        /// Where the shard is.
        phase: Phase,
        /// Its counters so far.
        counts: Counts,
    },
    /// Logged in and set up; waiting for `start`.
    Ready,
    /// Finished.
    Result(Box<StatsWire>),
    /// Gave up.
    Failed(String),
}

/// One running shard, in a thread or a process.
pub enum ShardHandle {
    /// In this process.
    Thread {
        /// Where to send the start time.
        start: Sender<u64>,
    },
    /// A worker process.
    Process {
        /// The child (killed on drop if still running).
        child: Child,
        /// Its stdin, for `start`.
        stdin: ChildStdin,
    },
}

impl ShardHandle {
    /// The worker's process id (this process for a thread).
    pub fn pid(&self) -> u32 {
        match self {
            ShardHandle::Thread { .. } => std::process::id(),
            ShardHandle::Process { child, .. } => child.id(),
        }
    }

    /// Tells the shard to start at `start_ns`.
    pub fn start(&mut self, start_ns: u64) -> anyhow::Result<()> {
        match self {
            ShardHandle::Thread { start } => start
                .send(start_ns)
                .map_err(|_| anyhow::anyhow!("the load-generating thread has stopped")),
            ShardHandle::Process { stdin, .. } => {
                writeln!(stdin, "start {start_ns}").context("cannot write to a worker")?;
                stdin.flush().context("cannot write to a worker")
            }
        }
    }
}

impl Drop for ShardHandle {
    fn drop(&mut self) {
        if let ShardHandle::Process { child, .. } = self
            && child.try_wait().ok().flatten().is_none()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

struct ChannelControl {
    index: usize,
    to_parent: Sender<(usize, ToParent)>,
    start: Receiver<u64>,
}

impl ShardControl for ChannelControl {
    fn ready(&mut self) -> anyhow::Result<()> {
        let _ = self.to_parent.send((self.index, ToParent::Ready));
        Ok(())
    }
    fn poll_start(&mut self) -> anyhow::Result<Option<u64>> {
        match self.start.try_recv() {
            Ok(t) => Ok(Some(t)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => bail!("the coordinator went away"),
        }
    }
    fn progress(&mut self, phase: Phase, counts: &Counts) {
        let _ = self.to_parent.send((
            self.index,
            ToParent::Progress {
                phase,
                counts: *counts,
            },
        ));
    }
}

fn finish(result: anyhow::Result<Stats>) -> ToParent {
    match result.and_then(|s| s.to_wire()) {
        Ok(wire) => ToParent::Result(Box::new(wire)),
        Err(e) => ToParent::Failed(format!("{e:#}")),
    }
}

/// Runs shard `index` in a thread of this process.
pub fn spawn_thread(
    index: usize,
    job: ShardJob,
    to_parent: Sender<(usize, ToParent)>,
) -> anyhow::Result<ShardHandle> {
    let (start_tx, start_rx) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("petrel-bench".into())
        .spawn(move || {
            let mut ctl = ChannelControl {
                index,
                to_parent: to_parent.clone(),
                start: start_rx,
            };
            let result = driver::run_shard(&job, &mut ctl);
            let _ = to_parent.send((index, finish(result)));
        })
        .context("cannot start the load-generating thread")?;
    Ok(ShardHandle::Thread { start: start_tx })
}

/// Runs shard `index` in a worker process.
pub fn spawn_process(
    index: usize,
    job: &ShardJob,
    scenario: &str,
    to_parent: Sender<(usize, ToParent)>,
) -> anyhow::Result<ShardHandle> {
    let exe = std::env::current_exe().context("cannot find the petrel executable")?;
    let mut child = Command::new(exe)
        .args(["bench", scenario, "--quiet", "--worker"])
        .arg(format!("{index}/{}", job.shard.count))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start a load-generating worker process")?;
    let mut stdin = child.stdin.take().context("no worker stdin")?;
    let stdout = child.stdout.take().context("no worker stdout")?;
    serde_json::to_writer(&mut stdin, job).context("cannot write a worker's job")?;
    writeln!(stdin).context("cannot write a worker's job")?;
    stdin.flush()?;
    std::thread::spawn(move || {
        let mut finished = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let msg = match serde_json::from_str::<ToParent>(&line) {
                Ok(m) => m,
                Err(e) => ToParent::Failed(format!("unreadable worker output {line:?}: {e}")),
            };
            finished |= matches!(msg, ToParent::Result(_) | ToParent::Failed(_));
            if to_parent.send((index, msg)).is_err() {
                return;
            }
        }
        if !finished {
            let _ = to_parent.send((
                index,
                ToParent::Failed("the worker process exited without a result".into()),
            ));
        }
    });
    Ok(ShardHandle::Process { child, stdin })
}

struct StdioControl {
    start: Receiver<u64>,
}

fn print_line(msg: &ToParent) {
    let mut out = std::io::stdout().lock();
    if serde_json::to_writer(&mut out, msg).is_ok() {
        let _ = writeln!(out);
        let _ = out.flush();
    }
}

impl ShardControl for StdioControl {
    fn ready(&mut self) -> anyhow::Result<()> {
        print_line(&ToParent::Ready);
        Ok(())
    }
    fn poll_start(&mut self) -> anyhow::Result<Option<u64>> {
        match self.start.try_recv() {
            Ok(t) => Ok(Some(t)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => bail!("the coordinator closed our stdin"),
        }
    }
    fn progress(&mut self, phase: Phase, counts: &Counts) {
        print_line(&ToParent::Progress {
            phase,
            counts: *counts,
        });
    }
}

/// Entry point of a worker process (`--worker I/W`): job from stdin, results on stdout.
pub fn worker_main() -> anyhow::Result<()> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let mut stdin = BufReader::new(std::io::stdin());
    let mut line = String::new();
    stdin
        .read_line(&mut line)
        .context("cannot read the job from stdin")?;
    let job: ShardJob = serde_json::from_str(&line).context(
        "--worker is internal to petrel bench: stdin must start with the job its parent writes",
    )?;
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let mut line = String::new();
        while stdin.read_line(&mut line).is_ok_and(|n| n > 0) {
            if let Some(t) = line.trim().strip_prefix("start ")
                && let Ok(t) = t.parse::<u64>()
            {
                let _ = tx.send(t);
            }
            line.clear();
        }
    });
    let mut ctl = StdioControl { start: rx };
    print_line(&finish(driver::run_shard(&job, &mut ctl)));
    Ok(())
}

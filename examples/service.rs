//! A small real service with stallscope added as the README says: a Redis-protocol (RESP2)
//! key-value server that a stock `redis-cli` or `redis-benchmark -t set,get,ping` can talk to,
//! its own load generator, and blocking hazards behind a switch.
//!
//! ```text
//! cargo run --example service                              # serve, full mode (the layer)
//! cargo run --example service -- --production              # serve, production mode (poll hooks)
//! cargo run --example service -- --hazard std-lock         # serve with a hazard switched on
//! cargo run --example service -- load --addr 127.0.0.1:6379 --connections 50 --seconds 3
//! cargo run --example service -- hog --seconds 3           # spin every core, to load the machine
//! ```
//!
//! **Serving**: `service [--production] [--hazard NAME] [--addr ADDR] [--workers N]` binds
//! `ADDR` (default `127.0.0.1:6379`; port 0 picks a free one), prints `listening on ADDR` on
//! stdout once bound, and serves one tokio task per connection on a multi-thread runtime of
//! `N` workers (default: one per core). It stops on a client's `SHUTDOWN`, Ctrl-C or SIGTERM;
//! then the runtime shuts down and the guard drops, which logs stallscope's summary.
//!
//! The log is the README snippet's fmt layer: on stdout (`fmt::layer()`'s default), after the
//! `listening on` line, filtered by `RUST_LOG`. Run with `RUST_LOG=info`: with `RUST_LOG` unset,
//! `EnvFilter::from_default_env()` lets errors only through, and none of stallscope's WARN
//! lines.
//!
//! Commands: PING, ECHO, GET, SET, DEL, INCR, CLIENT ID (the connection's tokio task id: the
//! `task.id` of stallscope's reports), CONFIG GET `save` and `appendonly` (for
//! redis-benchmark), COMMAND (an empty table, for redis-cli), QUIT, SHUTDOWN. Pipelined
//! requests are answered in order, in one write.
//!
//! **The two modes**, each exactly as the README's snippet: full mode (default) puts
//! `stallscope::layer()` in the registry next to the fmt layer and reads tokio's task spans;
//! `--production` builds `stallscope::Builder::from_env()?.build()?`, keeps it out of the
//! subscriber (a plain fmt layer), and installs its poll hooks with `instrument_runtime`.
//!
//! **Hazards** (`--hazard NAME`) fire only on requests for the key `hazard`, so the load
//! generator's traffic stays clean. Each line that blocks is marked `// HAZARD: NAME`, at its
//! end or, where a line opens a block, on the line above it (the tests find the lines by that
//! mark; a loop has several, as a stack sample may land on any of them):
//!
//! | NAME | request | what blocks the worker |
//! |---|---|---|
//! | `cpu` | GET | a checksum computed in a busy loop for 300 ms |
//! | `sleep` | GET | `std::thread::sleep(200 ms)`, a retry back-off written the synchronous way |
//! | `block-on` | GET | `futures::executor::block_on` of a 200 ms `spawn_blocking` job: async code called from sync code |
//! | `std-lock` | SET, then GET from another connection | SET holds the store's `std::sync::Mutex` across 300 ms of synchronous work; a GET meanwhile waits for the lock on its own worker: two stalls at once |
//! | `file-io` | SET | an append-only file written and fsynced record by record, 200 ms of it (one fsync takes milliseconds on a disk, nothing on tmpfs: hence to a deadline) |
//! | `dns` | GET | `ToSocketAddrs` lookups of `localhost` for 200 ms (offline, one answers from /etc/hosts in microseconds; a real resolver takes a round trip, or seconds) |
//! | `spawn-blocking` | GET | a 1 s job on a blocking pool capped at 2 threads: concurrent requests queue for it |
//! | `runtime-per-conn` | any | every connection is served on a new OS thread by its own current-thread runtime |
//!
//! The store is a `std::sync::Mutex<HashMap>` in both modes, as an application has it: the
//! README offers `stallscope::sync::Mutex` as a drop-in that measures lock waits, but does not
//! ask a service to switch. So a GET waiting for the lock is seen as a slow poll of its task (the
//! blocking line is the `lock()` call), not as a "blocking lock wait", which only the drop-in
//! reports. The `spawn-blocking` hazard goes through `stallscope::task::spawn_blocking`, the
//! README's drop-in that production mode needs to see blocking-pool waits (in full mode it is
//! tokio's own). In production mode the runtimes built per connection get the poll hooks too.
//!
//! **Load**: `service load --addr ADDR [--connections 50] [--seconds 3] [--mix set,get]` drives
//! the server over TCP on a two-worker runtime of its own (no stallscope), one request in flight
//! per connection, cycling through the mix (`set`, `get`, `ping`) over 100 keys per connection,
//! and prints `load: ... requests/s, p99 ...`. It exits with 1 if any request failed.
//!
//! **Hog**: `service hog [--seconds 3] [--threads N]` spins `N` threads (default: one per core)
//! in a CPU-bound loop, to make the server compete for the cores.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};
use tracing_subscriber::prelude::*;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Requests for this key trigger the hazard switched on with `--hazard`.
const HAZARD_KEY: &[u8] = b"hazard";
const CPU_BOUND_TIME: Duration = Duration::from_millis(300);
const SLEEP_TIME: Duration = Duration::from_millis(200);
const BLOCK_ON_TIME: Duration = Duration::from_millis(200);
const LOCK_HELD_FOR: Duration = Duration::from_millis(300);
const FILE_IO_TIME: Duration = Duration::from_millis(200);
const DNS_TIME: Duration = Duration::from_millis(200);
/// A job long enough that two of them occupy the capped pool while more requests queue.
const BLOCKING_JOB_TIME: Duration = Duration::from_secs(1);
const BLOCKING_POOL_THREADS: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Hazard {
    Cpu,
    Sleep,
    BlockOn,
    StdLock,
    FileIo,
    Dns,
    SpawnBlocking,
    RuntimePerConn,
}

impl std::str::FromStr for Hazard {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        Ok(match name {
            "cpu" => Hazard::Cpu,
            "sleep" => Hazard::Sleep,
            "block-on" => Hazard::BlockOn,
            "std-lock" => Hazard::StdLock,
            "file-io" => Hazard::FileIo,
            "dns" => Hazard::Dns,
            "spawn-blocking" => Hazard::SpawnBlocking,
            "runtime-per-conn" => Hazard::RuntimePerConn,
            other => {
                return Err(format!(
                    "unknown hazard {other:?}; use cpu, sleep, block-on, std-lock, file-io, dns, \
                     spawn-blocking or runtime-per-conn"
                ))
            }
        })
    }
}

struct ServeArgs {
    production: bool,
    hazard: Option<Hazard>,
    addr: String,
    workers: Option<usize>,
}

struct LoadArgs {
    addr: String,
    connections: usize,
    duration: Duration,
    mix: Vec<Op>,
}

#[derive(Clone, Copy)]
enum Op {
    Set,
    Get,
    Ping,
}

enum Subcommand {
    Serve(ServeArgs),
    Load(LoadArgs),
    Hog { duration: Duration, threads: usize },
}

/// The next argument as a value of `flag`.
fn value<T: std::str::FromStr>(
    it: &mut impl Iterator<Item = String>,
    flag: &str,
) -> Result<T, String> {
    it.next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{flag} takes a value"))
}

fn seconds(it: &mut impl Iterator<Item = String>) -> Result<Duration, String> {
    Duration::try_from_secs_f64(value(it, "--seconds")?).map_err(|e| format!("--seconds: {e}"))
}

fn parse_args() -> Result<Subcommand, String> {
    let mut it = std::env::args().skip(1).peekable();
    match it.peek().map(String::as_str) {
        Some("load") => {
            it.next();
            let mut args = LoadArgs {
                addr: "127.0.0.1:6379".into(),
                connections: 50,
                duration: Duration::from_secs(3),
                mix: vec![Op::Set, Op::Get],
            };
            while let Some(arg) = it.next() {
                match arg.as_str() {
                    "--addr" => args.addr = value(&mut it, "--addr")?,
                    "--connections" => args.connections = value(&mut it, "--connections")?,
                    "--seconds" => args.duration = seconds(&mut it)?,
                    "--mix" => {
                        let mix: String = value(&mut it, "--mix")?;
                        args.mix = mix
                            .split(',')
                            .map(|op| match op {
                                "set" => Ok(Op::Set),
                                "get" => Ok(Op::Get),
                                "ping" => Ok(Op::Ping),
                                other => Err(format!("--mix takes set, get, ping, not {other:?}")),
                            })
                            .collect::<Result<_, _>>()?;
                    }
                    other => return Err(format!(
                        "unknown argument {other:?} to load; use --addr, --connections, --seconds, --mix"
                    )),
                }
            }
            Ok(Subcommand::Load(args))
        }
        Some("hog") => {
            it.next();
            let mut duration = Duration::from_secs(3);
            let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            while let Some(arg) = it.next() {
                match arg.as_str() {
                    "--seconds" => duration = seconds(&mut it)?,
                    "--threads" => threads = value(&mut it, "--threads")?,
                    other => {
                        return Err(format!(
                            "unknown argument {other:?} to hog; use --seconds, --threads"
                        ))
                    }
                }
            }
            Ok(Subcommand::Hog { duration, threads })
        }
        _ => {
            let mut args = ServeArgs {
                production: false,
                hazard: None,
                addr: "127.0.0.1:6379".into(),
                workers: None,
            };
            while let Some(arg) = it.next() {
                match arg.as_str() {
                    "--production" => args.production = true,
                    "--hazard" => {
                        args.hazard = Some(it.next().ok_or("--hazard takes a name")?.parse()?)
                    }
                    "--addr" => args.addr = value(&mut it, "--addr")?,
                    "--workers" => args.workers = Some(value(&mut it, "--workers")?),
                    other => {
                        return Err(format!(
                        "unknown argument {other:?}; use --production, --hazard NAME, --addr ADDR, \
                         --workers N, or the subcommands load and hog"
                    ))
                    }
                }
            }
            Ok(Subcommand::Serve(args))
        }
    }
}

fn main() {
    let result = match parse_args() {
        Ok(Subcommand::Serve(args)) => serve(args),
        Ok(Subcommand::Load(args)) => load(args),
        Ok(Subcommand::Hog { duration, threads }) => {
            hog(duration, threads);
            Ok(())
        }
        Err(usage) => {
            eprintln!("service: {usage}");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("service: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------
// The server.

fn serve(args: ServeArgs) -> Result<(), Error> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // Both modes keep a guard until main returns: declared before the runtime, it drops after
    // the runtime has shut down, so the summary counts every poll.
    let (_guard, production) = if args.production {
        // Production mode, as the README's snippet: the instance out of the subscriber, its
        // poll hooks on the runtime. Shared, for the runtimes built per connection.
        let stallscope = Arc::new(stallscope::Builder::from_env()?.build()?);
        let guard = stallscope.guard();
        stallscope.instrument_runtime(&mut builder);
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_filter(tracing_subscriber::EnvFilter::from_default_env()),
            )
            .init();
        (guard, Some(stallscope))
    } else {
        // Full mode, as the README's "Add it to your service".
        let stallscope = stallscope::layer();
        let guard = stallscope.guard();
        tracing_subscriber::registry()
            .with(stallscope)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_filter(tracing_subscriber::EnvFilter::from_default_env()),
            )
            .init();
        (guard, None)
    };
    if let Some(workers) = args.workers {
        builder.worker_threads(workers);
    }
    if args.hazard == Some(Hazard::SpawnBlocking) {
        builder.max_blocking_threads(BLOCKING_POOL_THREADS);
    }
    let runtime = builder.enable_all().build()?;
    let server = Arc::new(Server {
        store: Mutex::new(HashMap::new()),
        hazard: args.hazard,
        shutdown: tokio::sync::Notify::new(),
        append_only_file: std::env::temp_dir()
            .join(format!("stallscope-service-{}.aof", std::process::id())),
        production,
    });
    let served = runtime.block_on(accept_loop(&args.addr, server.clone()));
    // Connections still open are dropped with the runtime; a worker still inside a hazard is
    // waited for.
    drop(runtime);
    let _ = std::fs::remove_file(&server.append_only_file);
    served
}

struct Server {
    store: Mutex<HashMap<Vec<u8>, Vec<u8>>>,
    hazard: Option<Hazard>,
    /// Notified by a client's SHUTDOWN.
    shutdown: tokio::sync::Notify,
    /// Where the `file-io` hazard appends.
    append_only_file: PathBuf,
    /// Production mode's instance, to instrument the runtimes built per connection.
    production: Option<Arc<stallscope::StallscopeLayer>>,
}

async fn accept_loop(addr: &str, server: Arc<Server>) -> Result<(), Error> {
    let listener = TcpListener::bind(addr).await?;
    // Tests and scripts read this line to find the port.
    println!("listening on {}", listener.local_addr()?);
    info!(hazard = ?server.hazard, "serving on {}", listener.local_addr()?);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let socket = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => socket,
                // Out of file descriptors and the like: the next accept may succeed.
                Err(e) => {
                    warn!("accept: {e}");
                    continue;
                }
            },
            _ = server.shutdown.notified() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        };
        let _ = socket.set_nodelay(true);
        let server = server.clone();
        if server.hazard == Some(Hazard::RuntimePerConn) {
            runtime_per_connection(socket, server)?;
        } else {
            tokio::spawn(async move {
                if let Err(e) = serve_connection(socket, &server).await {
                    info!("connection closed: {e}");
                }
            });
        }
    }
    info!("shutting down");
    Ok(())
}

/// The `runtime-per-conn` hazard: a thread and a runtime for each connection, where one
/// runtime's tasks would do.
fn runtime_per_connection(socket: TcpStream, server: Arc<Server>) -> Result<(), Error> {
    let socket = socket.into_std()?;
    std::thread::spawn(move || {
        let mut builder = tokio::runtime::Builder::new_current_thread();
        if let Some(stallscope) = &server.production {
            stallscope.instrument_runtime(&mut builder);
        }
        let runtime = builder
            .enable_all()
            .build()
            .expect("a runtime per connection");
        let connection = async { serve_connection(TcpStream::from_std(socket)?, &server).await };
        let served = runtime.block_on(connection); // HAZARD: runtime-per-conn
        if let Err(e) = served {
            info!("connection closed: {e}");
        }
    });
    Ok(())
}

/// Reads commands and answers them in order until the client closes the connection.
async fn serve_connection(socket: TcpStream, server: &Server) -> Result<(), Error> {
    let (read, mut write) = socket.into_split();
    let mut read = BufReader::new(read);
    let mut out = Vec::new();
    while let Some(command) = read_command(&mut read).await? {
        let (reply, then) = server.execute(&command).await;
        reply.encode(&mut out);
        // Pipelined requests already read are answered in one write.
        if read.buffer().is_empty() || then.is_some() {
            write.write_all(&out).await?;
            out.clear();
        }
        match then {
            Some(After::Close) => break,
            Some(After::Shutdown) => {
                server.shutdown.notify_one();
                break;
            }
            None => {}
        }
    }
    Ok(())
}

/// What a command asks of the connection once answered.
enum After {
    Close,
    Shutdown,
}

impl Server {
    async fn execute(&self, command: &[Vec<u8>]) -> (Reply, Option<After>) {
        let name = command[0].to_ascii_uppercase();
        let args = &command[1..];
        let reply = match (name.as_slice(), args) {
            (b"PING", []) => Reply::Simple("PONG"),
            (b"PING" | b"ECHO", [message]) => Reply::Bulk(Some(message.clone())),
            (b"GET", [key]) => Reply::Bulk(self.get(key).await),
            // SET's options (EX, NX, ...) are not supported: an error, not a silent SET.
            (b"SET", [key, value]) => {
                self.set(key, value);
                Reply::Simple("OK")
            }
            (b"DEL", keys) if !keys.is_empty() => Reply::Integer(self.delete(keys)),
            (b"INCR", [key]) => match self.increment(key) {
                Ok(n) => Reply::Integer(n),
                Err(e) => Reply::Error(e.into()),
            },
            (b"CLIENT", [sub]) if sub.eq_ignore_ascii_case(b"ID") => match tokio::task::try_id() {
                Some(id) => Reply::Integer(id.to_string().parse().unwrap_or(0)),
                None => Reply::Error("ERR this connection is not served by a task".into()),
            },
            // redis-benchmark reads `save` and `appendonly`: no snapshots, no append-only file
            // (the `file-io` hazard's is not Redis's). Other parameters are unknown.
            (b"CONFIG", [sub, parameter]) if sub.eq_ignore_ascii_case(b"GET") => {
                let value: &[u8] = match parameter.to_ascii_lowercase().as_slice() {
                    b"save" => b"",
                    b"appendonly" => b"no",
                    _ => return (Reply::Array(vec![]), None),
                };
                let bulk = |data: &[u8]| Reply::Bulk(Some(data.to_vec()));
                Reply::Array(vec![bulk(parameter), bulk(value)])
            }
            // redis-cli reads the command table for its hints: none here.
            (b"COMMAND", _) => Reply::Array(vec![]),
            (b"QUIT", []) => return (Reply::Simple("OK"), Some(After::Close)),
            (b"SHUTDOWN", _) => return (Reply::Simple("OK"), Some(After::Shutdown)),
            (b"PING" | b"ECHO" | b"GET" | b"SET" | b"DEL" | b"INCR" | b"CLIENT" | b"QUIT", _) => {
                Reply::Error(format!(
                    "ERR wrong number of arguments for '{}' command",
                    String::from_utf8_lossy(&command[0]).to_lowercase()
                ))
            }
            _ => Reply::Error(format!(
                "ERR unknown command '{}'",
                String::from_utf8_lossy(&command[0])
            )),
        };
        (reply, None)
    }

    async fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        if key == HAZARD_KEY {
            self.hazard_in_get().await;
        }
        // Under `std-lock`, a GET here waits while a SET of the hazard key holds the lock.
        let store = self.store.lock().unwrap(); // HAZARD: std-lock waiter
        store.get(key).cloned()
    }

    fn set(&self, key: &[u8], value: &[u8]) {
        let mut store = self.store.lock().unwrap();
        store.insert(key.to_vec(), value.to_vec());
        if key == HAZARD_KEY && self.hazard == Some(Hazard::StdLock) {
            // Synchronous work (say, writing a snapshot) with the lock held: every GET waits.
            std::thread::sleep(LOCK_HELD_FOR); // HAZARD: std-lock holder
        }
        drop(store);
        if key == HAZARD_KEY && self.hazard == Some(Hazard::FileIo) {
            if let Err(e) = self.append_synced(key, value) {
                warn!("append-only file {}: {e}", self.append_only_file.display());
            }
        }
    }

    fn delete(&self, keys: &[Vec<u8>]) -> i64 {
        let mut store = self.store.lock().unwrap();
        keys.iter().filter(|k| store.remove(*k).is_some()).count() as i64
    }

    fn increment(&self, key: &[u8]) -> Result<i64, &'static str> {
        const NOT_AN_INTEGER: &str = "ERR value is not an integer or out of range";
        let mut store = self.store.lock().unwrap();
        let value = store.entry(key.to_vec()).or_insert_with(|| b"0".to_vec());
        let n: i64 = std::str::from_utf8(value)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(NOT_AN_INTEGER)?;
        let n = n.checked_add(1).ok_or(NOT_AN_INTEGER)?;
        *value = n.to_string().into_bytes();
        Ok(n)
    }

    /// The hazards that fire in a GET of the hazard key.
    async fn hazard_in_get(&self) {
        match self.hazard {
            Some(Hazard::Cpu) => {
                checksum_for(CPU_BOUND_TIME);
            }
            Some(Hazard::Sleep) => std::thread::sleep(SLEEP_TIME), // HAZARD: sleep
            Some(Hazard::BlockOn) => {
                // Waiting for a job the async way's result from synchronous code.
                let job = tokio::task::spawn_blocking(|| std::thread::sleep(BLOCK_ON_TIME));
                futures::executor::block_on(job).expect("block_on's job"); // HAZARD: block-on
            }
            Some(Hazard::Dns) => resolve_for(DNS_TIME),
            Some(Hazard::SpawnBlocking) => {
                let report = || std::thread::sleep(BLOCKING_JOB_TIME);
                stallscope::task::spawn_blocking(report) // HAZARD: spawn-blocking
                    .await
                    .expect("blocking job");
            }
            _ => {}
        }
    }

    /// The `file-io` hazard: append-only-file persistence, synced on every record, on the
    /// worker thread.
    fn append_synced(&self, key: &[u8], value: &[u8]) -> std::io::Result<()> {
        let mut record = Vec::new();
        Reply::Array(vec![
            Reply::Bulk(Some(b"SET".to_vec())),
            Reply::Bulk(Some(key.to_vec())),
            Reply::Bulk(Some(value.to_vec())),
        ])
        .encode(&mut record);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.append_only_file)?;
        let started = Instant::now();
        // HAZARD: file-io
        while started.elapsed() < FILE_IO_TIME {
            file.write_all(&record)?; // HAZARD: file-io
            file.sync_data()?; // HAZARD: file-io
        }
        Ok(())
    }
}

/// The `cpu` hazard: a checksum computed on the worker thread, in a loop for `duration`.
fn checksum_for(duration: Duration) -> u64 {
    let started = Instant::now();
    let mut hasher = DefaultHasher::new();
    let mut rounds = 0u64;
    // HAZARD: cpu
    while started.elapsed() < duration {
        // HAZARD: cpu
        for round in rounds..rounds + 10_000 {
            round.hash(&mut hasher); // HAZARD: cpu
        }
        rounds += 10_000; // HAZARD: cpu
    }
    hasher.finish()
}

/// The `dns` hazard: synchronous name resolution, repeated for `duration`.
fn resolve_for(duration: Duration) {
    let started = Instant::now();
    // HAZARD: dns
    while started.elapsed() < duration {
        let _ = ("localhost", 6379).to_socket_addrs(); // HAZARD: dns
    }
}

// ---------------------------------------------------------------------------------------------
// RESP2, the Redis protocol: both sides.

enum Reply {
    Simple(&'static str),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

impl Reply {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Simple(s) => out.extend_from_slice(format!("+{s}\r\n").as_bytes()),
            Reply::Error(e) => out.extend_from_slice(format!("-{e}\r\n").as_bytes()),
            Reply::Integer(n) => out.extend_from_slice(format!(":{n}\r\n").as_bytes()),
            Reply::Bulk(None) => out.extend_from_slice(b"$-1\r\n"),
            Reply::Bulk(Some(data)) => {
                out.extend_from_slice(format!("${}\r\n", data.len()).as_bytes());
                out.extend_from_slice(data);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Array(items) => {
                out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
                for item in items {
                    item.encode(out);
                }
            }
        }
    }
}

fn protocol_error(what: impl Into<String>) -> Error {
    format!("protocol error: {}", what.into()).into()
}

/// A line without its CRLF, or `None` at the end of the stream.
async fn read_line(read: &mut (impl AsyncBufRead + Unpin)) -> Result<Option<Vec<u8>>, Error> {
    let mut line = Vec::new();
    if read.read_until(b'\n', &mut line).await? == 0 {
        return Ok(None);
    }
    if !line.ends_with(b"\r\n") {
        return Err(protocol_error("a line without CRLF"));
    }
    line.truncate(line.len() - 2);
    Ok(Some(line))
}

/// The number after a line's type byte (`*3`, `$5`, `:42`).
fn length(line: &[u8]) -> Result<i64, Error> {
    std::str::from_utf8(&line[1..])
        .ok()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| protocol_error(format!("bad length {:?}", String::from_utf8_lossy(line))))
}

/// `$len` then `len` bytes and a CRLF.
async fn read_bulk(
    read: &mut (impl AsyncBufRead + Unpin),
    header: &[u8],
) -> Result<Option<Vec<u8>>, Error> {
    let len = length(header)?;
    if len < 0 {
        return Ok(None);
    }
    let mut data = vec![0; len as usize + 2];
    read.read_exact(&mut data).await?;
    data.truncate(len as usize);
    Ok(Some(data))
}

/// One command: an array of bulk strings, as clients send, or an inline command (`PING`
/// typed into `nc`). `None` when the client closed the connection.
async fn read_command(
    read: &mut (impl AsyncBufRead + Unpin),
) -> Result<Option<Vec<Vec<u8>>>, Error> {
    loop {
        let Some(line) = read_line(read).await? else {
            return Ok(None);
        };
        if !line.starts_with(b"*") {
            let words: Vec<Vec<u8>> = line
                .split(u8::is_ascii_whitespace)
                .filter(|w| !w.is_empty())
                .map(<[u8]>::to_vec)
                .collect();
            if words.is_empty() {
                continue;
            }
            return Ok(Some(words));
        }
        let count = length(&line)?;
        let mut command = Vec::new();
        for _ in 0..count {
            let header = read_line(read)
                .await?
                .ok_or_else(|| protocol_error("connection closed inside a command"))?;
            if !header.starts_with(b"$") {
                return Err(protocol_error("a command's arguments are bulk strings"));
            }
            let arg = read_bulk(read, &header)
                .await?
                .ok_or_else(|| protocol_error("a null argument"))?;
            command.push(arg);
        }
        if !command.is_empty() {
            return Ok(Some(command));
        }
    }
}

/// A reply the load generator reads: `Ok` for simple strings, integers and bulk strings,
/// `Err` for an error reply.
async fn read_reply(read: &mut (impl AsyncBufRead + Unpin)) -> Result<Result<(), String>, Error> {
    let line = read_line(read)
        .await?
        .ok_or_else(|| protocol_error("the server closed the connection"))?;
    match line.first() {
        Some(b'+' | b':') => Ok(Ok(())),
        Some(b'-') => Ok(Err(String::from_utf8_lossy(&line[1..]).into_owned())),
        Some(b'$') => read_bulk(read, &line).await.map(|_| Ok(())),
        _ => Err(protocol_error(format!(
            "unexpected reply {:?}",
            String::from_utf8_lossy(&line)
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// The load generator and the CPU hog.

/// Requests per connection's key space: GETs find what earlier SETs stored.
const KEYS_PER_CONNECTION: usize = 100;

/// What one connection did: each request's latency in microseconds, and the failed ones.
#[derive(Default)]
struct Driven {
    latencies_us: Vec<u32>,
    errors: Vec<String>,
}

fn load(args: LoadArgs) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut all = runtime.block_on(async {
        let mut connections = tokio::task::JoinSet::new();
        for id in 0..args.connections {
            let (addr, mix) = (args.addr.clone(), args.mix.clone());
            connections.spawn(drive_connection(addr, id, mix, deadline));
        }
        let mut all = Driven::default();
        while let Some(driven) = connections.join_next().await {
            let driven = driven??;
            all.latencies_us.extend(driven.latencies_us);
            all.errors.extend(driven.errors);
        }
        Ok::<_, Error>(all)
    })?;
    let elapsed = started.elapsed();
    all.latencies_us.sort_unstable();
    let requests = all.latencies_us.len();
    let p99 = all
        .latencies_us
        .get((requests * 99 / 100).min(requests.saturating_sub(1)))
        .map_or(Duration::ZERO, |us| Duration::from_micros(u64::from(*us)));
    println!(
        "load: {requests} requests in {elapsed:.2?} over {} connections: {:.0} requests/s, p99 {p99:.3?}, {} errors",
        args.connections,
        requests as f64 / elapsed.as_secs_f64(),
        all.errors.len(),
    );
    match all.errors.first() {
        Some(first) => {
            Err(format!("{} requests failed; the first: {first}", all.errors.len()).into())
        }
        None if requests == 0 => Err("no request completed".into()),
        None => Ok(()),
    }
}

/// One connection: one request in flight at a time (no pipelining) until `deadline`.
async fn drive_connection(
    addr: String,
    id: usize,
    mix: Vec<Op>,
    deadline: Instant,
) -> Result<Driven, Error> {
    let socket = TcpStream::connect(&addr).await?;
    socket.set_nodelay(true)?;
    let (read, mut write) = socket.into_split();
    let mut read = BufReader::new(read);
    let mut driven = Driven::default();
    let mut request = Vec::new();
    for n in 0usize.. {
        if Instant::now() >= deadline {
            break;
        }
        let key = format!("key:{id}:{}", n / mix.len() % KEYS_PER_CONNECTION).into_bytes();
        let bulk = |data: &[u8]| Reply::Bulk(Some(data.to_vec()));
        let command = match mix[n % mix.len()] {
            Op::Set => vec![
                bulk(b"SET"),
                bulk(&key),
                bulk(format!("value {n}").as_bytes()),
            ],
            Op::Get => vec![bulk(b"GET"), bulk(&key)],
            Op::Ping => vec![bulk(b"PING")],
        };
        request.clear();
        Reply::Array(command).encode(&mut request);
        let sent = Instant::now();
        write.write_all(&request).await?;
        if let Err(e) = read_reply(&mut read).await? {
            driven.errors.push(e);
        }
        let latency = sent.elapsed().as_micros();
        driven
            .latencies_us
            .push(latency.try_into().unwrap_or(u32::MAX));
    }
    Ok(driven)
}

/// Spins `threads` threads in a CPU-bound loop for `duration`.
fn hog(duration: Duration, threads: usize) {
    let deadline = Instant::now() + duration;
    let spinners: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let mut x = 0u64;
                while Instant::now() < deadline {
                    for _ in 0..10_000 {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                    }
                }
            })
        })
        .collect();
    for spinner in spinners {
        let _ = spinner.join();
    }
}

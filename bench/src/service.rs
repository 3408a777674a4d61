//! The `service` workload: a twin of `examples/service.rs` (the same RESP2 protocol, a
//! `std::sync::Mutex<HashMap>` store, one task per connection) driven to saturation by a load
//! generator in another process, one request in flight per connection, as that example's
//! `load` subcommand drives it.
//!
//! The server runs in this process under the configuration measured, on one worker; the
//! client is `stallscope-bench bare service-client`, started by the server. Both run on CPU 1
//! (`scripts/bench.sh` starts the server with `taskset -c 1`, which its threads, stallscope's
//! included, inherit; the server starts the client the same way): that core is saturated,
//! server and client taking turns on it, and everything stallscope runs beside the worker
//! takes its time from them, as on a saturated machine. CPU 0 is left to the rest of the
//! machine. (On separate cores the two only ping-pong: each sits idle 60% of the time waiting
//! for the other, and an extra thread that keeps a core awake makes wakeups faster, which
//! flatters whatever runs one.)
//!
//! The client warms up, says `warm` on its stdout, measures for the given time and says
//! `requests=N elapsed_ms=T`. The server counts, over the same window, its CPU time and the
//! context switches of each of its threads (from `/proc/self/task`), so a run says what each
//! thread cost, not only what the whole did.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

type Store = Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>>;

/// The one CPU the server and its client share (`scripts/bench.sh` starts the server on it).
pub const CPU: &str = "1";

/// Connections the client keeps busy, as in the measurement and `redis-benchmark -c 50`.
pub const CONNECTIONS: usize = 50;
/// Keys per connection: GETs find what earlier SETs stored.
const KEYS_PER_CONNECTION: usize = 100;

/// What the server saw over the client's measured window.
pub struct Measured {
    pub requests: u64,
    pub elapsed: Duration,
    /// CPU time of the whole server process (user + system).
    pub cpu: Duration,
    /// CPU time of the client over the same window: near the window, the client is what
    /// limits the rate, not the server.
    pub client_cpu: Duration,
    /// Context switches per thread name (voluntary + involuntary), threads of one name summed.
    pub switches: BTreeMap<String, u64>,
}

/// Serves on `runtime` while the client at `client` (a `stallscope-bench` binary) drives it
/// for `seconds` after a warm-up.
pub fn run(runtime: &tokio::runtime::Runtime, client: &str, seconds: f64) -> Measured {
    let store: Store = Arc::default();
    let listener = runtime
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    runtime.spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let store = store.clone();
            tokio::spawn(async move {
                let _ = serve_connection(socket, &store).await;
            });
        }
    });

    let mut child = std::process::Command::new("taskset")
        .args(["-c", CPU, client, "bare", "service-client"])
        .arg(addr.to_string())
        .arg(seconds.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the load client (taskset and the bare build are needed)");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("client stdout")).lines();
    let mut next_line = || {
        lines
            .next()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("the load client stopped early"))
    };
    assert_eq!(next_line(), "warm");
    let (cpu_before, switches_before) = (cpu_time(), thread_switches());
    let done = next_line();
    let (cpu_after, switches_after) = (cpu_time(), thread_switches());
    let status = child.wait().expect("client exit");
    assert!(status.success(), "the load client failed: {status}");

    let field = |name: &str| -> f64 {
        done.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {done:?}"))
    };
    let switches = switches_after
        .into_iter()
        .map(|(name, after)| {
            let before = switches_before.get(&name).copied().unwrap_or(0);
            (name, after.saturating_sub(before))
        })
        .collect();
    Measured {
        requests: field("requests") as u64,
        elapsed: Duration::from_secs_f64(field("elapsed_ms") / 1e3),
        cpu: cpu_after.saturating_sub(cpu_before),
        client_cpu: Duration::from_millis(field("client_cpu_ms") as u64),
        switches,
    }
}

/// User + system CPU time of this process, from `/proc/self/stat` (in clock ticks of 10 ms,
/// the kernel's `USER_HZ` of 100 on Linux).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 10)
}

/// Context switches so far of each live thread of this process, by thread name.
fn thread_switches() -> BTreeMap<String, u64> {
    let mut by_name = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return by_name;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm"))
            .map(|n| n.trim().to_owned())
            .unwrap_or_default();
        let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
        let switches: u64 = status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        *by_name.entry(name).or_insert(0) += switches;
    }
    by_name
}

async fn serve_connection(socket: TcpStream, store: &Store) -> std::io::Result<()> {
    socket.set_nodelay(true)?;
    let (read, mut write) = socket.into_split();
    let mut read = BufReader::new(read);
    let mut out = Vec::new();
    while let Some(command) = read_command(&mut read).await? {
        // What `examples/service.rs` does per command: the name upper-cased, a reply built and
        // encoded, values copied in and out of the store under its lock.
        let name = command[0].to_ascii_uppercase();
        let reply = match (name.as_slice(), &command[1..]) {
            (b"SET", [key, value]) => {
                store.lock().unwrap().insert(key.to_vec(), value.to_vec());
                Reply::Simple("OK")
            }
            (b"GET", [key]) => Reply::Bulk(store.lock().unwrap().get(key).cloned()),
            (b"PING", []) => Reply::Simple("PONG"),
            _ => Reply::Error(format!(
                "ERR unknown command '{}'",
                String::from_utf8_lossy(&command[0])
            )),
        };
        reply.encode(&mut out);
        // Pipelined requests already read are answered in one write.
        if read.buffer().is_empty() {
            write.write_all(&out).await?;
            out.clear();
        }
    }
    Ok(())
}

enum Reply {
    Simple(&'static str),
    Error(String),
    Bulk(Option<Vec<u8>>),
}

impl Reply {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Simple(s) => out.extend_from_slice(format!("+{s}\r\n").as_bytes()),
            Reply::Error(e) => out.extend_from_slice(format!("-{e}\r\n").as_bytes()),
            Reply::Bulk(None) => out.extend_from_slice(b"$-1\r\n"),
            Reply::Bulk(Some(data)) => {
                out.extend_from_slice(format!("${}\r\n", data.len()).as_bytes());
                out.extend_from_slice(data);
                out.extend_from_slice(b"\r\n");
            }
        }
    }
}

async fn read_line(read: &mut (impl AsyncBufRead + Unpin)) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    if read.read_until(b'\n', &mut line).await? == 0 {
        return Ok(None);
    }
    line.truncate(line.len().saturating_sub(2));
    Ok(Some(line))
}

fn length(line: &[u8]) -> i64 {
    std::str::from_utf8(&line[1..])
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(-1)
}

/// An array of bulk strings (what clients send); `None` at the end of the stream.
async fn read_command(
    read: &mut (impl AsyncBufRead + Unpin),
) -> std::io::Result<Option<Vec<Vec<u8>>>> {
    let Some(line) = read_line(read).await? else {
        return Ok(None);
    };
    let mut command = Vec::new();
    for _ in 0..length(&line).max(0) {
        let Some(header) = read_line(read).await? else {
            return Ok(None);
        };
        let mut data = vec![0; length(&header).max(0) as usize + 2];
        read.read_exact(&mut data).await?;
        data.truncate(data.len() - 2);
        command.push(data);
    }
    if command.is_empty() {
        command.push(Vec::new());
    }
    Ok(Some(command))
}

/// The load client: `CONNECTIONS` connections, each one SET or GET in flight at a time
/// (alternating, over its own keys), for one second of warm-up and then `seconds` measured.
pub fn client(addr: &str, seconds: f64) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("client runtime");
    let counted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let connections: Vec<_> = (0..CONNECTIONS)
        .map(|id| {
            let addr = addr.to_owned();
            let (counted, counting, stop) = (counted.clone(), counting.clone(), stop.clone());
            runtime.spawn(async move {
                drive(&addr, id, &counted, &counting, &stop).await;
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    counting.store(true, std::sync::atomic::Ordering::SeqCst);
    let started = Instant::now();
    let cpu_before = cpu_time();
    println!("warm");
    std::thread::sleep(Duration::from_secs_f64(seconds));
    counting.store(false, std::sync::atomic::Ordering::SeqCst);
    let elapsed = started.elapsed();
    let requests = counted.load(std::sync::atomic::Ordering::SeqCst);
    println!(
        "requests={requests} elapsed_ms={:.3} client_cpu_ms={}",
        elapsed.as_secs_f64() * 1e3,
        cpu_time().saturating_sub(cpu_before).as_millis()
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    runtime.block_on(async {
        for c in connections {
            let _ = c.await;
        }
    });
}

/// The requests of connection `id`, encoded once: SET and GET alternating over its keys.
fn requests_of(id: usize) -> Vec<Vec<u8>> {
    (0..2 * KEYS_PER_CONNECTION)
        .map(|n| {
            let key = format!("key:{id}:{}", n / 2);
            if n % 2 == 0 {
                let value = format!("value {n}");
                format!(
                    "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
                    key.len(),
                    value.len()
                )
            } else {
                format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len())
            }
            .into_bytes()
        })
        .collect()
}

/// One connection, one request in flight: the client does as little as it can per request
/// (requests encoded beforehand, replies only framed), so that the server saturates its core
/// before the client does.
async fn drive(
    addr: &str,
    id: usize,
    counted: &std::sync::atomic::AtomicU64,
    counting: &std::sync::atomic::AtomicBool,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let socket = TcpStream::connect(addr).await.expect("connect");
    socket.set_nodelay(true).expect("nodelay");
    let (read, mut write) = socket.into_split();
    let mut read = BufReader::new(read);
    let requests = requests_of(id);
    let mut reply = Vec::new();
    let mut data = Vec::new();
    for request in requests.iter().cycle() {
        if stop.load(Relaxed) {
            break;
        }
        write.write_all(request).await.expect("send");
        reply.clear();
        read.read_until(b'\n', &mut reply).await.expect("reply");
        if reply.starts_with(b"$") && !reply.starts_with(b"$-1") {
            let len = length(&reply[..reply.len() - 2]).max(0) as usize;
            data.resize(len + 2, 0);
            read.read_exact(&mut data).await.expect("bulk");
        }
        if counting.load(Relaxed) {
            counted.fetch_add(1, Relaxed);
        }
    }
}

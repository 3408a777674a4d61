//! The service example (`examples/service.rs`, a Redis-protocol server) as a real process:
//! started on a free port, talked to over TCP in RESP by a small blocking client, driven by its
//! own load generator, stopped by `SHUTDOWN`; its log read back.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::capture::Mode;
use super::examples;

/// How long a server may take to start or to stop, or a request to be answered, before the
/// test fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(30);

/// Servers, load generators and hogs compete for the machine's two cores: one test at a time,
/// so that one test's load is not another's false alarm.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ONE: Mutex<()> = Mutex::new(());
    ONE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running `service` server.
pub struct Server {
    child: Child,
    /// `host:port` it listens on.
    pub addr: String,
    /// Its log so far: the fmt layer writes to stdout (`fmt::layer()`'s default, as the
    /// README's snippet has it), after the line that says where it listens.
    log: Arc<Mutex<String>>,
    /// Reads the log until the server exits.
    reader: Option<JoinHandle<()>>,
    stderr: Option<JoinHandle<String>>,
}

fn collect(mut from: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = from.read_to_string(&mut text);
        text
    })
}

impl Server {
    /// Starts `service --addr 127.0.0.1:0 --workers 2` in `mode`, with `hazard` switched on.
    pub fn start(mode: Mode, hazard: Option<&str>) -> Server {
        Server::start_with(mode, hazard, &[])
    }

    /// [`Server::start`] with `env` added to the service's environment.
    pub fn start_with(mode: Mode, hazard: Option<&str>, env: &[(&str, String)]) -> Server {
        let mut cmd = examples::command("service");
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        cmd.args(["--addr", "127.0.0.1:0", "--workers", "2"]);
        if mode == Mode::Production {
            cmd.arg("--production");
        }
        if let Some(hazard) = hazard {
            cmd.args(["--hazard", hazard]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the service example");
        let stderr = collect(child.stderr.take().expect("stderr"));
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let (listening, on) = mpsc::channel();
        let log = Arc::new(Mutex::new(String::new()));
        let reader = {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut line = String::new();
                while stdout.read_line(&mut line).unwrap_or(0) > 0 {
                    match line.trim_end().strip_prefix("listening on ") {
                        Some(addr) => {
                            let _ = listening.send(addr.to_owned());
                        }
                        None => log.lock().unwrap().push_str(&line),
                    }
                    line.clear();
                }
            })
        };
        let mut server = Server {
            child,
            addr: String::new(),
            log,
            reader: Some(reader),
            stderr: Some(stderr),
        };
        match on.recv_timeout(DEADLINE) {
            Ok(addr) => server.addr = addr,
            Err(_) => {
                let _ = server.child.kill();
                let _ = server.child.wait();
                panic!(
                    "the service did not say where it listens; its log:\n{}",
                    server.output()
                );
            }
        }
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn connect(&self) -> Client {
        Client::connect(&self.addr)
    }

    /// `service load --addr <this server> <args>`, to run to completion or in the background.
    pub fn load(&self, args: &[&str]) -> Command {
        let mut cmd = examples::command("service");
        cmd.args(["load", "--addr", &self.addr]).args(args);
        cmd
    }

    /// Waits until the log so far satisfies `done` (reports arrive from stallscope's threads
    /// some time after what they report), for `timeout` at most. Returns whether it did.
    pub fn wait_for_log(&self, timeout: Duration, done: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while !done(&self.log.lock().unwrap()) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Asks the server to stop (`SHUTDOWN`), waits for it to exit, and returns its log, which
    /// ends with stallscope's summary.
    pub fn shutdown(mut self) -> String {
        let reply = self.connect().call(&["SHUTDOWN"]);
        assert_eq!(reply, Reply::Simple("OK".into()), "SHUTDOWN");
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for the service") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the service did not exit after SHUTDOWN; its log:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let output = self.output();
        assert!(status.success(), "the service failed ({status}):\n{output}");
        output
    }

    /// Its log, then anything it wrote to stderr (once it has exited).
    fn output(&mut self) -> String {
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        let log = self.log.lock().unwrap().clone();
        let stderr = self.stderr.take().map(|t| t.join().unwrap());
        match stderr.filter(|s| !s.is_empty()) {
            Some(stderr) => format!("{log}--- stderr ---\n{stderr}"),
            None => log,
        }
    }
}

impl Drop for Server {
    /// A test that failed half-way leaves no server behind.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `service hog --seconds <seconds>`: a thread per core spinning, in a process of its own.
pub fn hog(seconds: f64) -> Child {
    examples::command("service")
        .args(["hog", "--seconds", &seconds.to_string()])
        .spawn()
        .expect("start the CPU hog")
}

/// A RESP2 reply.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

impl Reply {
    pub fn integer(&self) -> i64 {
        match self {
            Reply::Integer(n) => *n,
            other => panic!("expected an integer reply, got {other:?}"),
        }
    }
}

/// A blocking RESP client over one connection.
pub struct Client {
    read: BufReader<TcpStream>,
    write: TcpStream,
}

impl Client {
    pub fn connect(addr: &str) -> Client {
        let stream = TcpStream::connect(addr).expect("connect to the service");
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        Client {
            read: BufReader::new(stream.try_clone().unwrap()),
            write: stream,
        }
    }

    /// Sends a command without waiting for its reply.
    pub fn send(&mut self, args: &[&str]) {
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        self.write
            .write_all(request.as_bytes())
            .expect("send a command");
    }

    /// The next reply.
    pub fn reply(&mut self) -> Reply {
        read_reply(&mut self.read)
    }

    pub fn call(&mut self, args: &[&str]) -> Reply {
        self.send(args);
        self.reply()
    }

    /// This connection's task id in the server (`CLIENT ID`): the `task.id` of its reports.
    pub fn task_id(&mut self) -> u64 {
        self.call(&["CLIENT", "ID"]).integer() as u64
    }
}

fn read_line(read: &mut impl BufRead) -> String {
    let mut line = String::new();
    let n = read.read_line(&mut line).expect("read a reply");
    assert!(n > 0, "the service closed the connection");
    line.truncate(line.trim_end_matches("\r\n").len());
    line
}

fn read_reply(read: &mut impl BufRead) -> Reply {
    let line = read_line(read);
    let (kind, rest) = line.split_at(1);
    let number = || rest.parse::<i64>().expect("a number in the reply");
    match kind {
        "+" => Reply::Simple(rest.to_owned()),
        "-" => Reply::Error(rest.to_owned()),
        ":" => Reply::Integer(number()),
        "$" if number() < 0 => Reply::Bulk(None),
        "$" => {
            let mut data = vec![0; number() as usize + 2];
            read.read_exact(&mut data).expect("read a bulk string");
            data.truncate(data.len() - 2);
            Reply::Bulk(Some(data))
        }
        "*" => Reply::Array((0..number()).map(|_| read_reply(read)).collect()),
        _ => panic!("not a RESP reply: {line:?}"),
    }
}

/// Lines of `examples/service.rs` marked `// HAZARD: <tag>`: the line the comment ends, or the
/// line below a comment that stands alone.
pub fn hazard_lines(tag: &str) -> Vec<u32> {
    let source = include_str!("../../examples/service.rs");
    let marked: Vec<u32> = source
        .lines()
        .enumerate()
        .filter_map(|(index, line)| {
            let (code, comment) = line.split_once("// HAZARD: ")?;
            (comment.trim() == tag).then_some(index as u32 + 1 + u32::from(code.trim().is_empty()))
        })
        .collect();
    assert!(
        !marked.is_empty(),
        "no `// HAZARD: {tag}` in examples/service.rs"
    );
    marked
}

/// Whether `text` names one of `lines` of `examples/service.rs` (`examples/service.rs:NN`, not
/// a longer number starting with the same digits).
pub fn names_line(text: &str, lines: &[u32]) -> bool {
    lines.iter().any(|line| {
        let at = format!("examples/service.rs:{line}");
        text.match_indices(&at)
            .any(|(start, _)| !text[start + at.len()..].starts_with(|c: char| c.is_ascii_digit()))
    })
}

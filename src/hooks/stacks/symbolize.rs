//! Turns captured instruction pointers into functions, files and lines, off the signal path
//! (on the symbolizer thread: reading debug info allocates and takes its time), and picks the
//! culprit: the innermost frame of the application's own code.
//!
//! A frame is the application's when neither its file nor its function says otherwise:
//!
//! - its file, when debug info gives one, is not a library's: not rustc's sources (std, core,
//!   alloc), not a cargo registry or git checkout, not a C library's (`./`-relative, as glibc's
//!   are), not stallscope's own `src/` (compared with this crate's `CARGO_MANIFEST_DIR`, so a
//!   stallscope built from a path or a git checkout is recognized too);
//! - its function is a Rust path whose crate — for `<Type as Trait>::method`, the type's or
//!   the trait's — is neither a crate of [`LIBRARY_CRATES`] (std and its kin, the tokio,
//!   tracing and futures families, common libraries a handler calls into, stallscope) nor a
//!   crate seen in this process with its files in a registry or checkout. An inlined frame
//!   under line-tables-only debug info has only its short name (`lock`, `{closure#0}`): there
//!   the file decides alone.
//!
//! Without debug info (a release build with `debug = false`) only the second rule applies:
//! the handler `app::cmd::get::Get::apply` is still the culprit, a call into a library crate
//! missing from the list may be named instead of its caller, and a C function never is.
//!
//! Files are printed relative to the crate that owns them, the same way whatever the
//! process's working directory (see [`display_path`]).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use super::capture::HANDLER_SYMBOL;

/// Crates whose frames are never the application's own code: the callee that blocks is in
/// them (std's sleep, a lock, a blocking client), or the frames around the application's
/// (the runtime, the web framework). `family_` entries match every crate of the family.
const LIBRARY_CRATES: &[&str] = &[
    // Rust's own.
    "std",
    "core",
    "alloc",
    "proc_macro",
    "test",
    "panic_unwind",
    "panic_abort",
    "unwind",
    "compiler_builtins",
    "std_detect",
    "hashbrown",
    "addr2line",
    "gimli",
    "object",
    "miniz_oxide",
    "rustc_demangle",
    // The runtime and what stallscope itself is built with.
    "stallscope",
    "tokio",
    "tokio_",
    "mio",
    "futures",
    "futures_",
    "tracing",
    "tracing_",
    "console_subscriber",
    "opentelemetry",
    "opentelemetry_",
    "backtrace",
    "libc",
    "parking_lot",
    "parking_lot_",
    "lock_api",
    "crossbeam_",
    "rayon",
    "rayon_",
    "async_std",
    "smol",
    "async_io",
    // What a service's frames sit between, or call into.
    "hyper",
    "hyper_",
    "h2",
    "http",
    "http_body",
    "http_body_",
    "tower",
    "tower_",
    "axum",
    "axum_",
    "tonic",
    "tonic_",
    "actix_",
    "warp",
    "reqwest",
    "bytes",
    "serde",
    "serde_",
    "prost",
    "prost_",
    "memchr",
    "regex",
    "regex_",
];

/// Whether `krate` is one of [`LIBRARY_CRATES`] or of a family listed there.
fn is_library_crate(krate: &str) -> bool {
    LIBRARY_CRATES
        .iter()
        .any(|&listed| match listed.strip_suffix('_') {
            Some(family) => krate
                .strip_prefix(family)
                .is_some_and(|r| r.starts_with('_')),
            None => krate == listed,
        })
}

/// Crates seen in this process with their files in a registry or a git checkout: libraries,
/// even in stacks where debug info gives no file.
fn crates_with_library_files() -> &'static Mutex<HashSet<String>> {
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    SEEN.get_or_init(Default::default)
}

/// Who owns a frame's file, judged from its full path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FileOwner {
    /// No file: debug info does not cover the frame.
    Unknown,
    /// rustc's sources, a registry crate or git checkout, a C library, stallscope.
    Library,
    /// Anything else: the application's crates.
    Application,
}

impl FileOwner {
    fn of(path: &Path) -> FileOwner {
        let text = path.to_string_lossy();
        let library = text.starts_with("/rustc/")
            || text.contains("/lib/rustlib/src/rust/")
            || text.starts_with("./")
            || text.starts_with("../")
            || path.starts_with(STALLSCOPE_SRC)
            || after_cargo_home(&text).is_some();
        if library {
            FileOwner::Library
        } else {
            FileOwner::Application
        }
    }
}

/// stallscope's own sources, where this build of it is (a registry, a git checkout, a path).
const STALLSCOPE_SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// For a file of a registry crate or a git checkout, the path from the crate's (or the
/// checkout's) directory on: `…/registry/src/index.crates.io-<hash>/tokio-1.54.0/src/x.rs` ->
/// `tokio-1.54.0/src/x.rs`, `…/git/checkouts/<repo>-<hash>/<rev>/src/x.rs` ->
/// `<repo>-<hash>/<rev>/src/x.rs`. Cargo names those directories `<name>-<16 hex digits>`, which
/// tells them from an application that happens to live under a `registry/src/` directory.
fn after_cargo_home(path: &str) -> Option<&str> {
    let hashed = |dir: &str| {
        dir.rsplit_once('-').is_some_and(|(name, hash)| {
            !name.is_empty() && hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit())
        })
    };
    if let Some(i) = path.find("/registry/src/") {
        let rest = &path[i + "/registry/src/".len()..];
        let (index, crate_path) = rest.split_once('/')?;
        return hashed(index).then_some(crate_path);
    }
    let i = path.find("/git/checkouts/")?;
    let rest = &path[i + "/git/checkouts/".len()..];
    let (repo, _) = rest.split_once('/')?;
    hashed(repo).then_some(rest)
}

/// How a frame's file is printed: relative to the crate that owns it, so a line reads the same
/// whatever the working directory of the process (`src/cmd/get.rs`, never `/tmp/x/src/...` or
/// `x/src/...`). rustc's sources print from `library/`, registry crates and checkouts from their
/// own directory (`tokio-1.54.0/src/...`), everything else from the directory holding its
/// crate's `Cargo.toml`. When the sources are not on this machine (a binary built elsewhere),
/// from its last `src/` (or `examples/`, `tests/`, `benches/`) directory.
pub(crate) fn display_path(path: &Path) -> String {
    let text = path.to_string_lossy();
    if text.starts_with("/rustc/") || text.contains("/lib/rustlib/src/rust/") {
        if let Some(i) = text.find("/library/") {
            return text[i + 1..].to_owned();
        }
    }
    if let Some(crate_path) = after_cargo_home(&text) {
        return crate_path.to_owned();
    }
    if path.is_absolute() {
        if let Some(relative) = crate_root(path).and_then(|root| path.strip_prefix(root).ok()) {
            return relative.display().to_string();
        }
    }
    from_last_cargo_dir(&text).to_owned()
}

/// `…/src/x.rs` -> `src/x.rs` (the last `src/`; else the last `examples/`, `tests/` or
/// `benches/`); a path with none of them, as it is.
fn from_last_cargo_dir(path: &str) -> &str {
    let start_of = |dir: &str| {
        if path.starts_with(&dir[1..]) {
            Some(0)
        } else {
            path.rfind(dir).map(|i| i + 1)
        }
    };
    start_of("/src/")
        .or_else(|| {
            ["/examples/", "/tests/", "/benches/"]
                .iter()
                .filter_map(|dir| start_of(dir))
                .max()
        })
        .map_or(path, |i| &path[i..])
}

/// The nearest directory above `file` holding a `Cargo.toml`. Looked up on the file system
/// once per directory (the symbolizer thread only; a stack's frames share a few directories).
fn crate_root(file: &Path) -> Option<PathBuf> {
    static ROOTS: OnceLock<Mutex<HashMap<PathBuf, Option<PathBuf>>>> = OnceLock::new();
    let mut roots = ROOTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let mut walked = Vec::new();
    let mut found = None;
    for dir in file.ancestors().skip(1) {
        if let Some(known) = roots.get(dir) {
            found = known.clone();
            break;
        }
        walked.push(dir.to_path_buf());
        if dir.join("Cargo.toml").is_file() {
            found = Some(dir.to_path_buf());
            break;
        }
    }
    for dir in walked {
        roots.insert(dir, found.clone());
    }
    found
}

/// The crates a function's demangled path names: its own (the first segment), and for
/// `<Type as Trait>::method` the type's and the trait's. A generic parameter (`<F as
/// FnOnce>`) and a C symbol (no `::`) name none.
fn crates_of(function: &str) -> (Option<&str>, Option<&str>) {
    let Some(qualified) = function.strip_prefix('<') else {
        return (leading_crate(function), None);
    };
    // The `as` at this `<`'s depth separates the type from the trait.
    let mut depth = 0usize;
    let mut trait_path = None;
    for (i, c) in qualified.char_indices() {
        match c {
            '<' | '(' | '[' => depth += 1,
            '>' | ')' | ']' if depth == 0 => break,
            '>' | ')' | ']' => depth -= 1,
            ' ' if depth == 0 && qualified[i..].starts_with(" as ") => {
                trait_path = Some(&qualified[i + " as ".len()..]);
                break;
            }
            _ => {}
        }
    }
    (leading_crate(qualified), trait_path.and_then(leading_crate))
}

/// The first segment of the path at the start of `ty`, past references, pointers, `dyn`,
/// `impl`, slices and tuples: `&mut stallscope::sync::Mutex<T>` -> `stallscope`.
fn leading_crate(mut ty: &str) -> Option<&str> {
    loop {
        let trimmed = ty
            .trim_start_matches(['<', '&', '*', '[', '(', ' '])
            .trim_start_matches("mut ")
            .trim_start_matches("const ")
            .trim_start_matches("dyn ")
            .trim_start_matches("impl ");
        if trimmed.len() == ty.len() {
            break;
        }
        ty = trimmed;
    }
    let end = ty
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(ty.len());
    (end > 0 && ty[end..].starts_with("::")).then_some(&ty[..end])
}

/// One resolved frame (an inlined call is a frame of its own).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Frame {
    /// Demangled, without the hash suffix.
    pub(crate) function: String,
    /// Relative to the crate that owns it (see [`display_path`]).
    pub(crate) file: Option<String>,
    pub(crate) line: Option<u32>,
    /// Judged from the full path, before it is shortened for printing.
    pub(crate) file_owner: FileOwner,
}

impl Frame {
    /// A frame at `path` (the full path debug info gives), if any.
    pub(crate) fn new(function: String, path: Option<&Path>, line: Option<u32>) -> Frame {
        Frame {
            function,
            file: path.map(display_path),
            line,
            file_owner: path.map_or(FileOwner::Unknown, FileOwner::of),
        }
    }

    /// A frame of the application's own code (the rule is in the module's documentation).
    pub(crate) fn is_user_code(&self) -> bool {
        let crates = crates_of(&self.function);
        match (self.file_owner, crates) {
            (FileOwner::Library, _) => false,
            // An inlined frame under line-tables-only debug info has its short name only
            // (`apply`, `{closure#0}`): the file decides. A C function's file is no `.rs`.
            (FileOwner::Application, (None, None)) => self
                .file
                .as_deref()
                .is_some_and(|file| file.ends_with(".rs")),
            (_, (own, trait_crate)) => {
                let seen = crates_with_library_files()
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let application = |krate: &str| !is_library_crate(krate) && !seen.contains(krate);
                own.is_some_and(application) || trait_crate.is_some_and(application)
            }
        }
    }

    /// The crate of a frame whose file is a library's: a library crate, also in stacks where
    /// debug info gives no file. Only plain paths count: `<app::T as lib::Trait>::method` may be
    /// a trait's default method, in the library's file, running for the application's type.
    fn library_crate(&self) -> Option<&str> {
        if self.file_owner != FileOwner::Library || self.function.starts_with('<') {
            return None;
        }
        leading_crate(&self.function)
    }

    fn write_short(&self, out: &mut String) {
        out.push_str(&self.function);
        if let (Some(file), Some(line)) = (&self.file, self.line) {
            let _ = write!(out, " ({file}:{line})");
        }
    }
}

impl std::fmt::Display for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = String::new();
        self.write_short(&mut s);
        f.write_str(&s)
    }
}

/// A captured stack, innermost frame first, with the handler's own frames removed.
#[derive(Clone, Debug)]
pub(crate) struct Stack {
    pub(crate) frames: Vec<Frame>,
}

/// Frames shown in a report after the culprit (its callers), for context.
const CALLERS_SHOWN: usize = 3;
/// Frames shown at most.
const FRAMES_SHOWN: usize = 16;

impl Stack {
    /// Resolves `ips` (innermost first, as captured).
    pub(crate) fn resolve(ips: &[usize]) -> Stack {
        let groups: Vec<Vec<Frame>> = ips.iter().map(|&ip| resolve_ip(ip)).collect();
        // Everything up to and including the handler is the capture itself; then comes the
        // kernel's signal trampoline, then the interrupted instruction.
        let handler = groups
            .iter()
            .rposition(|g| g.iter().any(|f| f.function.contains(HANDLER_SYMBOL)));
        let Some(handler) = handler else {
            return Stack::noting_library_crates(groups.into_iter().flatten().collect());
        };
        let mut interrupted = handler + 1;
        if groups
            .get(interrupted)
            .is_some_and(|g| g.iter().all(|f| f.file.is_none()))
        {
            interrupted += 1;
        }
        let mut frames = Vec::new();
        if let Some(&ip) = ips.get(interrupted) {
            // Symbolizers look up `ip - 1` (a return address points past its call); the
            // interrupted frame's address is the instruction itself.
            frames.extend(resolve_ip(ip + 1));
        }
        frames.extend(groups.into_iter().skip(interrupted + 1).flatten());
        Stack::noting_library_crates(frames)
    }

    /// `frames` as a stack, after noting the library crates their files show.
    fn noting_library_crates(frames: Vec<Frame>) -> Stack {
        let mut seen = crates_with_library_files()
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for krate in frames.iter().filter_map(Frame::library_crate) {
            if !seen.contains(krate) {
                seen.insert(krate.to_owned());
            }
        }
        drop(seen);
        Stack { frames }
    }

    /// The innermost frame of the user's own code.
    pub(crate) fn culprit(&self) -> Option<&Frame> {
        self.frames.iter().find(|f| f.is_user_code())
    }

    /// The library call the culprit was in (the frame just inside it), e.g. `std::thread::sleep`.
    pub(crate) fn callee_of_culprit(&self) -> Option<&Frame> {
        let i = self.frames.iter().position(|f| f.is_user_code())?;
        i.checked_sub(1).map(|i| &self.frames[i])
    }

    /// The innermost frames down to a few callers of the culprit, `" <- "`-separated.
    pub(crate) fn summary(&self) -> String {
        let shown = self
            .frames
            .iter()
            .position(|f| f.is_user_code())
            .map_or(FRAMES_SHOWN, |i| i + 1 + CALLERS_SHOWN)
            .min(FRAMES_SHOWN)
            .min(self.frames.len());
        let mut out = String::new();
        for (i, frame) in self.frames[..shown].iter().enumerate() {
            if i > 0 {
                out.push_str(" <- ");
            }
            frame.write_short(&mut out);
        }
        if shown < self.frames.len() {
            let _ = write!(out, " <- ... ({} more)", self.frames.len() - shown);
        }
        out
    }

    /// Every frame, one per line, for exporters.
    pub(crate) fn full(&self) -> String {
        let mut out = String::new();
        for frame in &self.frames {
            frame.write_short(&mut out);
            out.push('\n');
        }
        out
    }
}

/// The frames at `ip` (several when calls were inlined there), innermost first.
fn resolve_ip(ip: usize) -> Vec<Frame> {
    let mut frames = Vec::new();
    backtrace::resolve(ip as *mut std::ffi::c_void, |symbol| {
        let function = symbol
            .name()
            .map_or_else(|| format!("{ip:#x}"), |n| format!("{n:#}"));
        frames.push(Frame::new(function, symbol.filename(), symbol.lineno()));
    });
    if frames.is_empty() {
        frames.push(Frame::new(format!("{ip:#x}"), None, None));
    }
    frames
}

impl From<&Stack> for crate::engine::StallStack {
    fn from(stack: &Stack) -> Self {
        crate::engine::StallStack {
            culprit: stack.culprit().map(ToString::to_string),
            callee: stack.callee_of_culprit().map(|f| f.function.clone()),
            summary: stack.summary(),
            full: stack.full(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame at line 7 of `path` (a full path, as debug info gives it), or without a file.
    fn frame(function: &str, path: Option<&str>) -> Frame {
        Frame::new(function.into(), path.map(Path::new), Some(7))
    }

    const STD_SLEEP: &str = "/rustc/abc/library/std/src/thread/mod.rs";
    const REGISTRY_TOKIO: &str =
        "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/tokio-1.54.0/src/runtime/task/raw.rs";

    #[test]
    fn user_code_is_neither_std_nor_registry_nor_libc() {
        assert!(frame(
            "app::slow_operation::{{closure}}",
            Some("/srv/app/src/main.rs")
        )
        .is_user_code());
        assert!(!frame("std::thread::sleep", Some(STD_SLEEP)).is_user_code());
        assert!(!frame("tokio::runtime::task::raw::poll", Some(REGISTRY_TOKIO)).is_user_code());
        assert!(!frame(
            "__GI___clock_nanosleep",
            Some("./time/../sysdeps/clock_nanosleep.c")
        )
        .is_user_code());
        assert!(!frame("__GI___clock_nanosleep", None).is_user_code());
        assert!(!frame("0x7f3a12345678", None).is_user_code());
    }

    #[test]
    fn stallscopes_own_frames_are_never_the_applications_however_it_is_built() {
        let own_file = |file: &str| format!("{}/{file}", env!("CARGO_MANIFEST_DIR"));
        // Built from a path or a git checkout: its files are no registry crate's. An inlined
        // frame under line-tables-only debug info has its short name only: the file tells.
        let wrapper = frame("{closure#0}", Some(&own_file("src/sync/mutex.rs")));
        assert!(!wrapper.is_user_code(), "{wrapper}");
        assert!(!frame("lock", Some(&own_file("src/sync/mutex.rs"))).is_user_code());
        // Its paths behind references and `dyn`, wherever its files are.
        for function in [
            "<&stallscope::sync::mutex::Mutex<T> as core::ops::deref::Deref>::deref",
            "<&mut stallscope::sync::mutex::MutexGuard<T> as core::ops::drop::Drop>::drop",
            "<dyn stallscope::sync::Measured>::wait",
            "stallscope::sync::acquire::{{closure}}",
        ] {
            let f = frame(function, Some("/home/dev/stallscope/src/sync/mutex.rs"));
            assert!(!f.is_user_code(), "{f}");
            assert!(!frame(function, None).is_user_code(), "{function}");
        }
        // So the culprit is the application's function that called the wrapper.
        let stack = Stack {
            frames: vec![
                frame("__futex_abstimed_wait_common", None),
                frame(
                    "std::sys::sync::mutex::futex::Mutex::lock_contended",
                    Some(STD_SLEEP),
                ),
                wrapper,
                frame(
                    "stallscope::sync::mutex::Mutex<T>::lock",
                    Some(&own_file("src/sync/mutex.rs")),
                ),
                frame("app::db::Db::get", Some("/srv/app/src/db.rs")),
            ],
        };
        assert_eq!(stack.culprit().unwrap().function, "app::db::Db::get");
    }

    #[test]
    fn without_debug_info_the_culprit_is_named_by_its_crate() {
        // A release build without debug info: no frame has a file.
        let stack = Stack {
            frames: [
                "__GI___clock_nanosleep",
                "std::thread::sleep",
                "<stallscope::sync::mutex::Mutex<T>>::lock",
                "mini_redis::cmd::get::Get::apply::{{closure}}",
                "mini_redis::server::Handler::run::{{closure}}",
                "<tokio::runtime::blocking::task::BlockingTask<T> as core::future::future::Future>::poll",
            ]
            .into_iter()
            .map(|f| frame(f, None))
            .collect(),
        };
        assert_eq!(
            stack.culprit().unwrap().function,
            "mini_redis::cmd::get::Get::apply::{{closure}}"
        );
        assert_eq!(
            stack.callee_of_culprit().unwrap().function,
            "<stallscope::sync::mutex::Mutex<T>>::lock"
        );
        // The application's impl of its own trait for a library's type is its code; a
        // generic parameter's call is nobody's in particular.
        assert!(frame("<alloc::string::String as app::Parse>::parse", None).is_user_code());
        assert!(frame("<app::Handler as tower_service::Service<R>>::call", None).is_user_code());
        assert!(!frame("<F as core::ops::function::FnOnce<A>>::call_once", None).is_user_code());
        assert!(!frame("hyper_util::rt::tokio::TokioIo<T>::new", None).is_user_code());
    }

    #[test]
    fn a_crate_seen_in_the_registry_is_a_library_also_where_no_file_is_known() {
        let query = "blocking_store_9f1c::Connection::query";
        assert!(frame(query, None).is_user_code(), "not known yet");
        Stack::noting_library_crates(vec![frame(
            query,
            Some("/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/blocking_store_9f1c-0.3.1/src/lib.rs"),
        )]);
        let stack = Stack {
            frames: vec![frame(query, None), frame("app::orders::load", None)],
        };
        assert_eq!(stack.culprit().unwrap().function, "app::orders::load");
        // A trait's default method in a registry file runs for the application's type: that
        // says nothing of the application's crate.
        Stack::noting_library_crates(vec![frame(
            "<app_2b7e::Order as blocking_store_9f1c::Row>::decode",
            Some("/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/blocking_store_9f1c-0.3.1/src/row.rs"),
        )]);
        assert!(frame("app_2b7e::orders::load", None).is_user_code());
    }

    #[test]
    fn files_print_relative_to_the_crate_that_owns_them() {
        let path = |p: &str| display_path(Path::new(p));
        assert_eq!(path(STD_SLEEP), "library/std/src/thread/mod.rs");
        assert_eq!(
            path("/root/.rustup/toolchains/stable-x86_64-unknown-linux-gnu/lib/rustlib/src/rust/library/core/src/ops/function.rs"),
            "library/core/src/ops/function.rs"
        );
        assert_eq!(path(REGISTRY_TOKIO), "tokio-1.54.0/src/runtime/task/raw.rs");
        // CARGO_HOME elsewhere (the official Docker image's).
        assert_eq!(
            path("/usr/local/cargo/registry/src/index.crates.io-1949cf8c6b5b557f/tokio-1.54.0/src/lib.rs"),
            "tokio-1.54.0/src/lib.rs"
        );
        assert_eq!(
            path(
                "/root/.cargo/git/checkouts/stallscope-0123456789abcdef/d6cef97/src/sync/mutex.rs"
            ),
            "stallscope-0123456789abcdef/d6cef97/src/sync/mutex.rs"
        );
        // This crate's examples and tests: from the directory of its Cargo.toml.
        assert_eq!(
            path(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/examples/blocking_in_async.rs"
            )),
            "examples/blocking_in_async.rs"
        );

        // An application on this machine, in a workspace: from its own crate's directory.
        let workspace =
            std::env::temp_dir().join(format!("stallscope-paths-{}", std::process::id()));
        let member = workspace.join("crates/x");
        std::fs::create_dir_all(member.join("src/cmd")).unwrap();
        std::fs::write(workspace.join("Cargo.toml"), "[workspace]\n").unwrap();
        std::fs::write(member.join("Cargo.toml"), "[package]\n").unwrap();
        let get = member.join("src/cmd/get.rs");
        assert_eq!(display_path(&get), "src/cmd/get.rs");
        assert_eq!(display_path(&member.join("src/db.rs")), "src/db.rs");
        let _ = std::fs::remove_dir_all(&workspace);
        // Looked up once: the answer stays when the file system changes.
        assert_eq!(display_path(&get), "src/cmd/get.rs");

        // Sources not on this machine, or a relative path: from the last `src/`.
        assert_eq!(path("/build/ci-4711/x/src/cmd/get.rs"), "src/cmd/get.rs");
        assert_eq!(path("x/src/db.rs"), "src/db.rs");
        assert_eq!(path("src/db.rs"), "src/db.rs");
        assert_eq!(path("/home/me/src/app/src/main.rs"), "src/main.rs");
        assert_eq!(
            path("/build/ci-4711/x/examples/demo.rs"),
            "examples/demo.rs"
        );
        assert_eq!(
            path("./time/../sysdeps/clock_nanosleep.c"),
            "./time/../sysdeps/clock_nanosleep.c"
        );
    }

    #[test]
    fn an_application_under_a_registry_like_directory_is_still_the_application() {
        // Only cargo's own `<name>-<16 hex digits>` directories are a registry's.
        let f = frame(
            "app::handler",
            Some("/home/me/registry/src/app/src/main.rs"),
        );
        assert!(f.is_user_code());
    }

    #[test]
    fn the_summary_runs_from_the_innermost_frame_to_the_culprits_callers() {
        let main = Some("/srv/app/src/main.rs");
        let stack = Stack {
            frames: vec![
                frame("__GI___clock_nanosleep", None),
                frame("std::thread::sleep", Some(STD_SLEEP)),
                frame("app::slow_operation", main),
                frame("app::handler", main),
                frame("app::a", main),
                frame("app::b", main),
                frame("app::c", main),
            ],
        };
        assert_eq!(stack.culprit().unwrap().function, "app::slow_operation");
        assert_eq!(
            stack.callee_of_culprit().unwrap().function,
            "std::thread::sleep"
        );
        assert_eq!(
            stack.summary(),
            "__GI___clock_nanosleep <- std::thread::sleep (library/std/src/thread/mod.rs:7) <- \
             app::slow_operation (src/main.rs:7) <- app::handler (src/main.rs:7) <- \
             app::a (src/main.rs:7) <- app::b (src/main.rs:7) <- ... (1 more)"
        );
    }
}

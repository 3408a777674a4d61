//! Turns captured instruction pointers into functions, files and lines, off the signal path
//! (on the symbolizer thread: reading debug info allocates and takes its time), and picks the
//! culprit: the innermost frame of the user's own code.

use std::fmt::Write as _;

use super::capture::HANDLER_SYMBOL;

/// One resolved frame (an inlined call is a frame of its own).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Frame {
    /// Demangled, without the hash suffix.
    pub(crate) function: String,
    /// Relative to the working directory when under it.
    pub(crate) file: Option<String>,
    pub(crate) line: Option<u32>,
}

impl Frame {
    /// A frame of the application's own code, not of std, tokio, a registry crate or libc.
    pub(crate) fn is_user_code(&self) -> bool {
        const LIBRARY_PREFIXES: &[&str] = &[
            "std::",
            "core::",
            "alloc::",
            "tokio::",
            "tracing::",
            "tracing_core::",
            "futures",
            "stallscope::",
            "backtrace::",
            "parking_lot",
            "__",
        ];
        let Some(file) = &self.file else { return false };
        let function = self.function.trim_start_matches('<');
        !(file.starts_with("/rustc/")
            || file.contains("/.cargo/registry/")
            || file.contains("/.cargo/git/")
            || file.starts_with("./")
            || LIBRARY_PREFIXES.iter().any(|p| function.starts_with(p)))
    }

    fn write_short(&self, out: &mut String) {
        out.push_str(&self.function);
        if let (Some(file), Some(line)) = (&self.file, self.line) {
            let file = file
                .find("/library/")
                .map_or(file.as_str(), |i| &file[i + 1..]);
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
        let cwd = std::env::current_dir().ok();
        let groups: Vec<Vec<Frame>> = ips
            .iter()
            .map(|&ip| resolve_ip(ip, cwd.as_deref()))
            .collect();
        // Everything up to and including the handler is the capture itself; then comes the
        // kernel's signal trampoline, then the interrupted instruction.
        let handler = groups
            .iter()
            .rposition(|g| g.iter().any(|f| f.function.contains(HANDLER_SYMBOL)));
        let Some(handler) = handler else {
            return Stack {
                frames: groups.into_iter().flatten().collect(),
            };
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
            frames.extend(resolve_ip(ip + 1, cwd.as_deref()));
        }
        frames.extend(groups.into_iter().skip(interrupted + 1).flatten());
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
fn resolve_ip(ip: usize, cwd: Option<&std::path::Path>) -> Vec<Frame> {
    let mut frames = Vec::new();
    backtrace::resolve(ip as *mut std::ffi::c_void, |symbol| {
        let function = symbol
            .name()
            .map_or_else(|| format!("{ip:#x}"), |n| format!("{n:#}"));
        let file = symbol.filename().map(|path| {
            cwd.and_then(|cwd| path.strip_prefix(cwd).ok())
                .unwrap_or(path)
                .display()
                .to_string()
        });
        frames.push(Frame {
            function,
            file,
            line: symbol.lineno(),
        });
    });
    if frames.is_empty() {
        frames.push(Frame {
            function: format!("{ip:#x}"),
            file: None,
            line: None,
        });
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

    fn frame(function: &str, file: Option<&str>) -> Frame {
        Frame {
            function: function.into(),
            file: file.map(Into::into),
            line: Some(7),
        }
    }

    #[test]
    fn user_code_is_neither_std_nor_registry_nor_libc() {
        assert!(frame("app::slow_operation::{{closure}}", Some("src/main.rs")).is_user_code());
        assert!(!frame(
            "std::thread::sleep",
            Some("/rustc/abc/library/std/src/thread/mod.rs")
        )
        .is_user_code());
        assert!(!frame(
            "tokio::runtime::task::raw::poll",
            Some(
                "/root/.cargo/registry/src/index.crates.io-x/tokio-1.54.0/src/runtime/task/raw.rs"
            )
        )
        .is_user_code());
        assert!(!frame(
            "__GI___clock_nanosleep",
            Some("./time/../sysdeps/clock_nanosleep.c")
        )
        .is_user_code());
        assert!(!frame("app::f", None).is_user_code());
    }

    #[test]
    fn the_summary_runs_from_the_innermost_frame_to_the_culprits_callers() {
        let stack = Stack {
            frames: vec![
                frame("__GI___clock_nanosleep", None),
                frame(
                    "std::thread::sleep",
                    Some("/rustc/abc/library/std/src/thread/mod.rs"),
                ),
                frame("app::slow_operation", Some("src/main.rs")),
                frame("app::handler", Some("src/main.rs")),
                frame("app::a", Some("src/main.rs")),
                frame("app::b", Some("src/main.rs")),
                frame("app::c", Some("src/main.rs")),
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

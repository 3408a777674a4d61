//! Reads the fields tokio puts on its `runtime.spawn` spans.

use std::fmt;

use tracing::field::{Field, Visit};

/// The fields of one `runtime.spawn` span, borrowed only for the span's creation.
#[derive(Debug, Default)]
pub(crate) struct TaskFields {
    pub(crate) kind: String,
    pub(crate) name: String,
    pub(crate) id: u64,
    pub(crate) file: String,
    pub(crate) line: u32,
    pub(crate) column: u32,
    /// `spawn_blocking` only: the closure's type name.
    pub(crate) function: String,
}

impl Visit for TaskFields {
    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "task.id" => self.id = value,
            "loc.line" => self.line = value as u32,
            "loc.col" => self.column = value as u32,
            _ => {}
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if let Ok(v) = u64::try_from(value) {
            self.record_u64(field, v);
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "kind" => value.clone_into(&mut self.kind),
            "task.name" => value.clone_into(&mut self.name),
            "loc.file" => value.clone_into(&mut self.file),
            "fn" => value.clone_into(&mut self.function),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // tokio records some of these with `%`/`?`; fall back to their text.
        match field.name() {
            "kind" | "task.name" | "loc.file" | "fn" => {
                self.record_str(field, format!("{value:?}").trim_matches('"'))
            }
            "task.id" | "loc.line" | "loc.col" => {
                if let Ok(v) = format!("{value:?}").parse::<u64>() {
                    self.record_u64(field, v);
                }
            }
            _ => {}
        }
    }
}

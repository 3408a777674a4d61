//! Reads the fields tokio puts on its `runtime.spawn` spans.

use std::cell::RefCell;
use std::fmt::{self, Write};

use tracing::field::{Field, Visit};
use tracing::span::Attributes;

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

thread_local! {
    /// Reused for every task span created on this thread: reading a span's fields allocates
    /// nothing once the strings have grown to fit.
    static SCRATCH: RefCell<TaskFields> = const {
        RefCell::new(TaskFields {
            kind: String::new(),
            name: String::new(),
            id: 0,
            file: String::new(),
            line: 0,
            column: 0,
            function: String::new(),
        })
    };
}

impl TaskFields {
    /// Reads the fields of a `runtime.spawn` span's `attrs` and hands them to `use_fields`.
    pub(crate) fn read<R>(attrs: &Attributes<'_>, use_fields: impl FnOnce(&TaskFields) -> R) -> R {
        let mut use_fields = Some(use_fields);
        let reused = SCRATCH.try_with(|scratch| {
            // Busy only if reading re-entered through a span made while using the fields.
            let mut fields = scratch.try_borrow_mut().ok()?;
            fields.clear();
            attrs.record(&mut *fields);
            use_fields.take().map(|f| f(&fields))
        });
        if let Ok(Some(result)) = reused {
            return result;
        }
        let mut fields = TaskFields::default();
        attrs.record(&mut fields);
        let use_fields = use_fields
            .take()
            .expect("not called: the reused buffer was busy");
        use_fields(&fields)
    }

    fn clear(&mut self) {
        self.kind.clear();
        self.name.clear();
        self.id = 0;
        self.file.clear();
        self.line = 0;
        self.column = 0;
        self.function.clear();
    }

    fn text_field(&mut self, name: &str) -> Option<&mut String> {
        match name {
            "kind" => Some(&mut self.kind),
            "task.name" => Some(&mut self.name),
            "loc.file" => Some(&mut self.file),
            "fn" => Some(&mut self.function),
            _ => None,
        }
    }
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
        if let Some(text) = self.text_field(field.name()) {
            value.clone_into(text);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // tokio records some of these with `%`/`?`; fall back to their text, written straight
        // into the field's buffer.
        if let Some(text) = self.text_field(field.name()) {
            text.clear();
            let _ = write!(text, "{value:?}");
            // `%` fields (tokio's own) come bare; `?` strings come quoted.
            if text.starts_with('"') {
                let end = text.trim_end_matches('"').len();
                text.truncate(end);
                let start = text.len() - text.trim_start_matches('"').len();
                text.drain(..start);
            }
            return;
        }
        if let "task.id" | "loc.line" | "loc.col" = field.name() {
            if let Ok(v) = format!("{value:?}").parse::<u64>() {
                self.record_u64(field, v);
            }
        }
    }
}

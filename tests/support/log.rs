//! Reading the fmt log lines the examples and test children print.

/// The number after ` key=` in a log line.
pub fn number_field(line: &str, key: &str) -> f64 {
    let start = line.find(&format!(" {key}=")).expect(key) + key.len() + 2;
    let rest = &line[start..];
    rest[..rest.find(' ').unwrap_or(rest.len())]
        .parse()
        .expect("number")
}

/// What stallscope says when something stalled a worker: the words each report's message
/// starts with.
pub const STALL_KINDS: [&str; 4] = [
    "slow poll",
    "stall in progress",
    "stall stack",
    "blocking lock wait",
];

/// One of stallscope's lines in an fmt log (target `stallscope`).
///
/// The one place that knows how a report reads: its level, the words its message starts with
/// (`slow poll`, `stall stack`, ...) and its fields (`blocked_in=...`, `task.id=...`). When the
/// wording changes, adapt it here.
#[derive(Debug)]
pub struct Report<'a> {
    pub line: &'a str,
    pub level: &'a str,
    /// From the message's first word to the end of the line.
    pub message: &'a str,
}

impl<'a> Report<'a> {
    /// Whether the message starts with `kind` (`"slow poll"`, `"summary"`, ...).
    pub fn is(&self, kind: &str) -> bool {
        self.message.starts_with(kind)
    }

    pub fn is_warning(&self) -> bool {
        self.level == "WARN"
    }

    /// A stall of a worker, of any of [`STALL_KINDS`].
    pub fn is_stall(&self) -> bool {
        self.is_warning() && STALL_KINDS.iter().any(|kind| self.is(kind))
    }

    /// The value of the field `key` (after the message: the last ` key=` of the line), unquoted
    /// and unescaped.
    pub fn field(&self, key: &str) -> Option<String> {
        let start = self.line.rfind(&format!(" {key}="))? + key.len() + 2;
        let rest = &self.line[start..];
        let Some(quoted) = rest.strip_prefix('"') else {
            return Some(rest[..rest.find(' ').unwrap_or(rest.len())].to_owned());
        };
        let mut value = String::new();
        let mut chars = quoted.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => return Some(value),
                '\\' => value.extend(chars.next()),
                c => value.push(c),
            }
        }
        Some(value)
    }

    /// The application frame the stalled thread was blocked in, `function (file:line)`, when
    /// the report names one (`blocked_in="-"` does not).
    pub fn blocked_in(&self) -> Option<String> {
        self.field("blocked_in").filter(|frame| frame != "-")
    }

    /// The stalled task's tokio task id, when the report carries it.
    pub fn task_id(&self) -> Option<u64> {
        self.field("task.id").and_then(|id| id.parse().ok())
    }
}

/// The WARN reports of `kind` among `reports`, in order.
pub fn warnings<'r, 'a>(reports: &'r [Report<'a>], kind: &str) -> Vec<&'r Report<'a>> {
    reports
        .iter()
        .filter(|r| r.is_warning() && r.is(kind))
        .collect()
}

/// stallscope's lines in `log`, in order.
pub fn stallscope_reports(log: &str) -> Vec<Report<'_>> {
    const TARGET: &str = " stallscope: ";
    log.lines()
        .filter_map(|line| {
            let target = line.find(TARGET)?;
            let level = ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"]
                .into_iter()
                .find(|level| line[..target].contains(&format!(" {level}")))?;
            Some(Report {
                line,
                level,
                message: &line[target + TARGET.len()..],
            })
        })
        .collect()
}

/// The lines of `log` that contain `needle`.
pub fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}

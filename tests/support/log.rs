//! Reading the fmt log lines the examples and test children print.

/// The number after ` key=` in a log line.
pub fn number_field(line: &str, key: &str) -> f64 {
    let start = line.find(&format!(" {key}=")).expect(key) + key.len() + 2;
    let rest = &line[start..];
    rest[..rest.find(' ').unwrap_or(rest.len())]
        .parse()
        .expect("number")
}

/// The lines of `log` that contain `needle`.
pub fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}

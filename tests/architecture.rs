//! The folders are the architecture: data flows one way, sources → engine → sinks.
//!
//! - Sources (`layer/`, `hooks/`, `sync/`, `task.rs`) call into the engine.
//! - The engine (`engine/`, `clock.rs`) imports only `config`, `snapshot` and itself: never a
//!   source or a sink. What it needs from them is registered with it (`engine::Sources`,
//!   `clock::Upkeep`) or handed to it (`engine::sink::Sink`).
//! - Sinks (`report/`, `export/`) implement `engine::sink::Sink` and read the engine.
//!
//! This test reads every `crate::…` and `super::…` path in `src/` (`use` declarations, `use`
//! groups such as `use crate::{a, b}`, and paths written inline), outside comments, strings and
//! `#[cfg(test)]` code, and fails on an import that breaks the rule above or on any cycle
//! between top-level modules. The checker is tested first on planted bad imports, so it cannot
//! pass by reading nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// What the engine may import: itself, the clock, the configuration and the snapshot types.
const ENGINE: &[&str] = &["engine", "clock"];
const ENGINE_MAY_IMPORT: &[&str] = &["engine", "clock", "config", "snapshot"];

/// One `src/` file: its path relative to `src/` (`engine/mod.rs`) and its text.
type SourceFile = (String, String);

/// An import of top-level module `to` by a file of top-level module `from`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Edge {
    from: String,
    to: String,
    /// Where: `file:line`.
    at: String,
}

/// Every `.rs` file under `src/`.
fn read_tree() -> Vec<SourceFile> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<SourceFile>) {
        for entry in std::fs::read_dir(dir).expect("src/ is readable") {
            let path = entry.expect("a src/ entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix(root).expect("under src/");
                let text = std::fs::read_to_string(&path).expect("a source file");
                out.push((relative.to_string_lossy().replace('\\', "/"), text));
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&root, &root, &mut files);
    files.sort();
    files
}

/// The module path of a file: `engine/sites.rs` → `[engine, sites]`, `engine/mod.rs` →
/// `[engine]`, `lib.rs` → `[]`.
fn module_path(file: &str) -> Vec<String> {
    let without_ext = file.trim_end_matches(".rs");
    let mut parts: Vec<String> = without_ext.split('/').map(str::to_owned).collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// `text` with comments, string and char literals blanked out (newlines kept, so line numbers
/// stay): a path in a doc comment or a message is not an import.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && !chars
                .get(i.wrapping_sub(1))
                .is_some_and(|p| p.is_alphanumeric() || *p == '_')
        {
            // A raw string: r"…", r#"…"#, …
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            let closing: String = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            let body_start = j + 1;
            let rest: String = chars[body_start..].iter().collect();
            let end = rest.find(&closing).map_or(chars.len(), |e| {
                body_start + rest[..e].chars().count() + hashes + 1
            });
            for &ch in &chars[i..end] {
                out.push(blank(ch));
            }
            i = end;
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < chars.len() {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' {
            // A char literal ('a', '\n', '\u{1F600}'), not a lifetime ('a).
            let close = if next == Some('\\') {
                // Past the escaped character: '\'' closes at its second quote.
                chars
                    .get(i + 3..)
                    .and_then(|rest| rest.iter().position(|&ch| ch == '\''))
                    .map(|p| i + 3 + p)
            } else if chars.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match close {
                Some(end) => {
                    for _ in i..=end {
                        out.push(' ');
                    }
                    i = end + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// The index of the `}` closing the `{` at `open`.
fn matching_brace(code: &[char], open: usize) -> usize {
    let mut depth = 0;
    for (i, &c) in code.iter().enumerate().skip(open) {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    code.len()
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The identifier starting at `i` (after whitespace), and the index after it.
fn ident_at(code: &[char], mut i: usize) -> (String, usize) {
    while code.get(i).is_some_and(|c| c.is_whitespace()) {
        i += 1;
    }
    let start = i;
    while code.get(i).is_some_and(|&c| is_ident_char(c)) {
        i += 1;
    }
    (code[start..i].iter().collect(), i)
}

/// After `::` (with whitespace) at `i`: the index past it, if it is there.
fn after_colons(code: &[char], mut i: usize) -> Option<usize> {
    while code.get(i).is_some_and(|c| c.is_whitespace()) {
        i += 1;
    }
    (code.get(i) == Some(&':') && code.get(i + 1) == Some(&':')).then_some(i + 2)
}

/// The first segments of what a path imports from where it stands at `i` (just past
/// `crate::` or a resolved `super::`): one name, or each name of a `{a, b::c}` group.
fn first_segments(code: &[char], mut i: usize) -> Vec<String> {
    while code.get(i).is_some_and(|c| c.is_whitespace()) {
        i += 1;
    }
    if code.get(i) != Some(&'{') {
        let (name, _) = ident_at(code, i);
        return vec![name];
    }
    let close = matching_brace(code, i);
    let inner: String = code[i + 1..close].iter().collect();
    let mut names = Vec::new();
    let mut depth = 0;
    let mut item = String::new();
    for c in inner.chars().chain(std::iter::once(',')) {
        match c {
            '{' => {
                depth += 1;
                item.push(c);
            }
            '}' => {
                depth -= 1;
                item.push(c);
            }
            ',' if depth == 0 => {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|&c| is_ident_char(c))
                    .collect();
                if !name.is_empty() {
                    names.push(name);
                }
                item.clear();
            }
            _ => item.push(c),
        }
    }
    names
}

/// The ranges of `code` inside `#[cfg(test)]` modules (`#[cfg(test)] mod x { … }`), and the
/// names of `#[cfg(test)] mod x;` declarations (whole files of test code).
fn test_code(code: &[char]) -> (Vec<(usize, usize)>, Vec<String>) {
    let text: String = code.iter().collect();
    let mut ranges = Vec::new();
    let mut files = Vec::new();
    let mut from = 0;
    while let Some(found) = text[from..].find("#[cfg(test)]") {
        let byte = from + found + "#[cfg(test)]".len();
        from = byte;
        let rest = text[byte..].trim_start();
        let Some(after_mod) = rest
            .strip_prefix("mod ")
            .or_else(|| rest.strip_prefix("pub(crate) mod "))
        else {
            continue;
        };
        let name: String = after_mod
            .chars()
            .take_while(|&c| is_ident_char(c))
            .collect();
        let after_name = after_mod[name.len()..].trim_start();
        if after_name.starts_with(';') {
            files.push(name);
        } else if after_name.starts_with('{') {
            let open_byte = text.len() - after_name.len();
            let open = text[..open_byte].chars().count();
            ranges.push((open, matching_brace(code, open)));
        }
    }
    (ranges, files)
}

/// The modules declared inline (`mod x { … }`, not under `#[cfg(test)]`) and where their
/// bodies are: a `super::` inside climbs from there.
fn inline_modules(code: &[char]) -> Vec<(usize, usize, String)> {
    let mut modules = Vec::new();
    let mut i = 0;
    while i + 4 < code.len() {
        let starts_word = i == 0 || !is_ident_char(code[i - 1]);
        if starts_word && code[i..i + 4].iter().collect::<String>() == "mod " {
            let (name, end) = ident_at(code, i + 4);
            let mut j = end;
            while code.get(j).is_some_and(|c| c.is_whitespace()) {
                j += 1;
            }
            if !name.is_empty() && code.get(j) == Some(&'{') {
                modules.push((j, matching_brace(code, j), name));
            }
        }
        i += 1;
    }
    modules
}

/// Every import between top-level modules in `files`. `crate::Name` of an item the crate
/// root re-exports (`pub use guard::Guard;` in `lib.rs`) counts as an import of its module;
/// items defined in `lib.rs` itself belong to no module and are left out.
fn edges(files: &[SourceFile]) -> Vec<Edge> {
    let top_level: BTreeSet<String> = files
        .iter()
        .filter_map(|(file, _)| module_path(file).first().cloned())
        .collect();
    let mut reexports: BTreeMap<String, String> = BTreeMap::new();
    if let Some((_, lib)) = files.iter().find(|(file, _)| file == "lib.rs") {
        let code: Vec<char> = code_only(lib).chars().collect();
        let text: String = code.iter().collect();
        for (at, _) in text.match_indices("pub use ") {
            let start = text[..at + "pub use ".len()].chars().count();
            let (module, after) = ident_at(&code, start);
            if let Some(i) = after_colons(&code, after) {
                let mut i = i;
                // The last segments: `pub use engine::locks::LockKind` names LockKind.
                loop {
                    let names = first_segments(&code, i);
                    let (name, end) = ident_at(&code, i);
                    match after_colons(&code, end) {
                        Some(next) if !name.is_empty() => i = next,
                        _ => {
                            for name in names {
                                reexports.insert(name, module.clone());
                            }
                            break;
                        }
                    }
                }
            }
        }
    }
    // Files that are whole `#[cfg(test)]` modules.
    let mut test_files: BTreeSet<Vec<String>> = BTreeSet::new();
    for (file, text) in files {
        let code: Vec<char> = code_only(text).chars().collect();
        let (_, declared) = test_code(&code);
        for name in declared {
            let mut path = module_path(file);
            path.push(name);
            test_files.insert(path);
        }
    }
    let mut edges = Vec::new();
    for (file, text) in files {
        let path = module_path(file);
        if test_files.iter().any(|t| path.starts_with(t)) {
            continue;
        }
        let Some(from) = path.first().cloned() else {
            // lib.rs: the crate root declares and re-exports; it is no module of its own.
            continue;
        };
        let code: Vec<char> = code_only(text).chars().collect();
        let (tests, _) = test_code(&code);
        let inline = inline_modules(&code);
        let line_of = |i: usize| code[..i].iter().filter(|&&c| c == '\n').count() + 1;
        let mut add = |to: String, i: usize| {
            let to = if top_level.contains(&to) {
                Some(to)
            } else {
                reexports.get(&to).cloned()
            };
            if let Some(to) = to.filter(|to| *to != from) {
                edges.push(Edge {
                    from: from.clone(),
                    to,
                    at: format!("src/{file}:{}", line_of(i)),
                });
            }
        };
        let mut i = 0;
        while i < code.len() {
            let starts_word = i == 0 || !(is_ident_char(code[i - 1]) || code[i - 1] == ':');
            if !starts_word || tests.iter().any(|&(a, b)| a <= i && i <= b) {
                i += 1;
                continue;
            }
            let (word, end) = ident_at(&code, i);
            if word.is_empty() || end == i {
                i += 1;
                continue;
            }
            if word == "crate" {
                if let Some(after) = after_colons(&code, end) {
                    for name in first_segments(&code, after) {
                        add(name, i);
                    }
                }
            } else if word == "super" {
                // Climb one module per `super`, from the inline module this sits in.
                let mut here = path.clone();
                for (a, b, name) in &inline {
                    if *a < i && i < *b {
                        here.push(name.clone());
                    }
                }
                let mut at = i;
                let mut past = end;
                loop {
                    here.pop();
                    let Some(after) = after_colons(&code, past) else {
                        break;
                    };
                    let (next, next_end) = ident_at(&code, after);
                    if next == "super" {
                        at = after;
                        past = next_end;
                        continue;
                    }
                    match here.first() {
                        Some(top) => add(top.clone(), at),
                        None => {
                            for name in first_segments(&code, after) {
                                add(name, at);
                            }
                        }
                    }
                    break;
                }
            }
            i = end;
        }
    }
    edges.sort();
    edges.dedup_by(|a, b| a.from == b.from && a.to == b.to);
    edges
}

/// What is wrong with the imports of `files`: imports out of the engine, and cycles between
/// top-level modules. Empty when the architecture holds.
fn violations(files: &[SourceFile]) -> Vec<String> {
    let edges = edges(files);
    let mut wrong = Vec::new();
    for edge in &edges {
        if ENGINE.contains(&edge.from.as_str()) && !ENGINE_MAY_IMPORT.contains(&edge.to.as_str()) {
            wrong.push(format!(
                "{} imports {} ({}): the engine imports only {ENGINE_MAY_IMPORT:?}; register a \
                 function with it or add a method to engine::sink::Sink instead",
                edge.from, edge.to, edge.at
            ));
        }
    }
    let mut graph: BTreeMap<&str, Vec<&Edge>> = BTreeMap::new();
    for edge in &edges {
        graph.entry(&edge.from).or_default().push(edge);
    }
    for cycle in cycles(&graph) {
        wrong.push(format!("import cycle: {cycle}"));
    }
    wrong
}

/// One cycle through each strongly connected group of modules, as `a -> b (at) -> a (at)`.
fn cycles(graph: &BTreeMap<&str, Vec<&Edge>>) -> Vec<String> {
    let mut found = Vec::new();
    let mut reported: BTreeSet<String> = BTreeSet::new();
    for &start in graph.keys() {
        // Breadth-first from `start` back to it: the shortest cycle through it, if any.
        let mut came_from: BTreeMap<&str, &Edge> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut closing = None;
        while let Some(module) = queue.pop_front() {
            for edge in graph.get(module).into_iter().flatten() {
                if edge.to == start {
                    closing = Some(*edge);
                    break;
                }
                if !came_from.contains_key(edge.to.as_str()) {
                    came_from.insert(&edge.to, edge);
                    queue.push_back(&edge.to);
                }
            }
            if closing.is_some() {
                break;
            }
        }
        let Some(last) = closing else { continue };
        let mut steps = vec![last];
        let mut at = last.from.as_str();
        while at != start {
            let edge = came_from[at];
            steps.push(edge);
            at = &edge.from;
        }
        steps.reverse();
        let mut members: Vec<&str> = steps.iter().map(|e| e.from.as_str()).collect();
        members.sort();
        if reported.insert(members.join(",")) {
            let mut text = start.to_owned();
            for step in steps {
                text.push_str(&format!(" -> {} ({})", step.to, step.at));
            }
            found.push(text);
        }
    }
    found
}

/// The tree with `line` appended to `file` (which is created if missing).
fn planted(tree: &[SourceFile], file: &str, line: &str) -> Vec<SourceFile> {
    let mut tree = tree.to_vec();
    match tree.iter_mut().find(|(f, _)| f == file) {
        Some((_, text)) => {
            text.push('\n');
            text.push_str(line);
            text.push('\n');
        }
        None => tree.push((file.to_owned(), format!("{line}\n"))),
    }
    tree
}

#[test]
fn the_checker_finds_every_kind_of_planted_bad_import() {
    let tree = read_tree();
    let bad = [
        (
            "engine/mod.rs",
            "use crate::report::summary;",
            "engine imports report",
        ),
        (
            "engine/sites.rs",
            "fn f() { crate::export::otlp::go(); }",
            "engine imports export",
        ),
        (
            "clock.rs",
            "use crate::{config::Config, hooks::watchdog};",
            "clock imports hooks",
        ),
        (
            "engine/stall.rs",
            "use super::super::layer::current_task_site;",
            "engine imports layer",
        ),
        (
            "engine/locks.rs",
            "use crate::{\n    sync::Mutex,\n    config,\n};",
            "engine imports sync",
        ),
        (
            "engine/mod.rs",
            "use crate::task::spawn_blocking;",
            "engine imports task",
        ),
        (
            "engine/runtimes.rs",
            "mod inner { fn f() { super::super::super::report::go(); } }",
            "engine imports report",
        ),
        (
            "snapshot.rs",
            "use crate::layer::StallscopeLayer;",
            "import cycle: ",
        ),
        (
            "report/mod.rs",
            "fn f(_: &crate::StallscopeLayer) {}",
            "import cycle: ",
        ),
    ];
    for (file, line, expected) in bad {
        let found = violations(&planted(&tree, file, line));
        assert!(
            found.iter().any(|v| v.contains(expected)),
            "`{line}` planted in src/{file} should be found ({expected}); found {found:#?}"
        );
    }
}

#[test]
fn the_checker_ignores_what_is_no_import() {
    let tree = read_tree();
    let harmless = [
        ("engine/mod.rs", "/// See [`crate::report::summary`]."),
        ("engine/mod.rs", "// crate::hooks::before_poll is a source"),
        (
            "engine/mod.rs",
            "/* crate::layer:: /* nested */ crate::sync:: */",
        ),
        (
            "engine/mod.rs",
            "const S: &str = \"crate::report::summary\";",
        ),
        (
            "engine/mod.rs",
            "const R: &str = r#\"crate::export::otlp \"quoted\"\"#;",
        ),
        (
            "engine/mod.rs",
            "#[cfg(test)]\nmod planted_tests {\n    use crate::layer::StallscopeLayer;\n}",
        ),
        (
            "engine/mod.rs",
            "fn f<'a>(x: &'a str) -> char { let _ = x; '\"' }",
        ),
    ];
    for (file, line) in harmless {
        let found = violations(&planted(&tree, file, line));
        assert!(found.is_empty(), "`{line}` is no import; found {found:#?}");
    }
}

#[test]
fn data_flows_one_way_sources_engine_sinks() {
    let tree = read_tree();
    assert!(
        tree.len() >= 50,
        "read {} files under src/: the walk missed the tree",
        tree.len()
    );
    let edges = edges(&tree);
    let pairs: BTreeSet<(&str, &str)> = edges
        .iter()
        .map(|e| (e.from.as_str(), e.to.as_str()))
        .collect();
    // The graph, for a reader running this with --nocapture.
    eprintln!("imports between top-level modules: {pairs:?}");
    assert!(
        pairs.len() >= 25,
        "only {} imports between top-level modules parsed: {pairs:?}",
        pairs.len()
    );
    // Imports known to exist, one of each kind: a source, a sink, grouped `use`, `super::`.
    for known in [
        ("layer", "engine"),
        ("hooks", "engine"),
        ("sync", "engine"),
        ("task", "engine"),
        ("report", "engine"),
        ("export", "engine"),
        ("engine", "config"),
        ("engine", "snapshot"),
        ("builder", "report"),
    ] {
        assert!(
            pairs.contains(&known),
            "{known:?} not parsed from {pairs:?}"
        );
    }
    let wrong = violations(&tree);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

// The user guide: the pages under `docs/` in the repository, one module each. The guide's own
// page is `docs/README.md`, given to the module where `src/lib.rs` declares it.
//
// The pages link to each other with reference-style links (`[modes]: modes.md`), which GitHub
// resolves between the files. In rustdoc each page is a module, so every page is preceded by
// definitions of the same labels pointing to the modules (`guide_labels!`, in `src/lib.rs`): the
// first definition of a label wins, and the page's own file definitions are ignored. `tests`
// checks that every label the pages define is overridden, to the same page and anchor.

macro_rules! page {
    ($name:ident, $file:literal) => {
        #[doc = guide_labels!()]
        #[doc = include_str!(concat!("../docs/", $file))]
        pub mod $name {}
    };
}

page!(modes, "modes.md");
page!(report, "report.md");
page!(stacks, "stacks.md");
page!(locks, "locks.md");
page!(runtimes, "runtimes.md");
page!(console, "console.md");
page!(grafana, "grafana.md");
page!(operating, "operating.md");
page!(configuration, "configuration.md");
page!(metrics, "metrics.md");

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    /// `label -> target` of every `[label]: target` line in `text`.
    fn definitions(text: &str) -> BTreeMap<String, String> {
        text.lines()
            .filter_map(|line| {
                let rest = line.strip_prefix('[')?;
                let (label, target) = rest.split_once("]: ")?;
                Some((label.to_owned(), target.trim().to_owned()))
            })
            .collect()
    }

    /// Every label a page under `docs/` defines is overridden for rustdoc, to the module of the
    /// same page and the same anchor; every page is a module of the guide.
    #[test]
    fn every_docs_link_label_points_to_the_same_page_in_rustdoc() {
        let overrides = definitions(guide_labels!());
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        let source = include_str!("guide.rs");
        for entry in std::fs::read_dir(&docs).expect("docs/") {
            let path = entry.expect("a docs/ entry").path();
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.extension().is_none_or(|e| e != "md") {
                continue;
            }
            if file != "README.md" {
                assert!(
                    source.contains(&format!("\"{file}\")")),
                    "docs/{file} is not a page of the guide (src/guide.rs)"
                );
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for (label, target) in definitions(&text) {
                let (page, anchor) = target.split_once('#').unwrap_or((&target, ""));
                let module = page.strip_suffix(".md").unwrap_or(page);
                let module = if module == "README" { "" } else { module };
                let expected = match (module, anchor) {
                    ("", _) => "crate::guide".to_owned(),
                    (m, "") => format!("crate::guide::{m}"),
                    (m, a) => format!("crate::guide::{m}#{a}"),
                };
                assert_eq!(
                    overrides.get(&label),
                    Some(&expected),
                    "docs/{file}: [{label}]: {target} needs `[{label}]: {expected}` in guide_labels!() (src/lib.rs)"
                );
            }
        }
    }
}

//! The documentation holds together in a fresh clone: every link in README.md and docs/ points
//! at a file of the repository (never outside it) and, where it names an anchor, at a heading
//! that exists; docs/SUMMARY.md lists every page of the mdBook; and every invariant the code
//! refers to (`I1`, `I2`, ...) is defined in docs/design.md. Pure file reading: no database.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

mod support;

// What the benches write their reports with (docs/results/<bench>.md).
use support::page;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every file under `dir` whose name ends with `ext`, sorted.
fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("list {}: {e}", d.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == ext) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// README.md and every page under docs/.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![repo().join("README.md")];
    pages.extend(files(&repo().join("docs"), "md"));
    pages
}

/// The lines of a markdown text outside fenced code blocks, with their line numbers (from 1).
fn prose(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start().trim_start_matches('>').trim_start();
        let marker = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m));
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(f), Some(m)) if f == m => fence = None,
            (None, None) => out.push((i + 1, line)),
            _ => {}
        }
    }
    out
}

/// `line` without its inline code spans (`` `...` ``).
fn without_code(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        out.push_str(&rest[..start]);
        let ticks = rest[start..].chars().take_while(|&c| c == '`').count();
        let after = &rest[start + ticks..];
        match after.find(&"`".repeat(ticks)) {
            Some(end) => rest = &after[end + ticks..],
            None => {
                rest = after;
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The targets of the inline links and images on a line of prose: `[text](target)`.
fn links(line: &str) -> Vec<String> {
    let line = without_code(line);
    let mut out = Vec::new();
    let mut rest = line.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let end = after.find(')').unwrap_or(after.len());
        let target = after[..end].split_whitespace().next().unwrap_or("");
        out.push(target.trim_matches(['<', '>']).to_owned());
        rest = &after[end..];
    }
    out
}

/// The anchor a heading gets (GitHub's rule, which mdBook follows): lower case, inline markup
/// dropped, spaces to `-`, anything but letters, digits, `-` and `_` left out.
fn slug(heading: &str) -> String {
    let mut text = without_code_marks(heading);
    // [text](target) -> text
    while let (Some(open), Some(mid)) = (text.find('['), text.find("](")) {
        let Some(close) = text[mid..].find(')') else {
            break;
        };
        if open > mid {
            break;
        }
        text = format!(
            "{}{}{}",
            &text[..open],
            &text[open + 1..mid],
            &text[mid + close + 1..]
        );
    }
    text.trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// A heading's text with the backticks of its code spans removed (their text stays).
fn without_code_marks(heading: &str) -> String {
    heading.replace('`', "")
}

/// The anchors of a markdown page: one per heading outside code blocks, duplicates numbered
/// `-1`, `-2`, ... as GitHub and mdBook number them.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (_, line) in prose(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if hashes == 0 || hashes > 6 || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(&line[hashes + 1..]);
        let mut anchor = base.clone();
        let mut n = 0;
        while out.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        out.insert(anchor);
    }
    out
}

/// `path` with `.` and `..` resolved, without touching the file system (the target may not
/// exist).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// What is wrong with one link of `page`, if anything.
fn check_link(page: &Path, target: &str) -> Option<String> {
    if target.is_empty() {
        return Some("an empty link".into());
    }
    if target.contains("://") || target.starts_with("mailto:") || target.starts_with("//") {
        return Some(format!(
            "{target}: links outside the repository (nothing in it may)"
        ));
    }
    let (file, anchor) = match target.split_once('#') {
        Some((file, anchor)) => (file, Some(anchor)),
        None => (target, None),
    };
    let resolved = if file.is_empty() {
        page.to_path_buf()
    } else if let Some(from_root) = file.strip_prefix('/') {
        repo().join(from_root)
    } else {
        normalize(&page.parent().expect("a page's directory").join(file))
    };
    if !resolved.starts_with(repo()) {
        return Some(format!("{target}: points outside the repository"));
    }
    if !resolved.exists() {
        return Some(format!("{target}: {} does not exist", resolved.display()));
    }
    let anchor = anchor?;
    if resolved.extension().is_none_or(|e| e != "md") {
        return Some(format!(
            "{target}: an anchor into a file that is not markdown"
        ));
    }
    if !anchors(&read(&resolved)).contains(anchor) {
        return Some(format!(
            "{target}: {} has no heading with the anchor #{anchor}",
            resolved.display()
        ));
    }
    None
}

/// Every link of README.md and docs/ resolves in this checkout: the file exists inside the
/// repository, and the anchor, if any, is a heading of it.
#[test]
fn every_link_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let text = read(&page);
        for (n, line) in prose(&text) {
            for target in links(line) {
                checked += 1;
                if let Some(problem) = check_link(&page, &target) {
                    let name = page.strip_prefix(repo()).unwrap_or(&page);
                    broken.push(format!("{}:{n}: {problem}", name.display()));
                }
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} links found: is the parser broken?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// Names that only exist outside the repository never appear in README.md or docs/.
#[test]
fn nothing_refers_outside_the_repository() {
    let mut found = Vec::new();
    for page in pages() {
        let text = read(&page);
        for (n, line) in text.lines().enumerate() {
            for name in ["../shared", "DESIGN.md", "STYLE.md", "http://", "https://"] {
                // Loopback addresses are where a local walshift or Prometheus listens.
                let local = line
                    .replace("http://127.0.0.1", "")
                    .replace("http://...", "");
                if local.contains(name) {
                    let page = page.strip_prefix(repo()).unwrap_or(&page);
                    found.push(format!("{}:{}: {name}", page.display(), n + 1));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "references outside the repository:\n{}",
        found.join("\n")
    );
}

/// docs/SUMMARY.md, the mdBook's table of contents, lists every page under docs/ (a page it
/// leaves out is not in the book), and every page it lists exists.
#[test]
fn the_summary_lists_every_page() {
    let docs = repo().join("docs");
    let summary = docs.join("SUMMARY.md");
    let listed: BTreeSet<PathBuf> = prose(&read(&summary))
        .into_iter()
        .flat_map(|(_, line)| links(line))
        .map(|target| normalize(&docs.join(target)))
        .collect();
    for page in &listed {
        assert!(
            page.exists(),
            "SUMMARY.md lists {}, which does not exist",
            page.display()
        );
    }
    let missing: Vec<String> = files(&docs, "md")
        .into_iter()
        .filter(|p| *p != summary && !listed.contains(p))
        .map(|p| p.strip_prefix(&docs).unwrap_or(&p).display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "docs/SUMMARY.md does not list: {}",
        missing.join(", ")
    );
}

/// The invariants named in the code, as `I<n>`.
fn invariants_referred_to(text: &str, out: &mut BTreeSet<u32>) {
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b != b'I' || (i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_')) {
            continue;
        }
        let digits: String = text[i + 1..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let next = bytes.get(i + 1 + digits.len()).copied().unwrap_or(b' ');
        if digits.is_empty() || next.is_ascii_alphanumeric() || next == b'_' {
            continue;
        }
        out.insert(digits.parse().expect("digits"));
    }
}

/// Every invariant that src/ refers to (`I1` ... `I7` in comments) is defined in
/// docs/design.md, as a bold `**I<n> — name.**` item.
#[test]
fn design_defines_every_invariant_the_code_names() {
    let mut referred = BTreeSet::new();
    for file in files(&repo().join("src"), "rs") {
        invariants_referred_to(&read(&file), &mut referred);
    }
    assert!(
        referred.contains(&1),
        "no invariant found in src/: is the scan broken?"
    );
    let design = read(&repo().join("docs/design.md"));
    let undefined: Vec<String> = referred
        .iter()
        .filter(|n| !design.contains(&format!("**I{n} — ")))
        .map(|n| format!("I{n}"))
        .collect();
    assert!(
        undefined.is_empty(),
        "src/ refers to invariants docs/design.md does not define: {}",
        undefined.join(", ")
    );
}

#[test]
fn slugs_follow_the_headings() {
    assert_eq!(slug("Check's data scan"), "checks-data-scan");
    assert_eq!(slug("Troubleshooting `check`"), "troubleshooting-check");
    assert_eq!(
        slug("4. The engine: dirty keys, recomputed from current state"),
        "4-the-engine-dirty-keys-recomputed-from-current-state"
    );
    assert_eq!(
        slug("Failover slots (PostgreSQL 17+)"),
        "failover-slots-postgresql-17"
    );
    let a = anchors("# A\n\n```\n# not a heading\n```\n## A\n");
    assert_eq!(a, BTreeSet::from(["a".to_owned(), "a-1".to_owned()]));
    assert_eq!(
        links("see [x](a.md#b) and `[y](not-a-link)`, ![i](c.svg \"t\")"),
        ["a.md#b", "c.svg"]
    );
}

/// A page the benches generate has one title, the report's headings one level down (code blocks
/// left alone), the header naming the command, and links that resolve from docs/results/.
#[test]
fn a_generated_results_page_holds_together() {
    let report = "# walshift end-to-end benchmarks\n\n| a |\n|---|\n| 1 |\n\n## Details\n\n\
                  ```text\n# not a heading\n```\n";
    let text = page::page(
        "e2e",
        "E2E_REPS=1 cargo bench --bench e2e",
        "PostgreSQL 15.14",
        "2026-12-03 14:00 UTC",
        report,
    );
    let titles: Vec<&str> = prose(&text)
        .into_iter()
        .map(|(_, line)| line)
        .filter(|line| line.starts_with("# "))
        .collect();
    assert_eq!(titles, ["# Results: `cargo bench --bench e2e`"], "{text}");
    assert!(
        text.contains("\n## walshift end-to-end benchmarks\n"),
        "{text}"
    );
    assert!(text.contains("\n### Details\n"), "{text}");
    assert!(text.contains("\n# not a heading\n"), "{text}");
    assert!(
        text.contains("Generated by `E2E_REPS=1 cargo bench --bench e2e` on 2026-12-03 14:00 UTC"),
        "{text}"
    );
    let at = page::path("e2e");
    assert_eq!(at, repo().join("docs/results/e2e.md"));
    for (_, line) in prose(&text) {
        for target in links(line) {
            assert_eq!(check_link(&at, &target), None, "{target}");
        }
    }
    let now = page::utc_now();
    assert_eq!(now.len(), "2026-12-03 14:00 UTC".len(), "{now}");
    assert!(now.starts_with("20") && now.ends_with(" UTC"), "{now}");
}

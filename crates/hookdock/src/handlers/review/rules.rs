//! The built-in rule reviewer: checks on the added lines that need no network.
//!
//! This module owns [`RuleSet`] (which rules run, from configuration) and [`review`]: secrets,
//! debug prints, TODO markers, conflict markers, large files and missing tests.

use serde::{Deserialize, Serialize};

use super::diff::added_lines;
use super::{ChangedFile, Finding, ReviewInput, Severity};

/// Which rules run. Every rule is on by default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuleSet {
    pub secrets: bool,
    pub debug_prints: bool,
    pub todo: bool,
    pub large_files: bool,
    /// A file adding more lines than this gets a `large-file` finding.
    pub large_file_lines: u64,
    pub missing_tests: bool,
    pub conflict_markers: bool,
}

impl Default for RuleSet {
    fn default() -> Self {
        RuleSet {
            secrets: true,
            debug_prints: true,
            todo: true,
            large_files: true,
            large_file_lines: 500,
            missing_tests: true,
            conflict_markers: true,
        }
    }
}

/// Runs the enabled rules over the added lines of `input.files` and the stats of `input.files`
/// and `input.summarized`. Findings come in file order, then line order, then rule order.
pub fn review(input: &ReviewInput, rules: &RuleSet) -> Vec<Finding> {
    let mut findings = Vec::new();
    for file in &input.files {
        let language = Language::of(&file.path);
        for (line, text) in added_lines(file.patch.as_deref().unwrap_or("")) {
            let mut add = |severity, source: &str, message: String| {
                findings.push(Finding {
                    path: Some(file.path.clone()),
                    line: Some(line),
                    severity,
                    message,
                    source: source.to_string(),
                })
            };
            if rules.conflict_markers && is_conflict_marker(&text) {
                add(
                    Severity::Error,
                    "conflict-marker",
                    "Merge conflict marker added: resolve the conflict and remove the marker."
                        .to_string(),
                );
            }
            if rules.secrets
                && let Some(secret) = find_secret(&text)
            {
                add(
                    Severity::Error,
                    "secret",
                    format!(
                        "Possible {} (`{}`) added: remove it, rotate it, and load it from the \
                         environment or a secret store.",
                        secret.kind,
                        mask(&secret.value)
                    ),
                );
            }
            if rules.debug_prints
                && let Some(call) = find_debug_print(language, &text)
            {
                add(
                    Severity::Warning,
                    "debug-print",
                    format!("Debugging statement `{call}` added: remove it before merging."),
                );
            }
            if rules.todo
                && let Some(marker) = find_todo(&text)
            {
                add(
                    Severity::Info,
                    "todo",
                    format!(
                        "`{marker}` added: resolve it or track it in an issue and link the issue."
                    ),
                );
            }
        }
    }
    if rules.large_files {
        for file in input.files.iter().chain(&input.summarized) {
            if file.additions > rules.large_file_lines {
                findings.push(Finding {
                    path: Some(file.path.clone()),
                    line: None,
                    severity: Severity::Warning,
                    message: format!(
                        "`{}` adds {} lines (more than {}): consider splitting it into smaller \
                         files or pull requests.",
                        file.path, file.additions, rules.large_file_lines
                    ),
                    source: "large-file".to_string(),
                });
            }
        }
    }
    if rules.missing_tests && misses_tests(input) {
        findings.push(Finding {
            path: None,
            line: None,
            severity: Severity::Info,
            message: "Code changed but no test file was added or changed: consider adding tests \
                      for the change."
                .to_string(),
            source: "missing-tests".to_string(),
        });
    }
    findings
}

/// At most the first 4 characters, then `…`.
fn mask(secret: &str) -> String {
    let head: String = secret.chars().take(4).collect();
    format!("{head}\u{2026}")
}

fn is_conflict_marker(text: &str) -> bool {
    text.starts_with("<<<<<<< ")
        || text.starts_with(">>>>>>> ")
        || text.starts_with("||||||| ")
        || text == "======="
}

struct Secret {
    kind: &'static str,
    value: String,
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Byte offsets of `needle` in `text` that do not follow a word character.
fn word_starts<'a>(text: &'a str, needle: &'a str) -> impl Iterator<Item = usize> + 'a {
    text.match_indices(needle)
        .map(|(i, _)| i)
        .filter(move |&i| i == 0 || !is_word_byte(text.as_bytes()[i - 1]))
}

/// Length of the run of bytes from `from` satisfying `ok`.
fn run_len(text: &str, from: usize, ok: impl Fn(u8) -> bool) -> usize {
    text.as_bytes()[from..]
        .iter()
        .take_while(|&&b| ok(b))
        .count()
}

fn find_secret(text: &str) -> Option<Secret> {
    let found = |kind, value: &str| {
        Some(Secret {
            kind,
            value: value.to_string(),
        })
    };
    for i in word_starts(text, "AKIA") {
        let n = run_len(text, i + 4, |b| {
            b.is_ascii_uppercase() || b.is_ascii_digit()
        });
        if n == 16 {
            return found("AWS access key id", &text[i..i + 20]);
        }
    }
    if let Some(i) = text.find("-----BEGIN ")
        && text[i..].contains("PRIVATE KEY-----")
    {
        return found("private key", &text[i..]);
    }
    for prefix in ["ghp_", "gho_", "ghu_", "ghs_", "ghr_"] {
        for i in word_starts(text, prefix) {
            let n = run_len(text, i + 4, |b| b.is_ascii_alphanumeric());
            if n >= 36 {
                return found("GitHub token", &text[i..i + 4 + n]);
            }
        }
    }
    for i in word_starts(text, "github_pat_") {
        let n = run_len(text, i + 11, is_word_byte);
        if n >= 22 {
            return found("GitHub token", &text[i..i + 11 + n]);
        }
    }
    for i in word_starts(text, "xox") {
        let bytes = text.as_bytes();
        if bytes.get(i + 3).is_some_and(|b| b"baprs".contains(b)) && bytes.get(i + 4) == Some(&b'-')
        {
            let n = run_len(text, i + 5, |b| b.is_ascii_alphanumeric() || b == b'-');
            if n >= 10 {
                return found("Slack token", &text[i..i + 5 + n]);
            }
        }
    }
    find_secret_assignment(text).map(|value| Secret {
        kind: "hard-coded credential",
        value,
    })
}

/// Key names that hold credentials (matched inside a longer identifier, case-insensitively).
const SECRET_KEYS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "api_key",
    "apikey",
    "api-key",
    "access_key",
    "access_token",
    "auth_token",
    "private_key",
];

/// `password = "…"`, `api_key: '…'`, `"client_secret": "…"`, `SECRET=…` with a quoted literal
/// of 8+ characters that is not a placeholder. Returns the literal.
fn find_secret_assignment(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let is_ident = |b: u8| is_word_byte(b) || b == b'-' || b == b'.';
    let mut i = 0;
    while i < bytes.len() {
        if !is_ident(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is_ident(bytes[i]) {
            i += 1;
        }
        if !names_secret(&text[start..i]) {
            continue;
        }
        let mut j = i;
        // A quoted key: `"password": "…"`.
        if j < bytes.len() && (bytes[j] == b'"' || bytes[j] == b'\'') {
            j += 1;
        }
        j += run_len(text, j, |b| b == b' ' || b == b'\t');
        // `=`, `:`, `:=`, but not `==`, `!=`, `=>` comparisons or arrows.
        match bytes.get(j) {
            Some(b':') => {
                j += 1;
                if bytes.get(j) == Some(&b'=') {
                    j += 1;
                }
            }
            Some(b'=') if !matches!(bytes.get(j + 1), Some(b'=') | Some(b'>')) => j += 1,
            _ => continue,
        }
        j += run_len(text, j, |b| b == b' ' || b == b'\t');
        let Some(&quote) = bytes.get(j).filter(|&&b| b == b'"' || b == b'\'') else {
            continue;
        };
        let literal_start = j + 1;
        let Some(len) = text[literal_start..].find(quote as char) else {
            continue;
        };
        let literal = &text[literal_start..literal_start + len];
        if literal.chars().count() >= 8 && !is_placeholder(literal) {
            return Some(literal.to_string());
        }
        i = literal_start + len + 1;
    }
    None
}

/// Whether an identifier names a credential: it contains one of [`SECRET_KEYS`] not followed
/// by a lowercase letter (`client_secret`, `dbPassword`, `SECRET_KEY`, but not `secretary`).
fn names_secret(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    SECRET_KEYS.iter().any(|k| {
        lower.match_indices(k).any(|(i, _)| {
            !key.as_bytes()
                .get(i + k.len())
                .is_some_and(|b| b.is_ascii_lowercase())
        })
    })
}

fn is_placeholder(value: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    let same_char = value.chars().all(|c| value.starts_with(c));
    lower.contains("changeme")
        || lower.contains("change_me")
        || lower.contains("example")
        || lower.contains("placeholder")
        || lower.contains("your_")
        || lower.contains("your-")
        || lower.starts_with("xxx")
        || value.contains("${")
        || value.contains("{{")
        || value.contains("%(")
        || (value.starts_with('<') && value.ends_with('>'))
        || same_char
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Language {
    Rust,
    JavaScript,
    Python,
    Go,
    Ruby,
    Other,
}

impl Language {
    fn of(path: &str) -> Language {
        match extension(path) {
            "rs" => Language::Rust,
            "js" | "jsx" | "ts" | "tsx" | "mjs" | "cjs" | "mts" | "cts" | "vue" | "svelte" => {
                Language::JavaScript
            }
            "py" => Language::Python,
            "go" => Language::Go,
            "rb" => Language::Ruby,
            _ => Language::Other,
        }
    }

    /// Where a line comment starts in `text`, if anywhere (a comment marker inside a string
    /// literal also counts: the check stays conservative).
    fn comment_start(self, text: &str) -> Option<usize> {
        let trimmed = text.trim_start();
        let indent = text.len() - trimmed.len();
        match self {
            Language::Python | Language::Ruby => text.find('#'),
            _ if trimmed.starts_with('*') => Some(indent),
            _ => match (text.find("//"), text.find("/*")) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
    }
}

fn extension(path: &str) -> &str {
    let name = path.rsplit('/').next().unwrap_or(path);
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => ext,
        _ => "",
    }
}

/// A debugging statement on the line, outside a comment.
fn find_debug_print(language: Language, text: &str) -> Option<&'static str> {
    let patterns: &[&'static str] = match language {
        Language::Rust => &["dbg!("],
        Language::JavaScript => &["console.log(", "debugger;"],
        Language::Python => &["breakpoint()", "pdb.set_trace()", "import pdb"],
        Language::Go => &["fmt.Println(\"DEBUG", "fmt.Printf(\"DEBUG"],
        Language::Ruby => &["binding.pry", "byebug"],
        Language::Other => &[],
    };
    let code_end = language.comment_start(text).unwrap_or(text.len());
    let code = &text[..code_end];
    patterns.iter().copied().find(|p| {
        word_starts(code, p).any(|i| {
            // Not a method of something else (`logger.console.log(`).
            let after_dot = i > 0 && code.as_bytes()[i - 1] == b'.';
            // `import pdb` must be the whole module name (not `import pdbx`).
            !after_dot
                && (!p.ends_with(|c: char| c.is_ascii_alphanumeric())
                    || !code
                        .as_bytes()
                        .get(i + p.len())
                        .is_some_and(|&b| is_word_byte(b)))
        })
    })
}

/// `TODO`, `FIXME` or `XXX` as a whole word.
fn find_todo(text: &str) -> Option<&'static str> {
    ["TODO", "FIXME", "XXX"].into_iter().find(|marker| {
        word_starts(text, marker).any(|i| {
            !text
                .as_bytes()
                .get(i + marker.len())
                .is_some_and(|&b| is_word_byte(b))
        })
    })
}

const CODE_EXTENSIONS: &[&str] = &[
    "rs", "go", "py", "js", "ts", "tsx", "jsx", "java", "kt", "rb", "cs", "cpp", "c", "h", "swift",
    "php", "scala",
];

fn is_code(path: &str) -> bool {
    CODE_EXTENSIONS.contains(&extension(path))
}

/// A path that looks like a test: a `test`/`tests`/`spec`/`__tests__` directory, or a name like
/// `x_test.go`, `test_x.py`, `x.test.ts`, `x.spec.js`.
fn is_test_path(path: &str) -> bool {
    let mut segments: Vec<&str> = path.split('/').collect();
    let name = segments.pop().unwrap_or(path);
    if segments
        .iter()
        .any(|s| matches!(*s, "test" | "tests" | "spec" | "__tests__"))
    {
        return true;
    }
    let stem = name.split('.').next().unwrap_or(name);
    let inner: Vec<&str> = name.split('.').collect();
    stem.ends_with("_test")
        || (stem.starts_with("test_") && extension(name) == "py")
        || (inner.len() >= 3
            && inner[1..inner.len() - 1]
                .iter()
                .any(|p| *p == "test" || *p == "spec"))
}

fn adds_rust_tests(file: &ChangedFile) -> bool {
    extension(&file.path) == "rs"
        && added_lines(file.patch.as_deref().unwrap_or(""))
            .iter()
            .any(|(_, t)| t.contains("#[test]") || t.contains("#[cfg(test)]"))
}

fn misses_tests(input: &ReviewInput) -> bool {
    let changed = || input.files.iter().chain(&input.summarized);
    let code_changed =
        changed().any(|f| f.status != "removed" && is_code(&f.path) && !is_test_path(&f.path));
    if !code_changed {
        return false;
    }
    let has_tests = changed().any(|f| is_test_path(&f.path))
        || input.skipped.iter().any(|f| is_test_path(&f.path))
        || input.files.iter().any(adds_rust_tests);
    !has_tests
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::review::{PullInfo, SkippedFile};

    fn patch_of(added: &[&str]) -> String {
        let mut patch = format!("@@ -0,0 +1,{} @@\n", added.len());
        for line in added {
            patch.push('+');
            patch.push_str(line);
            patch.push('\n');
        }
        patch
    }

    fn file(path: &str, added: &[&str]) -> ChangedFile {
        ChangedFile {
            path: path.to_string(),
            status: "added".to_string(),
            additions: added.len() as u64,
            deletions: 0,
            patch: Some(patch_of(added)),
            previous_filename: None,
        }
    }

    fn input(files: Vec<ChangedFile>) -> ReviewInput {
        ReviewInput {
            pull: PullInfo::default(),
            files,
            summarized: vec![],
            skipped: vec![],
        }
    }

    fn only(rule: &str) -> RuleSet {
        RuleSet {
            secrets: rule == "secret",
            debug_prints: rule == "debug-print",
            todo: rule == "todo",
            large_files: rule == "large-file",
            large_file_lines: 500,
            missing_tests: rule == "missing-tests",
            conflict_markers: rule == "conflict-marker",
        }
    }

    /// (line, message) of the findings of one rule on one file's added lines.
    fn run(rule: &str, path: &str, added: &[&str]) -> Vec<(u64, String)> {
        review(&input(vec![file(path, added)]), &only(rule))
            .into_iter()
            .inspect(|f| assert_eq!(f.source, rule))
            .map(|f| (f.line.unwrap_or(0), f.message))
            .collect()
    }

    fn lines(rule: &str, path: &str, added: &[&str]) -> Vec<u64> {
        run(rule, path, added).into_iter().map(|(l, _)| l).collect()
    }

    #[test]
    fn ruleset_defaults_and_deserialize() {
        let d = RuleSet::default();
        assert!(d.secrets && d.debug_prints && d.todo && d.large_files);
        assert!(d.missing_tests && d.conflict_markers);
        assert_eq!(d.large_file_lines, 500);
        let r: RuleSet =
            serde_json::from_str(r#"{"todo": false, "large_file_lines": 10}"#).unwrap();
        assert!(!r.todo && r.secrets);
        assert_eq!(r.large_file_lines, 10);
        assert!(serde_json::from_str::<RuleSet>(r#"{"todos": false}"#).is_err());
    }

    #[test]
    fn secrets_are_found_and_masked() {
        let found = run(
            "secret",
            "src/config.py",
            &[
                "aws = 'AKIAIOSFODNN7EXAMPLE'",
                "-----BEGIN RSA PRIVATE KEY-----",
                "token = ghp_abcdefghijklmnopqrstuvwxyz0123456789",
                "t2 = github_pat_11ABCDEFG0123456789_abcdefghijklmnop",
                "slack = xoxb-123456789012-abcdefghij",
                "password = \"hunter2hunter2\"",
                "    api_key: 'sk_live_4eC39HqLyjWDarjtT1'",
                "SECRET=\"s3cr3t-v4lue\"",
                "{\"client_secret\": \"abcd1234efgh\"}",
            ],
        );
        assert_eq!(
            found.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5, 6, 7, 8, 9]
        );
        assert!(
            found[0].1.contains("AWS access key id (`AKIA\u{2026}`)"),
            "{}",
            found[0].1
        );
        assert!(found[2].1.contains("GitHub token (`ghp_\u{2026}`)"));
        assert!(found[4].1.contains("Slack token (`xoxb\u{2026}`)"));
        assert!(found[5].1.contains("(`hunt\u{2026}`)"), "{}", found[5].1);
        for (_, message) in &found {
            assert!(!message.contains("IOSFODNN7"));
            assert!(!message.contains("hunter2hunter2"));
            assert!(!message.contains("abcdefghijklmnop"));
            assert!(message.contains("rotate"));
        }
    }

    #[test]
    fn secret_negatives() {
        let none = lines(
            "secret",
            "app.py",
            &[
                "password = \"changeme\"",
                "password = \"xxxxxxxxxxxx\"",
                "api_key = \"${API_KEY}\"",
                "secret: '<your secret here>'",
                "password = 'example-password'",
                "password = \"short\"",
                "password = os.environ['PASSWORD_VAR']",
                "if password == \"hunter2hunter2\":",
                "AKIA1234",
                "token = ghp_short",
                "let secretary = \"Jane Doe Smith\";",
            ],
        );
        assert_eq!(none, Vec::<u64>::new());
    }

    #[test]
    fn removed_line_with_secret_is_not_flagged() {
        let f = ChangedFile {
            path: "a.py".to_string(),
            status: "modified".to_string(),
            additions: 1,
            deletions: 1,
            patch: Some(
                "@@ -1,1 +1,1 @@\n-aws = 'AKIAIOSFODNN7EXAMPLE'\n+aws = os.environ['AWS']\n"
                    .to_string(),
            ),
            previous_filename: None,
        };
        assert!(review(&input(vec![f]), &only("secret")).is_empty());
    }

    #[test]
    fn debug_prints_by_language() {
        assert_eq!(
            lines(
                "debug-print",
                "src/lib.rs",
                &["let x = dbg!(y);", "// dbg!(y)", "x"]
            ),
            vec![1]
        );
        assert_eq!(
            lines(
                "debug-print",
                "web/app.ts",
                &[
                    "console.log(x);",
                    "// console.log(x);",
                    "  debugger;",
                    "logger.console.log(x)",
                    "/* console.log(x) */",
                    " * console.log(x)",
                    "foo(); // console.log(x)"
                ]
            ),
            vec![1, 3]
        );
        assert_eq!(
            lines(
                "debug-print",
                "a.py",
                &[
                    "breakpoint()",
                    "import pdb; pdb.set_trace()",
                    "# breakpoint()",
                    "import pdbx",
                    "print(x)"
                ]
            ),
            vec![1, 2]
        );
        assert_eq!(
            lines(
                "debug-print",
                "main.go",
                &["fmt.Println(\"DEBUG x\", x)", "fmt.Println(\"hello\")"]
            ),
            vec![1]
        );
        assert_eq!(
            lines("debug-print", "README.md", &["console.log(x)", "dbg!(x)"]),
            Vec::<u64>::new()
        );
        let msg = &run("debug-print", "x.js", &["console.log(1)"])[0].1;
        assert!(
            msg.contains("`console.log(`") && msg.contains("remove"),
            "{msg}"
        );
    }

    #[test]
    fn todo_markers_as_words() {
        assert_eq!(
            lines(
                "todo",
                "a.rs",
                &[
                    "// TODO: handle errors",
                    "# FIXME later",
                    "/* XXX */",
                    "let todo_list = TODOS;",
                    "let x = MYTODO;",
                    // Rust's macro is not a marker (spelled out so no search mistakes it).
                    concat!("to", "do!()"),
                    "<!-- TODO(alice) -->"
                ]
            ),
            vec![1, 2, 3, 7]
        );
        let msg = &run("todo", "a.rs", &["// FIXME"])[0].1;
        assert!(msg.starts_with("`FIXME` added"), "{msg}");
    }

    #[test]
    fn conflict_markers() {
        assert_eq!(
            lines(
                "conflict-marker",
                "a.txt",
                &[
                    "<<<<<<< HEAD",
                    "=======",
                    ">>>>>>> feature",
                    "======= x",
                    "<<<<<<<",
                    "  =======",
                    "== heading =="
                ]
            ),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn large_files_include_summarized() {
        let mut big = file("big.rs", &["x"]);
        big.additions = 501;
        let mut summarized = file("huge.rs", &["x"]);
        summarized.additions = 2000;
        let mut exact = file("exact.rs", &["x"]);
        exact.additions = 500;
        let mut i = input(vec![big, exact]);
        i.summarized.push(summarized);
        let found = review(&i, &only("large-file"));
        let got: Vec<_> = found
            .iter()
            .map(|f| (f.path.as_deref(), f.line, f.severity))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some("big.rs"), None, Severity::Warning),
                (Some("huge.rs"), None, Severity::Warning)
            ]
        );
        assert!(found[0].message.contains("501 lines"));
        let lower = RuleSet {
            large_file_lines: 499,
            ..only("large-file")
        };
        assert_eq!(review(&i, &lower).len(), 3);
    }

    fn misses(files: Vec<ChangedFile>) -> bool {
        let found = review(&input(files), &only("missing-tests"));
        if let Some(f) = found.first() {
            assert_eq!(
                (f.path.as_deref(), f.line, f.severity),
                (None, None, Severity::Info)
            );
        }
        !found.is_empty()
    }

    #[test]
    fn missing_tests() {
        assert!(misses(vec![file("src/lib.rs", &["fn a() {}"])]));
        assert!(misses(vec![
            file("app/models.py", &["x = 1"]),
            file("README.md", &["x"])
        ]));
        assert!(!misses(vec![file("README.md", &["docs"])]));
        assert!(!misses(vec![
            file("src/lib.rs", &["fn a() {}"]),
            file("tests/api.rs", &["x"])
        ]));
        assert!(!misses(vec![
            file("pkg/a.go", &["x"]),
            file("pkg/a_test.go", &["x"])
        ]));
        assert!(!misses(vec![
            file("app/a.py", &["x"]),
            file("app/test_a.py", &["x"])
        ]));
        assert!(!misses(vec![
            file("src/a.ts", &["x"]),
            file("src/a.test.ts", &["x"])
        ]));
        assert!(!misses(vec![
            file("src/a.js", &["x"]),
            file("src/a.spec.js", &["x"])
        ]));
        assert!(!misses(vec![
            file("src/a.js", &["x"]),
            file("src/__tests__/a.js", &["x"])
        ]));
        assert!(!misses(vec![file(
            "src/lib.rs",
            &["#[cfg(test)]", "mod tests {}"]
        )]));
        assert!(!misses(vec![file("src/lib.rs", &["    #[test]"])]));
        assert!(misses(vec![file("src/lib.py", &["#[test]"])]));
        assert!(misses(vec![file("src/latest.rs", &["x"])]));
        let mut removed = file("src/old.rs", &[]);
        removed.status = "removed".to_string();
        assert!(!misses(vec![removed]));
        let mut with_skipped = input(vec![file("src/a.rs", &["x"])]);
        with_skipped.skipped.push(SkippedFile {
            path: "tests/fixtures/big.rs".to_string(),
            reason: "generated".to_string(),
        });
        assert!(review(&with_skipped, &only("missing-tests")).is_empty());
    }

    #[test]
    fn disabled_rules_find_nothing_and_sources_are_named() {
        let i = input(vec![file(
            "src/a.rs",
            &[
                "dbg!(x); // TODO",
                "<<<<<<< HEAD",
                "password = \"hunter2hunter2\"",
            ],
        )]);
        let none = RuleSet {
            secrets: false,
            debug_prints: false,
            todo: false,
            large_files: false,
            large_file_lines: 0,
            missing_tests: false,
            conflict_markers: false,
        };
        assert!(review(&i, &none).is_empty());
        let all: Vec<_> = review(&i, &RuleSet::default())
            .into_iter()
            .map(|f| (f.line, f.source))
            .collect();
        assert_eq!(
            all,
            vec![
                (Some(1), "debug-print".to_string()),
                (Some(1), "todo".to_string()),
                (Some(2), "conflict-marker".to_string()),
                (Some(3), "secret".to_string()),
                (None, "missing-tests".to_string()),
            ]
        );
    }

    proptest::proptest! {
        #[test]
        fn review_never_panics(
            line in "(\\PC|password|secret|=|:|\"|'|AKIA|ghp_|xoxb-|github_pat_|#|//|dbg!\\(|TODO|é){0,40}",
            ext in "(rs|py|js|go|rb|md)",
        ) {
            let path = format!("src/a.{ext}");
            let _ = review(&input(vec![file(&path, &[line.as_str()])]), &RuleSet::default());
        }
    }
}

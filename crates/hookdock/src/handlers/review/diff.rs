//! Parsing GitHub's unified-diff patches, the review budget, and anchoring findings to diff lines.
//!
//! This module owns: [`parse_patch`] and the line helpers built on it ([`right_lines`],
//! [`added_lines`], [`annotate`]); file classification ([`GitAttributes`], [`Classifier`]);
//! the size budget ([`select`]); placing findings on lines GitHub accepts ([`anchor`]); and
//! the coverage note that says what was and was not reviewed ([`coverage`]).

use std::collections::{BTreeSet, HashMap, HashSet};

use globset::{GlobBuilder, GlobMatcher};

use super::{ChangedFile, Finding, PullInfo, ReviewInput, SkippedFile};

/// What a diff line does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LineKind {
    Added,
    Removed,
    Context,
}

/// One line of a hunk, with its line numbers on each side (`None` on the side it is absent from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffLine {
    pub kind: LineKind,
    pub old_line: Option<u64>,
    pub new_line: Option<u64>,
    /// The line without its `+`/`-`/` ` prefix and without a trailing `\r`.
    pub text: String,
}

/// One `@@ -old_start,old_len +new_start,new_len @@` hunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hunk {
    pub old_start: u64,
    pub old_len: u64,
    pub new_start: u64,
    pub new_len: u64,
    pub lines: Vec<DiffLine>,
}

/// Why a patch could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("patch line {line}: malformed hunk header {header:?}")]
    BadHeader { line: usize, header: String },
    #[error("patch line {line}: diff line before the first hunk header: {text:?}")]
    OutsideHunk { line: usize, text: String },
    #[error("patch line {line}: unexpected diff line (not '+', '-', ' ' or '\\'): {text:?}")]
    BadLine { line: usize, text: String },
}

/// Parses `-12,3` / `+7` (the sign already removed) into (start, len); an omitted length is 1.
fn parse_range(range: &str) -> Option<(u64, u64)> {
    match range.split_once(',') {
        Some((start, len)) => Some((start.parse().ok()?, len.parse().ok()?)),
        None => Some((range.parse().ok()?, 1)),
    }
}

fn parse_header(header: &str) -> Option<(u64, u64, u64, u64)> {
    let rest = header.strip_prefix("@@ ")?;
    let (ranges, _section) = rest.split_once(" @@")?;
    let (old, new) = ranges.split_once(' ')?;
    let (old_start, old_len) = parse_range(old.strip_prefix('-')?)?;
    let (new_start, new_len) = parse_range(new.strip_prefix('+')?)?;
    Some((old_start, old_len, new_start, new_len))
}

/// Parses a file's `patch` from the files API into hunks.
///
/// Omitted lengths mean 1, CRLF line ends are accepted, `\ No newline at end of file` is
/// dropped, and an empty line inside a hunk (a context line whose leading space was lost) is
/// context. Empty lines outside a hunk's counted range are ignored.
pub fn parse_patch(patch: &str) -> Result<Vec<Hunk>, PatchError> {
    let mut hunks: Vec<Hunk> = Vec::new();
    // Lines still expected by the current hunk's header: (old, new).
    let mut remaining = (0u64, 0u64);
    let mut next = (0u64, 0u64);
    for (index, raw) in patch.split('\n').enumerate() {
        let number = index + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.starts_with("@@") {
            let (old_start, old_len, new_start, new_len) =
                parse_header(line).ok_or_else(|| PatchError::BadHeader {
                    line: number,
                    header: line.to_string(),
                })?;
            hunks.push(Hunk {
                old_start,
                old_len,
                new_start,
                new_len,
                lines: Vec::new(),
            });
            remaining = (old_len, new_len);
            next = (old_start, new_start);
            continue;
        }
        let Some(hunk) = hunks.last_mut() else {
            if line.is_empty() {
                continue;
            }
            return Err(PatchError::OutsideHunk {
                line: number,
                text: line.to_string(),
            });
        };
        let (kind, text) = match line.as_bytes().first() {
            Some(b'+') => (LineKind::Added, &line[1..]),
            Some(b'-') => (LineKind::Removed, &line[1..]),
            Some(b' ') => (LineKind::Context, &line[1..]),
            Some(b'\\') => continue,
            None if remaining.0 > 0 && remaining.1 > 0 => (LineKind::Context, ""),
            None => continue,
            Some(_) => {
                return Err(PatchError::BadLine {
                    line: number,
                    text: line.to_string(),
                });
            }
        };
        let (old_line, new_line) = match kind {
            LineKind::Added => (None, Some(next.1)),
            LineKind::Removed => (Some(next.0), None),
            LineKind::Context => (Some(next.0), Some(next.1)),
        };
        if old_line.is_some() {
            next.0 += 1;
            remaining.0 = remaining.0.saturating_sub(1);
        }
        if new_line.is_some() {
            next.1 += 1;
            remaining.1 = remaining.1.saturating_sub(1);
        }
        hunk.lines.push(DiffLine {
            kind,
            old_line,
            new_line,
            text: text.to_string(),
        });
    }
    Ok(hunks)
}

/// New-side line numbers GitHub accepts a review comment on (added and context lines).
/// An invalid patch gives an empty set.
pub fn right_lines(patch: &str) -> BTreeSet<u64> {
    parse_patch(patch)
        .unwrap_or_default()
        .iter()
        .flat_map(|h| h.lines.iter())
        .filter(|l| l.kind != LineKind::Removed)
        .filter_map(|l| l.new_line)
        .collect()
}

/// New-side line number and text of each added line. An invalid patch gives nothing.
pub fn added_lines(patch: &str) -> Vec<(u64, String)> {
    parse_patch(patch)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|h| h.lines.into_iter())
        .filter(|l| l.kind == LineKind::Added)
        .filter_map(|l| l.new_line.map(|n| (n, l.text)))
        .collect()
}

/// The patch with each added and context line prefixed by its new-side line number
/// (`  12 + let x = 1;`, removed lines get a blank number), so that a reader can cite lines.
/// An invalid patch is returned unchanged.
pub fn annotate(patch: &str) -> String {
    let Ok(hunks) = parse_patch(patch) else {
        return patch.to_string();
    };
    let widest = hunks
        .iter()
        .flat_map(|h| h.lines.iter())
        .filter_map(|l| l.new_line)
        .max()
        .unwrap_or(0);
    let width = widest.to_string().len();
    let mut out = String::with_capacity(patch.len() + patch.len() / 4);
    for hunk in &hunks {
        out.push_str(&format!(
            "@@ -{},{} +{},{} @@\n",
            hunk.old_start, hunk.old_len, hunk.new_start, hunk.new_len
        ));
        for line in &hunk.lines {
            let sign = match line.kind {
                LineKind::Added => '+',
                LineKind::Removed => '-',
                LineKind::Context => ' ',
            };
            let number = match (line.kind, line.new_line) {
                (LineKind::Removed, _) | (_, None) => String::new(),
                (_, Some(n)) => n.to_string(),
            };
            let row = format!("{number:>width$} {sign} {}", line.text);
            out.push_str(row.trim_end());
            out.push('\n');
        }
    }
    out
}

/// Builds a matcher where `*` and `?` do not cross `/` and `**` spans directories.
fn glob_matcher(glob: &str) -> Result<GlobMatcher, globset::Error> {
    Ok(GlobBuilder::new(glob)
        .literal_separator(true)
        .build()?
        .compile_matcher())
}

/// Turns a git pattern into a glob over repo-relative paths: no `/` (other than trailing)
/// matches the basename at any depth; otherwise anchored at the root. A trailing `/` names a
/// directory and matches everything below it.
fn git_pattern_to_glob(pattern: &str) -> String {
    let (pattern, directory) = match pattern.strip_suffix('/') {
        Some(p) => (p, true),
        None => (pattern, false),
    };
    let anchored = pattern.contains('/');
    let pattern = pattern.strip_prefix('/').unwrap_or(pattern);
    let mut glob = if anchored || pattern.starts_with("**") {
        pattern.to_string()
    } else {
        format!("**/{pattern}")
    };
    if directory {
        glob.push_str("/**");
    }
    glob
}

#[derive(Debug, Clone)]
struct AttributeLine {
    matcher: GlobMatcher,
    generated: Option<bool>,
    vendored: Option<bool>,
}

/// The `linguist-generated` and `linguist-vendored` attributes of a `.gitattributes` file.
#[derive(Debug, Clone, Default)]
pub struct GitAttributes {
    lines: Vec<AttributeLine>,
}

fn attribute_value(token: &str, name: &str) -> Option<bool> {
    if token == name {
        return Some(true);
    }
    if token.strip_prefix('-') == Some(name) {
        return Some(false);
    }
    let value = token.strip_prefix(name)?.strip_prefix('=')?;
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

impl GitAttributes {
    /// Parses `.gitattributes` text. Never fails: comments, lines without a linguist
    /// attribute, negated or quoted patterns and patterns that are not valid globs are ignored.
    pub fn parse(text: &str) -> GitAttributes {
        let mut lines = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut tokens = line.split_whitespace();
            let Some(pattern) = tokens.next() else {
                continue;
            };
            if pattern.starts_with('!') || pattern.starts_with('"') {
                continue;
            }
            let mut generated = None;
            let mut vendored = None;
            for token in tokens {
                if let Some(v) = attribute_value(token, "linguist-generated") {
                    generated = Some(v);
                }
                if let Some(v) = attribute_value(token, "linguist-vendored") {
                    vendored = Some(v);
                }
            }
            if generated.is_none() && vendored.is_none() {
                continue;
            }
            let Ok(matcher) = glob_matcher(&git_pattern_to_glob(pattern)) else {
                continue;
            };
            lines.push(AttributeLine {
                matcher,
                generated,
                vendored,
            });
        }
        GitAttributes { lines }
    }

    fn lookup(&self, path: &str, pick: impl Fn(&AttributeLine) -> Option<bool>) -> Option<bool> {
        self.lines
            .iter()
            .rev()
            .filter(|l| l.matcher.is_match(path))
            .find_map(pick)
    }

    /// `Some(true)`/`Some(false)` when a line sets/unsets `linguist-generated` for `path`
    /// (the last matching line wins), `None` when no line says.
    pub fn generated(&self, path: &str) -> Option<bool> {
        self.lookup(path, |l| l.generated)
    }

    /// Like [`GitAttributes::generated`] for `linguist-vendored`.
    pub fn vendored(&self, path: &str) -> Option<bool> {
        self.lookup(path, |l| l.vendored)
    }

    pub fn is_generated(&self, path: &str) -> bool {
        self.generated(path) == Some(true)
    }

    pub fn is_vendored(&self, path: &str) -> bool {
        self.vendored(path) == Some(true)
    }
}

/// Files never worth reviewing line by line: lock files, vendored trees, minified and
/// binary assets. A glob without `/` matches the file name at any depth.
pub const DEFAULT_SKIP_GLOBS: &[&str] = &[
    "Cargo.lock",
    "package-lock.json",
    "npm-shrinkwrap.json",
    "yarn.lock",
    "pnpm-lock.yaml",
    "poetry.lock",
    "Pipfile.lock",
    "Gemfile.lock",
    "go.sum",
    "composer.lock",
    "**/*.lock",
    "vendor/**",
    "**/vendor/**",
    "node_modules/**",
    "**/node_modules/**",
    "third_party/**",
    "**/*.min.js",
    "**/*.min.css",
    "**/*.map",
    "**/*.png",
    "**/*.jpg",
    "**/*.jpeg",
    "**/*.gif",
    "**/*.ico",
    "**/*.webp",
    "**/*.bmp",
    "**/*.pdf",
    "**/*.zip",
    "**/*.gz",
    "**/*.tgz",
    "**/*.jar",
    "**/*.exe",
    "**/*.dll",
    "**/*.so",
    "**/*.dylib",
    "**/*.wasm",
    "**/*.woff",
    "**/*.woff2",
    "**/*.ttf",
    "**/*.otf",
    "**/*.eot",
];

/// Files produced by tools; a glob without `/` matches the file name at any depth.
pub const DEFAULT_GENERATED_GLOBS: &[&str] = &[
    "**/*.pb.go",
    "**/*_pb2.py",
    "**/*_pb2_grpc.py",
    "**/*.pb.rs",
    "**/*.generated.*",
    "**/generated/**",
    "**/*.g.dart",
    "**/*.freezed.dart",
    "**/dist/**",
];

/// A glob from the configuration that does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid glob {glob:?}: {message}")]
pub struct GlobError {
    pub glob: String,
    pub message: String,
}

/// Whether a file is reviewed, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileClass {
    Review,
    Skip(String),
}

#[derive(Debug, Clone)]
struct NamedGlob {
    glob: String,
    matcher: GlobMatcher,
    /// No `/` in the glob: matched against the file name.
    basename: bool,
}

impl NamedGlob {
    fn new(glob: &str) -> Result<NamedGlob, GlobError> {
        let matcher = glob_matcher(glob).map_err(|e| GlobError {
            glob: glob.to_string(),
            message: e.kind().to_string(),
        })?;
        Ok(NamedGlob {
            glob: glob.to_string(),
            matcher,
            basename: !glob.contains('/'),
        })
    }

    fn is_match(&self, path: &str) -> bool {
        if self.basename {
            let name = path.rsplit('/').next().unwrap_or(path);
            self.matcher.is_match(name)
        } else {
            self.matcher.is_match(path)
        }
    }
}

fn compile(globs: &[String]) -> Result<Vec<NamedGlob>, GlobError> {
    globs.iter().map(|g| NamedGlob::new(g)).collect()
}

/// Decides which changed files are reviewed, from skip globs, generated globs and
/// `.gitattributes`.
#[derive(Debug, Clone)]
pub struct Classifier {
    skip: Vec<NamedGlob>,
    generated: Vec<NamedGlob>,
    attributes: GitAttributes,
}

impl Classifier {
    /// Globs: `*` does not cross `/`, `**` does, a glob without `/` matches the file name at
    /// any depth. Errors name the first glob that does not compile.
    pub fn new(
        skip_globs: &[String],
        generated_globs: &[String],
        attributes: GitAttributes,
    ) -> Result<Classifier, GlobError> {
        Ok(Classifier {
            skip: compile(skip_globs)?,
            generated: compile(generated_globs)?,
            attributes,
        })
    }

    /// The classifier with [`DEFAULT_SKIP_GLOBS`] and [`DEFAULT_GENERATED_GLOBS`].
    pub fn with_defaults(attributes: GitAttributes) -> Classifier {
        let build = |globs: &[&str]| {
            globs
                .iter()
                .filter_map(|g| NamedGlob::new(g).ok())
                .collect::<Vec<_>>()
        };
        Classifier {
            skip: build(DEFAULT_SKIP_GLOBS),
            generated: build(DEFAULT_GENERATED_GLOBS),
            attributes,
        }
    }

    /// Why `path` is generated, vendored or skipped by a glob, if it is. An explicit
    /// `-linguist-generated` in `.gitattributes` overrides the generated globs.
    fn excluded(&self, path: &str) -> Option<String> {
        let generated = self.attributes.generated(path);
        if generated == Some(true) {
            return Some("generated (.gitattributes linguist-generated)".to_string());
        }
        if generated.is_none()
            && let Some(g) = self.generated.iter().find(|g| g.is_match(path))
        {
            return Some(format!("generated (matches \"{}\")", g.glob));
        }
        if self.attributes.is_vendored(path) {
            return Some("vendored".to_string());
        }
        self.skip
            .iter()
            .find(|g| g.is_match(path))
            .map(|g| format!("matches skip glob \"{}\"", g.glob))
    }

    pub fn classify(&self, file: &ChangedFile) -> FileClass {
        if let Some(reason) = self.excluded(&file.path) {
            return FileClass::Skip(reason);
        }
        let no_patch = file.patch.as_deref().is_none_or(str::is_empty);
        if no_patch {
            if file.status == "renamed" && file.additions == 0 && file.deletions == 0 {
                return FileClass::Skip("renamed without changes".to_string());
            }
            return FileClass::Skip("binary or too large (no patch)".to_string());
        }
        if file.status == "removed" {
            return FileClass::Skip("removed".to_string());
        }
        FileClass::Review
    }

    /// Whether the file's additions and deletions count towards the size label: not for
    /// generated, vendored or skip-glob files (binary and removed files do count).
    pub fn is_counted(&self, file: &ChangedFile) -> bool {
        self.excluded(&file.path).is_none()
    }
}

/// How much of a pull request is sent to a reviewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub max_patch_bytes: usize,
    pub max_files: usize,
}

fn patch_bytes(file: &ChangedFile) -> usize {
    file.patch.as_deref().map_or(0, str::len)
}

/// Applies classification and the budget. Skipped files keep their reason; while the reviewed
/// files are over `max_patch_bytes` or `max_files`, the largest patch is moved to
/// `summarized`, so small files are reviewed whole. Both lists keep GitHub's order.
pub fn select(
    pull: PullInfo,
    files: Vec<ChangedFile>,
    classifier: &Classifier,
    budget: &Budget,
) -> ReviewInput {
    let mut skipped = Vec::new();
    let mut candidates = Vec::new();
    for file in files {
        match classifier.classify(&file) {
            FileClass::Review => candidates.push(file),
            FileClass::Skip(reason) => skipped.push(SkippedFile {
                path: file.path,
                reason,
            }),
        }
    }
    let mut total: usize = candidates.iter().map(patch_bytes).sum();
    let mut count = candidates.len();
    // Largest first; among equal sizes the earliest file goes first.
    let mut by_size: Vec<usize> = (0..candidates.len()).collect();
    by_size.sort_by(|&a, &b| patch_bytes(&candidates[b]).cmp(&patch_bytes(&candidates[a])));
    let mut out = vec![false; candidates.len()];
    for index in by_size {
        if total <= budget.max_patch_bytes && count <= budget.max_files {
            break;
        }
        out[index] = true;
        total -= patch_bytes(&candidates[index]);
        count -= 1;
    }
    let mut reviewed = Vec::new();
    let mut summarized = Vec::new();
    for (file, out) in candidates.into_iter().zip(out) {
        if out {
            summarized.push(file);
        } else {
            reviewed.push(file);
        }
    }
    ReviewInput {
        pull,
        files: reviewed,
        summarized,
        skipped,
    }
}

/// Findings split by where they can be posted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Anchored {
    /// On a line of the diff GitHub accepts a comment on.
    pub inline: Vec<Finding>,
    /// Everything else, for the review body.
    pub summary: Vec<Finding>,
}

/// Places each finding inline when its path is a reviewed file and its line is on that file's
/// right side of the diff; otherwise in the summary. Identical (path, line, message) findings
/// are kept once.
pub fn anchor(findings: Vec<Finding>, reviewed: &[ChangedFile]) -> Anchored {
    let lines: HashMap<&str, BTreeSet<u64>> = reviewed
        .iter()
        .map(|f| {
            (
                f.path.as_str(),
                right_lines(f.patch.as_deref().unwrap_or("")),
            )
        })
        .collect();
    let mut seen = HashSet::new();
    let mut anchored = Anchored::default();
    for finding in findings {
        let key = (finding.path.clone(), finding.line, finding.message.clone());
        if !seen.insert(key) {
            continue;
        }
        let on_diff = match (&finding.path, finding.line) {
            (Some(path), Some(line)) => lines
                .get(path.as_str())
                .is_some_and(|set| set.contains(&line)),
            _ => false,
        };
        if on_diff {
            anchored.inline.push(finding);
        } else {
            anchored.summary.push(finding);
        }
    }
    anchored
}

/// A file's name and size, for files the reviewer did not see whole.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FileStat {
    pub path: String,
    pub additions: u64,
    pub deletions: u64,
}

/// What was reviewed and what was not.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Coverage {
    pub files_reviewed: usize,
    pub hunks_reviewed: usize,
    pub summarized: Vec<FileStat>,
    pub skipped: Vec<SkippedFile>,
}

/// At most this many files are named per list in [`Coverage::describe`].
const DESCRIBE_LIMIT: usize = 10;

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {many}")
    }
}

fn name_list<T>(items: &[T], show: impl Fn(&T) -> String) -> String {
    let mut parts: Vec<String> = items.iter().take(DESCRIBE_LIMIT).map(show).collect();
    if items.len() > DESCRIBE_LIMIT {
        parts.push(format!("and {} more", items.len() - DESCRIBE_LIMIT));
    }
    parts.join(", ")
}

impl Coverage {
    /// A short markdown paragraph: reviewed files and hunks, summarized and skipped files.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "Reviewed {} ({}).",
            plural(self.files_reviewed, "file", "files"),
            plural(self.hunks_reviewed, "hunk", "hunks")
        );
        if !self.summarized.is_empty() {
            out.push_str(" Summarized (over the budget): ");
            out.push_str(&name_list(&self.summarized, |f| {
                format!("`{}` (+{} \u{2212}{})", f.path, f.additions, f.deletions)
            }));
            out.push('.');
        }
        if !self.skipped.is_empty() {
            out.push_str(" Skipped: ");
            out.push_str(&name_list(&self.skipped, |f| {
                format!("`{}` ({})", f.path, f.reason)
            }));
            out.push('.');
        }
        out
    }
}

/// Counts what a [`ReviewInput`] covers.
pub fn coverage(input: &ReviewInput) -> Coverage {
    Coverage {
        files_reviewed: input.files.len(),
        hunks_reviewed: input
            .files
            .iter()
            .map(|f| {
                parse_patch(f.patch.as_deref().unwrap_or(""))
                    .map(|h| h.len())
                    .unwrap_or(0)
            })
            .sum(),
        summarized: input
            .summarized
            .iter()
            .map(|f| FileStat {
                path: f.path.clone(),
                additions: f.additions,
                deletions: f.deletions,
            })
            .collect(),
        skipped: input.skipped.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::review::Severity;
    use proptest::prelude::*;

    const PATCH: &str = "@@ -10,4 +10,5 @@ fn main() {\n let a = 1;\n-let b = 2;\n+let b = 3;\n+let c = 4;\n \n let d = 5;\n\\ No newline at end of file";

    fn file(path: &str, patch: Option<&str>) -> ChangedFile {
        ChangedFile {
            path: path.to_string(),
            status: "modified".to_string(),
            additions: 1,
            deletions: 0,
            patch: patch.map(str::to_string),
            previous_filename: None,
        }
    }

    fn strings(globs: &[&str]) -> Vec<String> {
        globs.iter().map(|g| g.to_string()).collect()
    }

    fn finding(path: Option<&str>, line: Option<u64>, message: &str) -> Finding {
        Finding {
            path: path.map(str::to_string),
            line,
            severity: Severity::Warning,
            message: message.to_string(),
            source: "test".to_string(),
        }
    }

    #[test]
    fn parses_a_hunk_with_line_numbers() {
        let hunks = parse_patch(PATCH).unwrap();
        assert_eq!(hunks.len(), 1);
        let h = &hunks[0];
        assert_eq!(
            (h.old_start, h.old_len, h.new_start, h.new_len),
            (10, 4, 10, 5)
        );
        let got: Vec<_> = h
            .lines
            .iter()
            .map(|l| (l.kind, l.old_line, l.new_line, l.text.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (LineKind::Context, Some(10), Some(10), "let a = 1;"),
                (LineKind::Removed, Some(11), None, "let b = 2;"),
                (LineKind::Added, None, Some(11), "let b = 3;"),
                (LineKind::Added, None, Some(12), "let c = 4;"),
                (LineKind::Context, Some(12), Some(13), ""),
                (LineKind::Context, Some(13), Some(14), "let d = 5;"),
            ]
        );
    }

    #[test]
    fn omitted_lengths_mean_one_and_new_files_start_at_zero() {
        let hunks = parse_patch("@@ -1 +1 @@\n-a\n+b").unwrap();
        assert_eq!((hunks[0].old_len, hunks[0].new_len), (1, 1));
        let hunks = parse_patch("@@ -0,0 +1,3 @@\n+a\n+b\n+c\n").unwrap();
        assert_eq!((hunks[0].old_start, hunks[0].old_len), (0, 0));
        assert_eq!(hunks[0].lines.len(), 3);
        assert_eq!(
            added_lines("@@ -0,0 +1,3 @@\n+a\n+b\n+c\n")[2],
            (3, "c".to_string())
        );
    }

    #[test]
    fn crlf_and_multiple_hunks() {
        let patch = "@@ -1,2 +1,2 @@\r\n a\r\n-b\r\n+B\r\n@@ -20 +20,2 @@ impl X\r\n x\r\n+y\r\n";
        let hunks = parse_patch(patch).unwrap();
        assert_eq!(hunks.len(), 2);
        assert_eq!(hunks[0].lines[2].text, "B");
        assert_eq!(right_lines(patch), BTreeSet::from([1, 2, 20, 21]));
        assert_eq!(
            added_lines(patch),
            vec![(2, "B".to_string()), (21, "y".to_string())]
        );
    }

    #[test]
    fn malformed_header_is_an_error() {
        assert_eq!(
            parse_patch("@@ -x +1 @@\n+a"),
            Err(PatchError::BadHeader {
                line: 1,
                header: "@@ -x +1 @@".to_string()
            })
        );
        assert!(matches!(
            parse_patch("@@ -1 @@\n"),
            Err(PatchError::BadHeader { .. })
        ));
        assert!(matches!(
            parse_patch("+a\n"),
            Err(PatchError::OutsideHunk { line: 1, .. })
        ));
        assert!(matches!(
            parse_patch("@@ -1 +1 @@\n*a"),
            Err(PatchError::BadLine { line: 2, .. })
        ));
        assert!(right_lines("@@ nonsense").is_empty());
        assert!(added_lines("garbage").is_empty());
        assert_eq!(annotate("garbage"), "garbage");
    }

    #[test]
    fn right_lines_are_added_and_context() {
        assert_eq!(right_lines(PATCH), BTreeSet::from([10, 11, 12, 13, 14]));
        assert_eq!(
            added_lines(PATCH),
            vec![
                (11, "let b = 3;".to_string()),
                (12, "let c = 4;".to_string())
            ]
        );
    }

    #[test]
    fn annotate_numbers_new_side_lines() {
        let patch = "@@ -8,3 +8,3 @@\n a\n-b\n+c\n d";
        assert_eq!(
            annotate(patch),
            "@@ -8,3 +8,3 @@\n 8   a\n   - b\n 9 + c\n10   d\n"
        );
    }

    #[test]
    fn gitattributes_semantics() {
        let attrs = GitAttributes::parse(
            "# comment\n\
             *.pb.go linguist-generated\n\
             /api/gen.rs linguist-generated=true\n\
             docs/**/*.html linguist-generated\n\
             docs/keep.html -linguist-generated\n\
             third/ linguist-vendored\n\
             lib/*.js linguist-vendored=true\n\
             lib/mine.js linguist-vendored=false\n\
             bad[ linguist-generated\n\
             *.txt text\n",
        );
        assert!(attrs.is_generated("x.pb.go"));
        assert!(attrs.is_generated("deep/down/x.pb.go"));
        assert!(attrs.is_generated("api/gen.rs"));
        assert!(!attrs.is_generated("sub/api/gen.rs"));
        assert!(attrs.is_generated("docs/a/b/c.html"));
        assert!(attrs.is_generated("docs/c.html"));
        assert!(!attrs.is_generated("docs/keep.html"));
        assert_eq!(attrs.generated("docs/keep.html"), Some(false));
        assert_eq!(attrs.generated("main.rs"), None);
        assert!(attrs.is_vendored("third/x/y.c"));
        assert!(attrs.is_vendored("a/third/y.c"));
        assert!(attrs.is_vendored("lib/jquery.js"));
        assert!(!attrs.is_vendored("lib/sub/jquery.js"));
        assert!(!attrs.is_vendored("lib/mine.js"));
        assert!(!attrs.is_generated("notes.txt"));
    }

    fn defaults(attrs: &str) -> Classifier {
        Classifier::new(
            &strings(DEFAULT_SKIP_GLOBS),
            &strings(DEFAULT_GENERATED_GLOBS),
            GitAttributes::parse(attrs),
        )
        .unwrap()
    }

    fn reason(c: &Classifier, f: &ChangedFile) -> String {
        match c.classify(f) {
            FileClass::Review => "review".to_string(),
            FileClass::Skip(r) => r,
        }
    }

    #[test]
    fn classification_reasons_and_precedence() {
        let c = defaults(
            "src/gen.rs linguist-generated\nvendor/** linguist-vendored\nweb/dist/** -linguist-generated\n",
        );
        let p = Some("@@ -1 +1 @@\n+a");
        assert_eq!(reason(&c, &file("src/main.rs", p)), "review");
        assert_eq!(
            reason(&c, &file("src/gen.rs", p)),
            "generated (.gitattributes linguist-generated)"
        );
        assert_eq!(
            reason(&c, &file("api/x.pb.go", p)),
            "generated (matches \"**/*.pb.go\")"
        );
        assert_eq!(reason(&c, &file("web/dist/app.js", p)), "review");
        assert_eq!(reason(&c, &file("vendor/lib.c", p)), "vendored");
        assert_eq!(
            reason(&c, &file("Cargo.lock", p)),
            "matches skip glob \"Cargo.lock\""
        );
        assert_eq!(
            reason(&c, &file("crates/x/Cargo.lock", p)),
            "matches skip glob \"Cargo.lock\""
        );
        assert_eq!(
            reason(&c, &file("a/node_modules/x.js", p)),
            "matches skip glob \"**/node_modules/**\""
        );
        assert_eq!(
            reason(&c, &file("logo.rs", None)),
            "binary or too large (no patch)"
        );
        let mut removed = file("old.rs", p);
        removed.status = "removed".to_string();
        assert_eq!(reason(&c, &removed), "removed");
        removed.patch = None;
        assert_eq!(reason(&c, &removed), "binary or too large (no patch)");
        let mut renamed = file("new.rs", None);
        renamed.status = "renamed".to_string();
        renamed.additions = 0;
        assert_eq!(reason(&c, &renamed), "renamed without changes");
    }

    #[test]
    fn counted_excludes_generated_vendored_and_skipped_only() {
        let c = defaults("gen.rs linguist-generated\n");
        assert!(c.is_counted(&file("src/main.rs", Some("@@ -1 +1 @@\n+a"))));
        assert!(c.is_counted(&file("image.bin", None)));
        let mut removed = file("old.rs", None);
        removed.status = "removed".to_string();
        assert!(c.is_counted(&removed));
        assert!(!c.is_counted(&file("gen.rs", None)));
        assert!(!c.is_counted(&file("yarn.lock", None)));
        assert!(!c.is_counted(&file("a/generated/x.rs", None)));
    }

    #[test]
    fn bad_glob_is_named() {
        let err = Classifier::new(
            &strings(&["ok/**", "src/[a"]),
            &[],
            GitAttributes::default(),
        )
        .unwrap_err();
        assert_eq!(err.glob, "src/[a");
        assert!(err.to_string().contains("\"src/[a\""), "{err}");
        let err = Classifier::new(&[], &strings(&["{a"]), GitAttributes::default()).unwrap_err();
        assert_eq!(err.glob, "{a");
    }

    #[test]
    fn with_defaults_matches_new_with_default_globs() {
        let c = Classifier::with_defaults(GitAttributes::default());
        assert_eq!(c.skip.len(), DEFAULT_SKIP_GLOBS.len());
        assert_eq!(c.generated.len(), DEFAULT_GENERATED_GLOBS.len());
        assert!(!c.is_counted(&file("go.sum", None)));
    }

    fn sized(path: &str, bytes: usize) -> ChangedFile {
        let patch = format!("@@ -1 +1 @@\n+{}", "x".repeat(bytes.saturating_sub(13)));
        assert_eq!(patch.len(), bytes.max(13));
        file(path, Some(&patch))
    }

    fn paths(files: &[ChangedFile]) -> Vec<&str> {
        files.iter().map(|f| f.path.as_str()).collect()
    }

    #[test]
    fn select_moves_largest_files_until_within_budget() {
        let files = vec![
            sized("a.rs", 100),
            sized("big.rs", 1000),
            sized("Cargo.lock", 5000),
            sized("b.rs", 300),
            sized("c.rs", 200),
        ];
        let budget = Budget {
            max_patch_bytes: 500,
            max_files: 10,
        };
        let input = select(PullInfo::default(), files, &defaults(""), &budget);
        assert_eq!(paths(&input.files), vec!["a.rs", "c.rs"]);
        assert_eq!(paths(&input.summarized), vec!["big.rs", "b.rs"]);
        assert_eq!(
            input.skipped,
            vec![SkippedFile {
                path: "Cargo.lock".to_string(),
                reason: "matches skip glob \"Cargo.lock\"".to_string()
            }]
        );
    }

    #[test]
    fn select_respects_max_files_and_keeps_order() {
        let files = vec![
            sized("a", 50),
            sized("b", 20),
            sized("c", 40),
            sized("d", 30),
        ];
        let budget = Budget {
            max_patch_bytes: 10_000,
            max_files: 2,
        };
        let input = select(PullInfo::default(), files, &defaults(""), &budget);
        assert_eq!(paths(&input.files), vec!["b", "d"]);
        assert_eq!(paths(&input.summarized), vec!["a", "c"]);
        let within = select(
            PullInfo::default(),
            vec![sized("a", 50), sized("b", 20)],
            &defaults(""),
            &budget,
        );
        assert_eq!(paths(&within.files), vec!["a", "b"]);
        assert!(within.summarized.is_empty());
    }

    #[test]
    fn anchor_splits_inline_and_summary_and_deduplicates() {
        let reviewed = vec![file("a.rs", Some(PATCH))];
        let findings = vec![
            finding(Some("a.rs"), Some(11), "added line"),
            finding(Some("a.rs"), Some(11), "added line"),
            finding(Some("a.rs"), Some(14), "context line"),
            finding(Some("a.rs"), Some(40), "outside diff"),
            finding(Some("a.rs"), None, "no line"),
            finding(Some("big.rs"), Some(1), "summarized file"),
            finding(None, None, "whole pull"),
            finding(None, None, "whole pull"),
        ];
        let anchored = anchor(findings, &reviewed);
        let msgs = |v: &[Finding]| v.iter().map(|f| f.message.clone()).collect::<Vec<_>>();
        assert_eq!(msgs(&anchored.inline), vec!["added line", "context line"]);
        assert_eq!(
            msgs(&anchored.summary),
            vec!["outside diff", "no line", "summarized file", "whole pull"]
        );
    }

    #[test]
    fn coverage_counts_and_describes() {
        let mut big = file("big.rs", Some("@@ -1 +1 @@\n+a"));
        big.additions = 1200;
        big.deletions = 3;
        let input = ReviewInput {
            pull: PullInfo::default(),
            files: vec![
                file("a.rs", Some("@@ -1,2 +1,2 @@\n-a\n+b\n@@ -9 +9 @@\n-c\n+d")),
                file("b.rs", Some(PATCH)),
            ],
            summarized: vec![big],
            skipped: vec![SkippedFile {
                path: "Cargo.lock".to_string(),
                reason: "matches skip glob \"Cargo.lock\"".to_string(),
            }],
        };
        let cov = coverage(&input);
        assert_eq!(cov.files_reviewed, 2);
        assert_eq!(cov.hunks_reviewed, 3);
        assert_eq!(
            cov.describe(),
            "Reviewed 2 files (3 hunks). Summarized (over the budget): `big.rs` (+1200 \u{2212}3). \
             Skipped: `Cargo.lock` (matches skip glob \"Cargo.lock\")."
        );
        let one = ReviewInput {
            files: vec![file("a.rs", Some("@@ -1 +1 @@\n+a"))],
            ..ReviewInput::default()
        };
        assert_eq!(coverage(&one).describe(), "Reviewed 1 file (1 hunk).");
    }

    #[test]
    fn describe_limits_long_lists() {
        let cov = Coverage {
            files_reviewed: 0,
            hunks_reviewed: 0,
            summarized: vec![],
            skipped: (0..12)
                .map(|i| SkippedFile {
                    path: format!("f{i}"),
                    reason: "vendored".to_string(),
                })
                .collect(),
        };
        let text = cov.describe();
        assert!(text.contains("`f9` (vendored), and 2 more."), "{text}");
        assert!(!text.contains("f10"));
    }

    proptest! {
        #[test]
        fn parse_patch_never_panics(s in "(@@ -[0-9]{1,3}(,[0-9]{1,2})? \\+[0-9]{1,3}(,[0-9]{1,2})? @@\n)?([-+ \\\\]?[a-z ]{0,5}\r?\n){0,8}") {
            let _ = parse_patch(&s);
            let _ = annotate(&s);
            let _ = right_lines(&s);
        }

        #[test]
        fn added_lines_match_generated_hunk(start in 1u64..1000, lines in proptest::collection::vec(("[-+ ]", "[a-z]{0,6}"), 1..20)) {
            let old_len = lines.iter().filter(|(k, _)| k != "+").count();
            let new_len = lines.iter().filter(|(k, _)| k != "-").count();
            let mut patch = format!("@@ -{start},{old_len} +{start},{new_len} @@\n");
            for (k, t) in &lines {
                patch.push_str(&format!("{k}{t}\n"));
            }
            let right = right_lines(&patch);
            prop_assert_eq!(right.len(), new_len);
            if new_len > 0 {
                prop_assert_eq!(right.first().copied(), Some(start));
                prop_assert_eq!(right.last().copied(), Some(start + new_len as u64 - 1));
            }
            let added: Vec<String> = lines.iter().filter(|(k, _)| k == "+").map(|(_, t)| t.clone()).collect();
            let got: Vec<String> = added_lines(&patch).into_iter().map(|(_, t)| t).collect();
            prop_assert_eq!(got, added);
        }
    }
}

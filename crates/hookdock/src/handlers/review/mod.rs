//! Pull request review: what a reviewer is given ([`ReviewInput`]), what it finds
//! ([`Finding`]), and the two reviewers: built-in [`rules`] (no network, the default) and an
//! OpenAI-compatible [`llm`]. [`diff`] parses GitHub's per-file patches, applies the budget
//! (skipped globs, generated files, size) and anchors findings to lines GitHub accepts.

pub mod diff;
pub mod llm;
pub mod rules;
pub mod run;

use serde::{Deserialize, Serialize};

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// One thing a reviewer found. `path`/`line` place it on the new side of the diff; a finding
/// about the pull request as a whole has neither.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Line number in the file on the head commit (GitHub's `line` with `side: RIGHT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    pub severity: Severity,
    pub message: String,
    /// What produced it: a rule's name (`secret`, `debug-print`, …) or `llm`.
    pub source: String,
}

/// The pull request being reviewed, as the reviewer sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PullInfo {
    /// `owner/name`.
    pub repository: String,
    pub number: u64,
    pub title: String,
    pub body: String,
    pub author: String,
    pub base_ref: String,
    pub head_sha: String,
}

/// One changed file from the files API (`GET /repos/{o}/{r}/pulls/{n}/files`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedFile {
    #[serde(rename = "filename")]
    pub path: String,
    /// `added`, `removed`, `modified`, `renamed`, `copied`, `changed`, `unchanged`.
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub additions: u64,
    #[serde(default)]
    pub deletions: u64,
    /// The unified-diff hunks; GitHub leaves it out for binary files and very large diffs.
    #[serde(default)]
    pub patch: Option<String>,
    #[serde(default)]
    pub previous_filename: Option<String>,
}

/// What the reviewers get after the budget was applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReviewInput {
    pub pull: PullInfo,
    /// Files sent whole (their patches), in the order GitHub listed them.
    pub files: Vec<ChangedFile>,
    /// Files over the budget: only their name and size are given.
    pub summarized: Vec<ChangedFile>,
    /// Files left out, with the reason (`lock file`, `generated`, `binary`, `vendored`, …).
    pub skipped: Vec<SkippedFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedFile {
    pub path: String,
    pub reason: String,
}

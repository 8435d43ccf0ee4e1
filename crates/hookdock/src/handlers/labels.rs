//! Labels: a size label on pull requests from the lines changed (generated files excluded), and
//! keyword labels on issues.
//!
//! This module owns the pure label logic: size tiers ([`SizeTier`], [`size_label`],
//! [`check_tiers`], [`counted_lines`]) and keyword rules ([`KeywordRule`], [`issue_labels`]).

use serde::{Deserialize, Serialize};

use super::commands::parse::Fences;
use super::review::ChangedFile;
use super::review::diff::Classifier;

/// A pull request changing fewer than `below` lines gets `name` (the first such tier).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SizeTier {
    pub name: String,
    pub below: u64,
}

/// The label for pull requests larger than every tier.
pub const DEFAULT_LARGEST: &str = "size/XL";

/// `size/XS` < 10, `size/S` < 50, `size/M` < 200, `size/L` < 500 (then [`DEFAULT_LARGEST`]).
pub fn default_size_tiers() -> Vec<SizeTier> {
    [
        ("size/XS", 10),
        ("size/S", 50),
        ("size/M", 200),
        ("size/L", 500),
    ]
    .into_iter()
    .map(|(name, below)| SizeTier {
        name: name.to_string(),
        below,
    })
    .collect()
}

/// The first tier whose `below` is greater than `lines`, else `largest`.
pub fn size_label<'a>(lines: u64, tiers: &'a [SizeTier], largest: &'a str) -> &'a str {
    tiers
        .iter()
        .find(|t| t.below > lines)
        .map_or(largest, |t| t.name.as_str())
}

/// Tiers must have non-empty, unique names and strictly increasing `below`.
pub fn check_tiers(tiers: &[SizeTier]) -> Result<(), String> {
    for (i, tier) in tiers.iter().enumerate() {
        if tier.name.trim().is_empty() {
            return Err(format!("size tier {} has an empty name", i + 1));
        }
        if tiers[..i].iter().any(|t| t.name == tier.name) {
            return Err(format!("size tier name {:?} is used twice", tier.name));
        }
        if let Some(previous) = i.checked_sub(1).map(|p| &tiers[p])
            && tier.below <= previous.below
        {
            return Err(format!(
                "size tier {:?} has below = {}, which is not greater than {} of the tier \
                 before it ({:?})",
                tier.name, tier.below, previous.below, previous.name
            ));
        }
    }
    Ok(())
}

/// Additions plus deletions of the files that count towards the size (not generated,
/// vendored or skipped by a glob).
pub fn counted_lines(files: &[ChangedFile], classifier: &Classifier) -> u64 {
    files
        .iter()
        .filter(|f| classifier.is_counted(f))
        .fold(0u64, |sum, f| {
            sum.saturating_add(f.additions).saturating_add(f.deletions)
        })
}

/// An issue gets `label` when any of `keywords` appears in its title or body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeywordRule {
    pub label: String,
    pub keywords: Vec<String>,
}

/// `bug`, `enhancement`, `question` and `documentation` from common words.
pub fn default_issue_rules() -> Vec<KeywordRule> {
    let rule = |label: &str, keywords: &[&str]| KeywordRule {
        label: label.to_string(),
        keywords: keywords.iter().map(|k| k.to_string()).collect(),
    };
    vec![
        rule(
            "bug",
            &[
                "bug",
                "crash",
                "crashes",
                "error",
                "broken",
                "exception",
                "panic",
                "regression",
                "fails",
            ],
        ),
        rule(
            "enhancement",
            &[
                "feature",
                "enhancement",
                "improve",
                "proposal",
                "feature request",
                "support for",
            ],
        ),
        rule(
            "question",
            &["question", "how do i", "how to", "help", "is it possible"],
        ),
        rule(
            "documentation",
            &["docs", "documentation", "readme", "typo"],
        ),
    ]
}

/// A word (a run of letters and digits), lowercased, with its byte span.
struct Word {
    text: String,
    start: usize,
    end: usize,
}

fn words(text: &str) -> Vec<Word> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices().chain([(text.len(), ' ')]) {
        match (c.is_alphanumeric(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push(Word {
                    text: text[s..i].to_lowercase(),
                    start: s,
                    end: i,
                });
                start = None;
            }
            _ => {}
        }
    }
    out
}

/// Whether the words of `keyword` occur in `text` as consecutive words separated only by
/// whitespace.
fn contains_phrase(text: &str, haystack: &[Word], keyword: &[String]) -> bool {
    if keyword.is_empty() || keyword.len() > haystack.len() {
        return false;
    }
    haystack.windows(keyword.len()).any(|window| {
        window.iter().zip(keyword).all(|(w, k)| w.text == *k)
            && window
                .windows(2)
                .all(|pair| text[pair[0].end..pair[1].start].trim().is_empty())
    })
}

/// `text` without the lines of fenced code blocks.
fn without_code(text: &str) -> String {
    let mut fences = Fences::default();
    text.lines()
        .filter(|line| !fences.in_code(line))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Labels whose keywords match whole words (a multi-word keyword as a phrase with any
/// whitespace between its words), case-insensitively, in the title or the body outside
/// fenced code. In rule order, without duplicates.
pub fn issue_labels(title: &str, body: &str, rules: &[KeywordRule]) -> Vec<String> {
    let body = without_code(body);
    let title_words = words(title);
    let body_words = words(&body);
    let mut labels: Vec<String> = Vec::new();
    for rule in rules {
        if labels.contains(&rule.label) {
            continue;
        }
        let matched = rule.keywords.iter().any(|keyword| {
            let keyword: Vec<String> = words(keyword).into_iter().map(|w| w.text).collect();
            contains_phrase(title, &title_words, &keyword)
                || contains_phrase(&body, &body_words, &keyword)
        });
        if matched {
            labels.push(rule.label.clone());
        }
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::review::diff::{
        DEFAULT_GENERATED_GLOBS, DEFAULT_SKIP_GLOBS, GitAttributes,
    };

    fn tier(name: &str, below: u64) -> SizeTier {
        SizeTier {
            name: name.to_string(),
            below,
        }
    }

    #[test]
    fn size_labels_at_the_boundaries() {
        let tiers = default_size_tiers();
        let label = |n| size_label(n, &tiers, DEFAULT_LARGEST);
        assert_eq!(label(0), "size/XS");
        assert_eq!(label(9), "size/XS");
        assert_eq!(label(10), "size/S");
        assert_eq!(label(49), "size/S");
        assert_eq!(label(50), "size/M");
        assert_eq!(label(199), "size/M");
        assert_eq!(label(200), "size/L");
        assert_eq!(label(499), "size/L");
        assert_eq!(label(500), "size/XL");
        assert_eq!(label(u64::MAX), "size/XL");
        assert_eq!(size_label(3, &[], "big"), "big");
    }

    #[test]
    fn tier_validation() {
        assert_eq!(check_tiers(&default_size_tiers()), Ok(()));
        assert_eq!(check_tiers(&[]), Ok(()));
        let err = check_tiers(&[tier("a", 10), tier("b", 10)]).unwrap_err();
        assert!(
            err.contains("\"b\"") && err.contains("not greater"),
            "{err}"
        );
        assert!(check_tiers(&[tier("a", 10), tier("b", 5)]).is_err());
        let err = check_tiers(&[tier("a", 1), tier(" ", 5)]).unwrap_err();
        assert!(err.contains("tier 2 has an empty name"), "{err}");
        let err = check_tiers(&[tier("a", 1), tier("a", 5)]).unwrap_err();
        assert!(err.contains("used twice"), "{err}");
    }

    fn changed(path: &str, additions: u64, deletions: u64, patch: bool) -> ChangedFile {
        ChangedFile {
            path: path.to_string(),
            status: "modified".to_string(),
            additions,
            deletions,
            patch: patch.then(|| "@@ -1 +1 @@\n+a".to_string()),
            previous_filename: None,
        }
    }

    #[test]
    fn counted_lines_skip_generated_and_lock_files() {
        let strings = |g: &[&str]| g.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let classifier = Classifier::new(
            &strings(DEFAULT_SKIP_GLOBS),
            &strings(DEFAULT_GENERATED_GLOBS),
            GitAttributes::parse("schema.sql linguist-generated\n"),
        )
        .unwrap();
        let files = vec![
            changed("src/main.rs", 30, 5, true),
            changed("db/schema.sql", 55_000, 0, true),
            changed("api/x.pb.go", 9_000, 10, true),
            changed("Cargo.lock", 400, 300, true),
            changed("logo.png.bin", 0, 0, false),
            changed("data.bin", 7, 3, false),
        ];
        assert_eq!(counted_lines(&files, &classifier), 45);
        let tiers = default_size_tiers();
        assert_eq!(
            size_label(counted_lines(&files, &classifier), &tiers, DEFAULT_LARGEST),
            "size/S"
        );
    }

    fn labels(title: &str, body: &str) -> Vec<String> {
        issue_labels(title, body, &default_issue_rules())
    }

    #[test]
    fn keywords_match_whole_words() {
        assert_eq!(labels("Bug: login fails", ""), vec!["bug"]);
        assert!(labels("debugging the parser", "").is_empty());
        assert!(labels("Errors in log", "").is_empty());
        assert_eq!(labels("", "It CRASHES on start"), vec!["bug"]);
        assert_eq!(labels("Typo in README", ""), vec!["documentation"]);
    }

    #[test]
    fn phrases_match_with_any_whitespace() {
        assert_eq!(
            labels("Feature Request: dark mode", ""),
            vec!["enhancement"]
        );
        assert_eq!(labels("", "Is it\npossible  to do X?"), vec!["question"]);
        assert_eq!(labels("", "how\tdo I configure it"), vec!["question"]);
        assert!(labels("", "is it, possible").is_empty());
        assert!(labels("", "how doing i").is_empty());
    }

    #[test]
    fn code_blocks_are_ignored_and_order_is_rule_order() {
        let body = "Steps:\n```\nthread main panicked: error\n```\n";
        assert!(labels("Dark theme", body).is_empty());
        let body = "~~~\nbug\n~~~\nThe docs say it should crash";
        assert_eq!(
            labels("Proposal", body),
            vec!["bug", "enhancement", "documentation"]
        );
        let rules = vec![
            KeywordRule {
                label: "x".to_string(),
                keywords: vec!["alpha".to_string()],
            },
            KeywordRule {
                label: "x".to_string(),
                keywords: vec!["beta".to_string()],
            },
            KeywordRule {
                label: "empty".to_string(),
                keywords: vec!["".to_string(), "  ".to_string()],
            },
        ];
        assert_eq!(issue_labels("alpha beta", "", &rules), vec!["x"]);
    }

    #[test]
    fn keyword_rules_deserialize_strictly() {
        let rule: KeywordRule =
            serde_json::from_str(r#"{"label": "perf", "keywords": ["slow"]}"#).unwrap();
        assert_eq!(rule.keywords, vec!["slow"]);
        assert!(
            serde_json::from_str::<KeywordRule>(r#"{"label": "a", "keywords": [], "x": 1}"#)
                .is_err()
        );
    }
}

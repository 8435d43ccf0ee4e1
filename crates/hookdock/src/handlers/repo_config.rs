//! Per-repository automation settings: `.github/hookdock.yml` in the repository, merged over the
//! server's `[automations]` defaults from `hookdock.toml`, merged over the built-in defaults.
//!
//! Merging is by key: a key the file sets replaces the server's value (lists are replaced, not
//! appended); a key it leaves out keeps the server's. A file that does not parse or does not
//! validate is a [`RepoConfigError`] naming the file, line and key, never a crash.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::labels::{KeywordRule, SizeTier, default_issue_rules, default_size_tiers};
use super::review::diff::{DEFAULT_GENERATED_GLOBS, DEFAULT_SKIP_GLOBS};
use super::review::rules::RuleSet;

/// Where hookdock reads a repository's settings.
pub const CONFIG_PATH: &str = ".github/hookdock.yml";

/// The automation settings that apply to one repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RepoConfig {
    /// Record what the automations would write to GitHub instead of writing it.
    pub dry_run: bool,
    /// Review and label pull requests opened by bots (dependency updates and the like).
    pub bots: bool,
    pub review: ReviewConfig,
    pub labels: LabelsConfig,
    pub commands: CommandsConfig,
    pub simulate: SimulateConfig,
}

/// Which reviewer writes the review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReviewerKind {
    /// The built-in rules: no network, the default.
    Rules,
    /// The OpenAI-compatible model configured on the server (`HOOKDOCK_LLM_*`), with the rules'
    /// findings added.
    Llm,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReviewConfig {
    pub enabled: bool,
    pub reviewer: ReviewerKind,
    /// Review draft pull requests too.
    pub drafts: bool,
    /// Files left out of the review and of size labels (globs).
    pub skip: Vec<String>,
    /// Generated files (globs), besides `linguist-generated` in `.gitattributes`.
    pub generated: Vec<String>,
    /// Patch bytes sent whole; beyond it the largest files are only summarized.
    pub max_patch_bytes: usize,
    /// Files reviewed whole; beyond it the largest files are only summarized.
    pub max_files: usize,
    /// Inline comments per review; further findings go into the summary.
    pub max_comments: usize,
    pub rules: RuleSet,
}

impl Default for ReviewConfig {
    fn default() -> Self {
        ReviewConfig {
            enabled: true,
            reviewer: ReviewerKind::Rules,
            drafts: false,
            skip: DEFAULT_SKIP_GLOBS.iter().map(|s| s.to_string()).collect(),
            generated: DEFAULT_GENERATED_GLOBS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            max_patch_bytes: 60_000,
            max_files: 50,
            max_comments: 20,
            rules: RuleSet::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct LabelsConfig {
    pub size: SizeLabelsConfig,
    pub issues: IssueLabelsConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SizeLabelsConfig {
    pub enabled: bool,
    /// Ascending: the first tier whose `below` exceeds the changed lines names the label.
    pub tiers: Vec<SizeTier>,
    /// The label above the last tier.
    pub largest: String,
    /// Colour of labels hookdock creates (six hex digits).
    pub color: String,
}

impl Default for SizeLabelsConfig {
    fn default() -> Self {
        SizeLabelsConfig {
            enabled: true,
            tiers: default_size_tiers(),
            largest: super::labels::DEFAULT_LARGEST.to_owned(),
            color: "ededed".to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IssueLabelsConfig {
    pub enabled: bool,
    pub rules: Vec<KeywordRule>,
}

impl Default for IssueLabelsConfig {
    fn default() -> Self {
        IssueLabelsConfig {
            enabled: true,
            rules: default_issue_rules(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommandsConfig {
    pub enabled: bool,
}

impl Default for CommandsConfig {
    fn default() -> Self {
        CommandsConfig { enabled: true }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimulateConfig {
    /// Comment on pull requests that change the config file with what would change.
    pub enabled: bool,
    /// How far back stored events are replayed.
    pub days: u32,
}

impl Default for SimulateConfig {
    fn default() -> Self {
        SimulateConfig {
            enabled: true,
            days: 14,
        }
    }
}

/// A config file that cannot be used, located as precisely as the problem allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("{file}{}{}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default(), key.as_ref().map(|k| format!(", key `{k}`")).unwrap_or_default())]
pub struct RepoConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

/// The server's defaults (`[automations]` in `hookdock.toml`) over the built-in ones, ready to
/// have repository files merged over them.
#[derive(Debug, Clone)]
pub struct ConfigDefaults {
    merged: Value,
    config: RepoConfig,
}

impl ConfigDefaults {
    /// `overrides` is the `[automations]` table (an empty object when absent). The error names
    /// the setting.
    pub fn new(overrides: &Value) -> Result<ConfigDefaults, RepoConfigError> {
        let mut merged =
            serde_json::to_value(RepoConfig::default()).map_err(|e| RepoConfigError {
                file: "hookdock.toml".into(),
                line: None,
                key: None,
                message: e.to_string(),
            })?;
        merge(&mut merged, overrides);
        let config = from_value(&merged, "hookdock.toml [automations]")?;
        validate(&config, "hookdock.toml [automations]", None)?;
        Ok(ConfigDefaults { merged, config })
    }

    /// The settings of a repository without a config file.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// The settings of a repository whose config file holds `text` (YAML).
    pub fn with_file(&self, text: &str) -> Result<RepoConfig, RepoConfigError> {
        let located = |e: serde_yaml_ng::Error| {
            let message = e.to_string();
            let (key, message) = split_path(&message);
            RepoConfigError {
                file: CONFIG_PATH.into(),
                line: e.location().map(|l| l.line()),
                key,
                message: strip_location(&message),
            }
        };
        // Types and unknown keys first, so the error carries the file's line.
        if text.trim().is_empty() {
            return Ok(self.config.clone());
        }
        serde_yaml_ng::from_str::<RepoConfig>(text).map_err(located)?;
        let file: Value = serde_yaml_ng::from_str(text).map_err(located)?;
        if !(file.is_object() || file.is_null()) {
            return Err(RepoConfigError {
                file: CONFIG_PATH.into(),
                line: Some(1),
                key: None,
                message: "the file must be a mapping of settings (e.g. `review:`)".into(),
            });
        }
        let mut merged = self.merged.clone();
        merge(&mut merged, &file);
        let config = from_value(&merged, CONFIG_PATH)?;
        validate(&config, CONFIG_PATH, Some(text))?;
        Ok(config)
    }
}

fn from_value(value: &Value, file: &str) -> Result<RepoConfig, RepoConfigError> {
    serde_json::from_value(value.clone()).map_err(|e| RepoConfigError {
        file: file.into(),
        line: None,
        key: None,
        message: e.to_string(),
    })
}

/// Checks what types cannot: tiers ascending, globs that compile, colours.
fn validate(config: &RepoConfig, file: &str, text: Option<&str>) -> Result<(), RepoConfigError> {
    let fail = |key: &str, message: String| RepoConfigError {
        file: file.into(),
        line: text.and_then(|t| line_of(t, key)),
        key: Some(key.into()),
        message,
    };
    let size = &config.labels.size;
    let mut previous = 0;
    for (i, tier) in size.tiers.iter().enumerate() {
        if tier.name.trim().is_empty() {
            return Err(fail(
                "labels.size.tiers",
                format!("tier {} has an empty name", i + 1),
            ));
        }
        if tier.below <= previous {
            return Err(fail(
                "labels.size.tiers",
                format!(
                    "`below` must increase from tier to tier (tier {} `{}` has {} after {previous})",
                    i + 1,
                    tier.name,
                    tier.below
                ),
            ));
        }
        previous = tier.below;
    }
    if size.largest.trim().is_empty() {
        return Err(fail("labels.size.largest", "must name a label".into()));
    }
    if size.color.len() != 6 || !size.color.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(fail(
            "labels.size.color",
            format!("`{}` is not six hex digits (e.g. \"ededed\")", size.color),
        ));
    }
    for (key, globs) in [
        ("review.skip", &config.review.skip),
        ("review.generated", &config.review.generated),
    ] {
        for glob in globs {
            if let Err(e) = globset::Glob::new(glob) {
                return Err(fail(key, format!("invalid glob \"{glob}\": {e}")));
            }
        }
    }
    for (i, rule) in config.labels.issues.rules.iter().enumerate() {
        if rule.label.trim().is_empty() || rule.keywords.iter().all(|k| k.trim().is_empty()) {
            return Err(fail(
                "labels.issues.rules",
                format!("rule {} needs a `label` and at least one keyword", i + 1),
            ));
        }
    }
    if config.review.max_comments > 100 {
        return Err(fail(
            "review.max_comments",
            "at most 100 inline comments per review".into(),
        ));
    }
    Ok(())
}

/// Recursive merge: objects merge by key, everything else is replaced.
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            for (k, v) in over {
                match base.get_mut(k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        base.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (_, Value::Null) => {}
        (slot, v) => *slot = v.clone(),
    }
}

/// serde_yaml writes `review.max_comments: invalid type…`: split off the key path.
fn split_path(message: &str) -> (Option<String>, String) {
    if let Some((path, rest)) = message.split_once(": ")
        && !path.contains(' ')
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']' | '-'))
    {
        return (Some(path.to_owned()), rest.to_owned());
    }
    // Unknown fields name the key in backticks.
    let key = message
        .split_once("unknown field `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(k, _)| k.to_owned());
    (key, message.to_owned())
}

/// Drops serde_yaml's ` at line L column C` suffix: the line is reported on its own.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// The line of the last segment of `key` (`labels.size.tiers` → the `tiers:` line under
/// `size:` under `labels:`), found by indentation.
fn line_of(text: &str, key: &str) -> Option<usize> {
    let mut segments = key.split('.').peekable();
    let mut want = segments.next()?;
    let mut min_indent = 0usize;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if trimmed.starts_with('#') || indent < min_indent {
            continue;
        }
        let Some(name) = trimmed.split(':').next() else {
            continue;
        };
        if name.trim().trim_matches('"') == want && trimmed.contains(':') {
            match segments.next() {
                Some(next) => {
                    want = next;
                    min_indent = indent + 1;
                }
                None => return Some(i + 1),
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn defaults() -> ConfigDefaults {
        ConfigDefaults::new(&json!({})).expect("built-in defaults are valid")
    }

    #[test]
    fn empty_file_means_server_defaults() {
        let d = ConfigDefaults::new(&json!({"review": {"max_comments": 5}})).unwrap();
        assert_eq!(d.with_file("").unwrap().review.max_comments, 5);
        assert_eq!(d.with_file("# nothing\n").unwrap().review.max_comments, 5);
    }

    #[test]
    fn file_overrides_server_which_overrides_builtin() {
        let d =
            ConfigDefaults::new(&json!({"review": {"max_comments": 5, "drafts": true}})).unwrap();
        let c = d
            .with_file("review:\n  max_comments: 7\nlabels:\n  size:\n    enabled: false\n")
            .unwrap();
        assert_eq!(c.review.max_comments, 7);
        assert!(c.review.drafts, "kept from the server");
        assert!(!c.labels.size.enabled);
        assert!(c.labels.issues.enabled, "built-in default");
        assert_eq!(c.review.max_patch_bytes, 60_000);
    }

    #[test]
    fn lists_are_replaced_not_appended() {
        let c = defaults()
            .with_file("review:\n  skip: [\"docs/**\"]\n")
            .unwrap();
        assert_eq!(c.review.skip, ["docs/**"]);
    }

    #[test]
    fn wrong_type_names_file_line_and_key() {
        let e = defaults()
            .with_file("review:\n  enabled: true\n  max_comments: lots\n")
            .unwrap_err();
        assert_eq!(e.file, ".github/hookdock.yml");
        assert_eq!(e.line, Some(3));
        assert_eq!(e.key.as_deref(), Some("review.max_comments"));
        assert!(e.message.contains("invalid type"), "{e}");
        let shown = e.to_string();
        assert!(
            shown.starts_with(".github/hookdock.yml line 3, key `review.max_comments`: "),
            "{shown}"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let e = defaults()
            .with_file("reveiw:\n  enabled: false\n")
            .unwrap_err();
        assert_eq!(e.line, Some(1));
        assert_eq!(e.key.as_deref(), Some("reveiw"));
        assert!(e.message.contains("unknown field"), "{e}");
    }

    #[test]
    fn broken_yaml_is_located() {
        let e = defaults()
            .with_file("review:\n  enabled: [true\n")
            .unwrap_err();
        assert!(e.line.is_some(), "{e:?}");
    }

    #[test]
    fn semantic_errors_name_key_and_line() {
        let text = "labels:\n  size:\n    tiers:\n      - name: small\n        below: 50\n      - name: tiny\n        below: 10\n";
        let e = defaults().with_file(text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("labels.size.tiers"));
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("must increase"), "{e}");
        let e = defaults()
            .with_file("review:\n  skip: [\"a[\"]\n")
            .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("review.skip"));
        assert_eq!(e.line, Some(2));
    }

    #[test]
    fn a_scalar_file_is_refused() {
        let e = defaults().with_file("just text\n").unwrap_err();
        assert_eq!(e.file, CONFIG_PATH);
    }

    #[test]
    fn bad_server_defaults_name_the_setting() {
        let e = ConfigDefaults::new(&json!({"review": {"max_comments": "x"}})).unwrap_err();
        assert!(
            e.to_string().starts_with("hookdock.toml [automations]"),
            "{e}"
        );
    }
}

//! The built-in rule reviewer: checks on the added lines that need no network.

use serde::Deserialize;

/// Which rules run.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuleSet {
    pub secrets: bool,
    pub debug_prints: bool,
    pub todo: bool,
    pub large_files: bool,
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

//! Labels: a size label on pull requests from the lines changed (generated files excluded), and
//! keyword labels on issues.

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SizeTier {
    pub name: String,
    pub below: u64,
}

pub const DEFAULT_LARGEST: &str = "size/XL";

pub fn default_size_tiers() -> Vec<SizeTier> {
    Vec::new()
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeywordRule {
    pub label: String,
    pub keywords: Vec<String>,
}

pub fn default_issue_rules() -> Vec<KeywordRule> {
    Vec::new()
}

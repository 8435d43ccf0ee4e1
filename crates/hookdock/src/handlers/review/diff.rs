//! Parsing GitHub's unified-diff patches, the review budget, and anchoring findings to diff lines.

pub const DEFAULT_SKIP_GLOBS: &[&str] = &["Cargo.lock", "**/*.lock"];
pub const DEFAULT_GENERATED_GLOBS: &[&str] = &["**/generated/**"];

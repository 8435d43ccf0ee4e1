//! Parsing GitHub's unified-diff patches, the review budget, and anchoring findings to diff lines.

//! Labels: a size label on pull requests from the lines changed (generated files excluded), and
//! keyword labels on issues.

//! The built-in rule reviewer: checks on the added lines that need no network.

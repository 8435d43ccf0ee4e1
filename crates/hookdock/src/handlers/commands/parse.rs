//! The slash-command parser: one command per line starting with `/`, quoted arguments, code blocks ignored.

//! Slash commands in issue and pull request comments (`/label`, `/unlabel`, `/assign`,
//! `/unassign`, `/review`, `/size`, `/help`).

pub mod parse;

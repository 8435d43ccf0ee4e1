//! The slash-command parser: one command per line starting with `/`, quoted arguments, code blocks ignored.
//!
//! This module owns [`Command`], [`parse`] (comment body → commands, no IO) and [`help_text`].
//! Lines in fenced or indented code, block quotes and HTML comments are never commands.

/// A slash command from a comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Label(Vec<String>),
    Unlabel(Vec<String>),
    /// Logins, without the leading `@`.
    Assign(Vec<String>),
    Unassign(Vec<String>),
    Review,
    Size,
    Help,
    /// A `/name` hookdock does not know (lowercased).
    Unknown {
        name: String,
    },
    /// A known command that cannot run as written.
    Invalid {
        name: String,
        reason: String,
    },
}

impl Command {
    /// The command's name, lowercase, without the `/`.
    pub fn name(&self) -> &str {
        match self {
            Command::Label(_) => "label",
            Command::Unlabel(_) => "unlabel",
            Command::Assign(_) => "assign",
            Command::Unassign(_) => "unassign",
            Command::Review => "review",
            Command::Size => "size",
            Command::Help => "help",
            Command::Unknown { name } | Command::Invalid { name, .. } => name,
        }
    }

    /// Whether running it changes the issue or pull request (and so needs write access).
    pub fn is_mutating(&self) -> bool {
        matches!(
            self,
            Command::Label(_)
                | Command::Unlabel(_)
                | Command::Assign(_)
                | Command::Unassign(_)
                | Command::Review
                | Command::Size
        )
    }
}

/// Tracks fenced code blocks (```` ``` ```` or `~~~`) line by line.
#[derive(Debug, Clone, Default)]
pub(crate) struct Fences {
    /// The open fence's character and length.
    open: Option<(char, usize)>,
}

/// Leading spaces of `line` (a tab counts as 4 columns), and the rest.
fn indentation(line: &str) -> (usize, &str) {
    let mut columns = 0;
    for (i, c) in line.char_indices() {
        match c {
            ' ' => columns += 1,
            '\t' => columns += 4 - columns % 4,
            _ => return (columns, &line[i..]),
        }
    }
    (columns, "")
}

/// `(char, length, rest)` when `text` starts with a run of 3+ backticks or tildes.
fn fence_run(text: &str) -> Option<(char, usize, &str)> {
    let c = text.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let len = text.chars().take_while(|x| *x == c).count();
    (len >= 3).then(|| (c, len, &text[len..]))
}

impl Fences {
    /// Feeds one line; true when the line is part of a fenced block (including its fences).
    pub(crate) fn in_code(&mut self, line: &str) -> bool {
        let (indent, rest) = indentation(line);
        match self.open {
            Some((c, len)) => {
                if indent <= 3
                    && let Some((rc, rlen, after)) = fence_run(rest)
                    && rc == c
                    && rlen >= len
                    && after.trim().is_empty()
                {
                    self.open = None;
                }
                true
            }
            None => {
                if indent <= 3
                    && let Some((c, len, info)) = fence_run(rest)
                    && !(c == '`' && info.contains('`'))
                {
                    self.open = Some((c, len));
                    return true;
                }
                false
            }
        }
    }
}

/// Whether an HTML comment is open at the end of `text`, given whether one was open at its
/// start.
fn comment_open_after(text: &str, mut open: bool) -> bool {
    let mut rest = text;
    loop {
        let marker = if open { "-->" } else { "<!--" };
        match rest.find(marker) {
            Some(i) => {
                rest = &rest[i + marker.len()..];
                open = !open;
            }
            None => return open,
        }
    }
}

/// Splits a command line into `(name, arguments)`: `/` followed by `[A-Za-z][A-Za-z0-9_-]*`
/// and then whitespace or the end.
fn command_name(text: &str) -> Option<(String, &str)> {
    let rest = text.strip_prefix('/')?;
    let first = rest.chars().next()?;
    if !first.is_ascii_alphabetic() {
        return None;
    }
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .unwrap_or(rest.len());
    let after = &rest[end..];
    if !after.is_empty() && !after.starts_with(char::is_whitespace) {
        return None;
    }
    Some((rest[..end].to_ascii_lowercase(), after))
}

/// The arguments of a command and whether the line leaves an HTML comment open.
struct Arguments {
    words: Result<Vec<String>, String>,
    opens_comment: bool,
}

/// Whitespace- or comma-separated words; a word starting with `"` or `'` runs to the matching
/// quote. An unquoted `<!--` ends the arguments (an HTML comment).
fn arguments(text: &str) -> Arguments {
    let mut words = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ',');
        if rest.is_empty() {
            break;
        }
        if let Some(after) = rest.strip_prefix("<!--") {
            match after.find("-->") {
                Some(i) => {
                    rest = &after[i + 3..];
                    continue;
                }
                None => {
                    return Arguments {
                        words: Ok(words),
                        opens_comment: true,
                    };
                }
            }
        }
        let Some(first) = rest.chars().next() else {
            break;
        };
        if first == '"' || first == '\'' {
            let quoted = &rest[1..];
            match quoted.find(first) {
                Some(i) => {
                    words.push(quoted[..i].to_string());
                    rest = &quoted[i + 1..];
                }
                None => {
                    return Arguments {
                        words: Err(format!("unterminated {first} quote")),
                        opens_comment: false,
                    };
                }
            }
        } else {
            let end = rest
                .find(|c: char| c.is_whitespace() || c == ',')
                .unwrap_or(rest.len());
            let end = match rest[..end].find("<!--") {
                Some(i) if i > 0 => i,
                _ => end,
            };
            let end = if end == 0 { rest.len() } else { end };
            words.push(rest[..end].to_string());
            rest = &rest[end..];
        }
    }
    Arguments {
        words: Ok(words),
        opens_comment: false,
    }
}

/// Drops empty words and duplicates (case-insensitively, keeping the first spelling).
fn clean(words: Vec<String>, strip_at: bool) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for word in words {
        let word = if strip_at {
            word.strip_prefix('@').unwrap_or(&word).to_string()
        } else {
            word
        };
        if word.is_empty() || out.iter().any(|w| w.eq_ignore_ascii_case(&word)) {
            continue;
        }
        out.push(word);
    }
    out
}

/// Builds a list command from its words.
type ListCommand = fn(Vec<String>) -> Command;

fn command(name: String, args: Result<Vec<String>, String>) -> Command {
    let (make, what, strip_at): (ListCommand, &str, bool) = match name.as_str() {
        "review" => return Command::Review,
        "size" => return Command::Size,
        "help" => return Command::Help,
        "label" => (Command::Label, "label", false),
        "unlabel" => (Command::Unlabel, "label", false),
        "assign" => (Command::Assign, "user", true),
        "unassign" => (Command::Unassign, "user", true),
        _ => return Command::Unknown { name },
    };
    match args {
        Err(reason) => Command::Invalid { name, reason },
        Ok(words) => {
            let words = clean(words, strip_at);
            if words.is_empty() {
                Command::Invalid {
                    name,
                    reason: format!("needs at least one {what}"),
                }
            } else {
                make(words)
            }
        }
    }
}

/// The commands in a comment body, in order: one per line whose first non-space character (at
/// most 3 leading spaces) is `/` followed by a name and then whitespace or the end. Lines in
/// fenced code, indented code, block quotes and HTML comments are ignored.
pub fn parse(body: &str) -> Vec<Command> {
    let mut commands = Vec::new();
    let mut fences = Fences::default();
    let mut in_comment = false;
    for raw in body.split('\n') {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if in_comment {
            in_comment = comment_open_after(line, true);
            continue;
        }
        if fences.in_code(line) {
            continue;
        }
        let (indent, rest) = indentation(line);
        let candidate = if indent <= 3 {
            command_name(rest)
        } else {
            None
        };
        let Some((name, args)) = candidate else {
            // Indented code, quotes and prose: only an HTML comment opening here matters.
            in_comment = comment_open_after(line, false);
            continue;
        };
        let parsed = arguments(args);
        in_comment = parsed.opens_comment;
        commands.push(command(name, parsed.words));
    }
    commands
}

/// Markdown help listing the commands.
pub fn help_text() -> String {
    let write = "needs write, maintain or admin permission";
    [
        "**Commands** (one per line, at the start of the line):".to_string(),
        String::new(),
        format!(
            "- `/label name \"name with spaces\"`: adds labels (commas also separate them); {write}."
        ),
        format!("- `/unlabel name`: removes labels; {write}."),
        format!("- `/assign @user`: assigns users; {write}."),
        format!("- `/unassign @user`: removes assignees; {write}."),
        format!("- `/review`: runs the automated review of this pull request again; {write}."),
        format!("- `/size`: recomputes the size label of this pull request; {write}."),
        "- `/help`: shows this list; anyone can use it.".to_string(),
        String::new(),
        "Commands inside code blocks, quotes and HTML comments are ignored.".to_string(),
    ]
    .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    fn invalid(name: &str, reason: &str) -> Command {
        Command::Invalid {
            name: name.to_string(),
            reason: reason.to_string(),
        }
    }

    #[test]
    fn simple_commands_and_names() {
        assert_eq!(parse("/label bug"), vec![Command::Label(v(&["bug"]))]);
        assert_eq!(parse("/LABEL bug"), vec![Command::Label(v(&["bug"]))]);
        assert_eq!(parse("/Review"), vec![Command::Review]);
        assert_eq!(parse("/size please"), vec![Command::Size]);
        assert_eq!(parse("/help me \"unterminated"), vec![Command::Help]);
        assert_eq!(
            parse("/deploy prod"),
            vec![Command::Unknown {
                name: "deploy".to_string()
            }]
        );
        assert_eq!(parse("   /review"), vec![Command::Review]);
        assert_eq!(parse("/review\t"), vec![Command::Review]);
    }

    #[test]
    fn not_commands() {
        assert!(parse("/path/to/file").is_empty());
        assert!(parse("/ 5").is_empty());
        assert!(parse("/5 apples").is_empty());
        assert!(parse("/label,bug").is_empty());
        assert!(parse("please /label bug").is_empty());
        assert!(parse("").is_empty());
        assert!(parse("/").is_empty());
    }

    #[test]
    fn arguments_quotes_commas_and_duplicates() {
        assert_eq!(
            parse("/label bug, \"good first issue\""),
            vec![Command::Label(v(&["bug", "good first issue"]))]
        );
        assert_eq!(
            parse("/label 'needs review' bug,docs  bug  \"\" 'Bug'"),
            vec![Command::Label(v(&["needs review", "bug", "docs"]))]
        );
        assert_eq!(
            parse("/unlabel don't-merge"),
            vec![Command::Unlabel(v(&["don't-merge"]))]
        );
        assert_eq!(
            parse("/assign @alice bob @alice"),
            vec![Command::Assign(v(&["alice", "bob"]))]
        );
        assert_eq!(
            parse("/unassign @carol"),
            vec![Command::Unassign(v(&["carol"]))]
        );
    }

    #[test]
    fn invalid_commands() {
        assert_eq!(
            parse("/label"),
            vec![invalid("label", "needs at least one label")]
        );
        assert_eq!(
            parse("/unlabel  , \"\""),
            vec![invalid("unlabel", "needs at least one label")]
        );
        assert_eq!(
            parse("/assign @"),
            vec![invalid("assign", "needs at least one user")]
        );
        assert_eq!(
            parse("/label \"good first"),
            vec![invalid("label", "unterminated \" quote")]
        );
        assert_eq!(
            parse("/unassign 'bob"),
            vec![invalid("unassign", "unterminated ' quote")]
        );
    }

    #[test]
    fn several_commands_and_crlf() {
        let body = "Thanks!\r\n/label bug\r\n\r\nSome text\r\n/assign @me\r\n/review\r\n";
        assert_eq!(
            parse(body),
            vec![
                Command::Label(v(&["bug"])),
                Command::Assign(v(&["me"])),
                Command::Review
            ]
        );
    }

    #[test]
    fn code_blocks_are_ignored() {
        let body = "```\n/label a\n```\n/label b\n~~~sh\n/label c\n```\n/label d\n~~~\n/label e";
        assert_eq!(
            parse(body),
            vec![Command::Label(v(&["b"])), Command::Label(v(&["e"]))]
        );
        let nested = "````md\n```\n/label a\n```\n/label b\n````\n/label c";
        assert_eq!(parse(nested), vec![Command::Label(v(&["c"]))]);
        let longer_close = "~~~\n/label a\n~~~~~\n/label b";
        assert_eq!(parse(longer_close), vec![Command::Label(v(&["b"]))]);
        let not_a_close = "```\n/label a\n``` text\n/label b\n```\n/label c";
        assert_eq!(parse(not_a_close), vec![Command::Label(v(&["c"]))]);
        let inline = "```x```\n/label a";
        assert_eq!(parse(inline), vec![Command::Label(v(&["a"]))]);
        let unclosed = "```\n/label a";
        assert!(parse(unclosed).is_empty());
    }

    #[test]
    fn indented_code_and_quotes_are_ignored() {
        assert!(parse("    /label a").is_empty());
        assert!(parse("\t/label a").is_empty());
        assert!(parse("> /label a").is_empty());
        assert!(parse(">/label a").is_empty());
        assert!(parse("  > /label a").is_empty());
    }

    #[test]
    fn html_comments_are_ignored() {
        assert!(parse("<!-- /label a -->").is_empty());
        let multi = "<!--\n/label a\n/review\n-->\n/label b";
        assert_eq!(parse(multi), vec![Command::Label(v(&["b"]))]);
        let trailing = "text <!-- start\n/label a\nend -->\n/size";
        assert_eq!(parse(trailing), vec![Command::Size]);
        let after = "/label a <!-- note -->  b";
        assert_eq!(parse(after), vec![Command::Label(v(&["a", "b"]))]);
        let opens = "/label a <!-- note\n/label hidden\n-->\n/label c";
        assert_eq!(
            parse(opens),
            vec![Command::Label(v(&["a"])), Command::Label(v(&["c"]))]
        );
        let closed_then_open = "<!-- a --> text <!--\n/label hidden\n-->";
        assert!(parse(closed_then_open).is_empty());
    }

    #[test]
    fn name_and_mutating() {
        let all = [
            (Command::Label(vec![]), "label", true),
            (Command::Unlabel(vec![]), "unlabel", true),
            (Command::Assign(vec![]), "assign", true),
            (Command::Unassign(vec![]), "unassign", true),
            (Command::Review, "review", true),
            (Command::Size, "size", true),
            (Command::Help, "help", false),
            (
                Command::Unknown {
                    name: "deploy".to_string(),
                },
                "deploy",
                false,
            ),
            (invalid("label", "x"), "label", false),
        ];
        for (command, name, mutating) in all {
            assert_eq!(command.name(), name);
            assert_eq!(command.is_mutating(), mutating, "{name}");
        }
    }

    #[test]
    fn help_lists_every_command() {
        let help = help_text();
        for name in [
            "/label",
            "/unlabel",
            "/assign",
            "/unassign",
            "/review",
            "/size",
            "/help",
        ] {
            assert!(help.contains(&format!("`{name}")), "{name}");
        }
        assert_eq!(help.matches("write, maintain or admin").count(), 6);
    }

    #[test]
    fn fences_track_lines() {
        let mut f = Fences::default();
        assert!(!f.in_code("text"));
        assert!(f.in_code("```rust"));
        assert!(f.in_code("fn x() {}"));
        assert!(f.in_code("~~~"));
        assert!(f.in_code("```"));
        assert!(!f.in_code("after"));
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = parse(&s);
        }

        #[test]
        fn parse_never_panics_on_markup(s in "([ \t>/~`\"',<!-]|label|--|\r?\n|[a-z@é]){0,60}") {
            let _ = parse(&s);
        }

        #[test]
        fn double_quoted_label_round_trips(label in "[^\"\r\n]*[^\"\r\n\\s][^\"\r\n]*") {
            let parsed = parse(&format!("/label \"{label}\""));
            prop_assert_eq!(parsed, vec![Command::Label(vec![label])]);
        }

        #[test]
        fn no_slash_line_no_commands(lines in proptest::collection::vec("[^/\r\n][^\r\n]*|", 0..8)) {
            let body = lines.iter().map(|l| l.trim_start().to_string()).filter(|l| !l.starts_with('/')).collect::<Vec<_>>().join("\n");
            prop_assert!(parse(&body).is_empty());
        }
    }
}

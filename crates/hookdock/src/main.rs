//! The `hookdock` binary: parses the command line, loads settings, starts tracing and hands
//! over to the library. Every error ends here and becomes one message and an exit code.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(cli::Failure::Config(e)) => {
            eprintln!("error: configuration: {e}");
            ExitCode::from(2)
        }
        // The reader of the output went away (`| head`): it has what it wanted.
        Err(cli::Failure::Other(e))
            if e.downcast_ref::<cli::StdoutError>()
                .is_some_and(cli::StdoutError::is_closed) =>
        {
            ExitCode::SUCCESS
        }
        Err(cli::Failure::Other(e)) => {
            eprintln!("error: {}", message(&e));
            ExitCode::from(1)
        }
    }
}

/// The error and its causes joined by `: `, each cause said once: many of the library's
/// errors already quote their cause in their own text (which is all an API answer shows).
fn message(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("database error: {0}")]
    struct Quoting(#[from] std::io::Error);

    #[test]
    fn a_cause_quoted_by_its_error_is_not_repeated() {
        let io = std::io::Error::other("disk on fire");
        let e = anyhow::Error::from(Quoting::from(io)).context("migrating the database");
        assert_eq!(
            message(&e),
            "migrating the database: database error: disk on fire"
        );
        let plain = anyhow::anyhow!("disk on fire").context("opening the database");
        assert_eq!(message(&plain), "opening the database: disk on fire");
    }
}

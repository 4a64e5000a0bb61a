//! What a command hands back — its JSON object, its text, whether it
//! succeeded — and how that becomes stdout, stderr and the exit status.

use std::fmt::Display;
use std::process::ExitCode;

use serde_json::Value;

/// A command that ran to its end: its result, which may be a failed check.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// Whether the check or operation succeeded (exit status 0, else 1).
    pub(crate) ok: bool,
    /// The `--json` output.
    pub(crate) json: Value,
    /// The text output.
    pub(crate) human: String,
}

impl Outcome {
    /// A successful result.
    pub(crate) fn ok(json: Value, human: String) -> Self {
        Self {
            ok: true,
            json,
            human,
        }
    }
}

/// A command that could not do its work (a missing queue, refused
/// credentials, an unreadable file, a job the producer refuses).
#[derive(Debug)]
pub(crate) struct Failure {
    message: String,
}

impl Failure {
    /// A failure with this message.
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// A failure that says what was being done.
    pub(crate) fn doing(what: &str, e: impl Display) -> Self {
        Self::new(format!("{what}: {e}"))
    }
}

/// Prints the result and gives the exit status: 0 success, 1 failure
/// (usage errors exit 2 in clap, before this).
pub(crate) fn finish(result: Result<Outcome, Failure>, json: bool) -> ExitCode {
    match result {
        Ok(o) => {
            if json {
                println!("{}", o.json);
            } else if !o.human.is_empty() {
                print!("{}", o.human);
                if !o.human.ends_with('\n') {
                    println!();
                }
            }
            if o.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(f) => {
            if json {
                println!("{}", serde_json::json!({ "error": f.message }));
            }
            eprintln!("ferry: {}", f.message);
            ExitCode::FAILURE
        }
    }
}

/// Left-aligned columns, two spaces apart; the last column is not padded.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                out.push_str(cell);
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push('\n');
    }
    out
}

//! Human and JSON output: aligned tables, times relative to now, durations, shell quoting.
//!
//! Human text goes to stdout for what a command answers (tables, ids) and to stderr for what a
//! person should read but a script should not capture (`acquired deploy: …`). JSON goes to
//! stdout only, one document per command.

use std::io::Write;
use std::time::Duration;

use anyhow::Context as _;
use jiff::Timestamp;
use serde::Serialize;

/// Prints `value` as pretty JSON on stdout.
pub fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("cannot encode the answer as JSON")?;
    print_line(&text)
}

/// Prints an error as the JSON document of a command run with `--json`, on stdout, in the
/// shape of the API's errors plus the exit code:
/// `{"error": {"code", "message"}, "exit_code": N, "holders"?: [...]}`. `code` is the server's
/// stable code, or `usage`, `interrupted` (a signal while waiting), `internal` for what baton
/// decided itself.
pub fn print_json_error(
    code: &str,
    message: &str,
    exit_code: u8,
    holders: Option<&[baton_client::proto::Holder]>,
) {
    let mut document = serde_json::json!({
        "error": {"code": code, "message": message},
        "exit_code": exit_code,
    });
    if let Some(holders) = holders {
        document["holders"] = serde_json::json!(holders);
    }
    // Nothing else can be told when stdout is gone; the exit code still tells.
    let _ = print_json(&document);
}

/// Prints one line on stdout. A closed stdout (`| head`) is not an error worth reporting.
pub fn print_line(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout_result(writeln!(stdout, "{text}").and_then(|()| stdout.flush()))
}

/// Prints bytes on stdout as they are (a generated completion script). A closed stdout is not
/// an error worth reporting, as for [`print_line`].
pub fn print_bytes(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout_result(stdout.write_all(bytes).and_then(|()| stdout.flush()))
}

/// A write to stdout's result: a broken pipe is success, anything else an error.
fn stdout_result(result: std::io::Result<()>) -> anyhow::Result<()> {
    match result {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(error) => Err(error).context("cannot write to stdout"),
    }
}

/// A table with a header row, printed with columns padded to their widest cell.
#[derive(Debug)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|title| (*title).to_owned()).collect()],
        }
    }

    /// Adds a row; it should have as many cells as the header.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row, without trailing spaces.
    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|column| {
                self.rows
                    .iter()
                    .filter_map(|row| row.get(column))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut text = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (column, cell) in row.iter().enumerate() {
                if column > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                let padding = widths[column].saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', padding));
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }

    /// Prints the table on stdout.
    pub fn print(&self) -> anyhow::Result<()> {
        print_line(self.render().trim_end_matches('\n'))
    }
}

/// A duration rounded to whole seconds (or milliseconds under a second): `30s`, `1m 5s`,
/// `1500ms` → `1s`, `250ms`.
pub fn duration(value: Duration) -> String {
    let rounded = if value < Duration::from_secs(1) {
        Duration::from_millis(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
    } else {
        Duration::from_secs(value.as_secs())
    };
    humantime::format_duration(rounded).to_string()
}

/// `at` relative to `now`: `in 25s`, `3m 2s ago`, or `now`.
pub fn relative(at: Timestamp, now: Timestamp) -> String {
    let millis = at.as_millisecond() - now.as_millisecond();
    let magnitude = Duration::from_millis(millis.unsigned_abs());
    if magnitude < Duration::from_secs(1) {
        "now".to_owned()
    } else if millis > 0 {
        format!("in {}", duration(magnitude))
    } else {
        format!("{} ago", duration(magnitude))
    }
}

/// `at` as a UTC time to the second: `2024-05-01 12:00:03Z`.
pub fn absolute(at: Timestamp) -> String {
    at.strftime("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// Quotes `value` for a POSIX shell: single quotes, with `'` written as `'\''`.
pub fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// A command line as a shell would read it back: each argument quoted when it needs to be.
pub fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|word| shell_quote(word))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let mut table = Table::new(&["NAME", "TOKEN"]);
        table.row(vec!["team-a/deploy".into(), "7".into()]);
        table.row(vec!["x".into(), "12345".into()]);
        assert_eq!(
            table.render(),
            "NAME           TOKEN\nteam-a/deploy  7\nx              12345\n"
        );
    }

    #[test]
    fn times_read_relative_to_now() {
        let now = Timestamp::from_second(1_000_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let later = Timestamp::from_second(1_000_025).unwrap_or(Timestamp::UNIX_EPOCH);
        let earlier = Timestamp::from_second(999_818).unwrap_or(Timestamp::UNIX_EPOCH);
        assert_eq!(relative(later, now), "in 25s");
        assert_eq!(relative(earlier, now), "3m 2s ago");
        assert_eq!(relative(now, now), "now");
        assert_eq!(absolute(now), "1970-01-12 13:46:40Z");
    }

    #[test]
    fn durations_round() {
        assert_eq!(duration(Duration::from_millis(30_400)), "30s");
        assert_eq!(duration(Duration::from_millis(250)), "250ms");
        assert_eq!(duration(Duration::from_secs(3900)), "1h 5m");
    }

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote("a/b"), "'a/b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}

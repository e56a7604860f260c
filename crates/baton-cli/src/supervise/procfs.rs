//! The little of `/proc` the supervisor reads: each process's state, parent and process group.

use std::fs;

/// One line of `/proc/PID/stat`, the fields used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Process {
    /// Its pid.
    pub(super) pid: i32,
    /// Its state letter: `R`, `S`, `D`, `Z`...
    pub(super) state: u8,
    /// Its parent's pid (a process, not a thread).
    pub(super) ppid: i32,
    /// Its process-group id.
    pub(super) pgrp: i32,
}

impl Process {
    /// A zombie: exited, waiting to be reaped.
    pub(super) fn is_zombie(&self) -> bool {
        self.state == b'Z'
    }
}

/// Reads `/proc/PID/stat`; `None` when there is no such process (any more).
pub(super) fn process(pid: i32) -> Option<Process> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Every process visible in `/proc` (processes that vanish while reading are skipped).
pub(super) fn processes() -> Vec<Process> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(process)
        .collect()
}

/// The processes whose parent is `parent`.
pub(super) fn children_of(parent: i32) -> Vec<Process> {
    processes()
        .into_iter()
        .filter(|process| process.ppid == parent)
        .collect()
}

/// Parses `pid (comm) state ppid pgrp ...`; `comm` may contain spaces and parentheses, so the
/// fields after it are found from its last `)`.
fn parse_stat(text: &str) -> Option<Process> {
    let (head, rest) = text.rsplit_once(')')?;
    let pid = head.split_once(" (")?.0.trim().parse().ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = *fields.next()?.as_bytes().first()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(Process {
        pid,
        state,
        ppid,
        pgrp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_with_an_odd_command_name() {
        let line = "4242 (we ird) (x)) Z 17 4240 4240 0 -1 4194560 0 0";
        assert_eq!(
            parse_stat(line),
            Some(Process {
                pid: 4242,
                state: b'Z',
                ppid: 17,
                pgrp: 4240
            })
        );
    }

    #[test]
    fn reads_this_process() {
        let me = process(std::process::id() as i32);
        assert!(me.is_some_and(|me| me.state != b'Z'));
    }
}

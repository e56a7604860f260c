//! `baton server --config FILE` and `baton server --print-config`.
//!
//! Every `baton server` flag has a key in the TOML file: its long name with `_` for `-`
//! (`--default-ttl` is `default_ttl`). The file fills in only what neither a flag nor a
//! `BATON_*` variable gave: precedence is flags > environment > file > defaults, read from
//! clap's [`ArgMatches::value_source`]. This works on the parsed command-line definition, not
//! on a list of keys, so a flag added to `baton server` gets its key without a change here.
//!
//! A file value is checked with its flag's own value parser (the same durations, ranges and
//! value sets), then handed to clap as if it were on the command line, after the real flags.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

/// The subcommand whose flags the file configures.
const SERVER: &str = "server";
/// The id of `--config FILE`.
const CONFIG: &str = "config";
/// The id of `--print-config`.
const PRINT_CONFIG: &str = "print_config";

/// Why the command line with its configuration file cannot be used.
#[derive(Debug)]
pub enum ResolveError {
    /// The file cannot be read or parsed, has an unknown key or a bad value: the message
    /// names the file and the key.
    File(String),
    /// The command line with the file's values added is refused by clap (e.g. `tls_cert`
    /// without `tls_key`).
    Clap(clap::Error),
}

/// The parsed command line with the configuration file applied.
#[derive(Debug)]
pub struct Resolved {
    /// The matches, as if the file's values had been given as flags.
    pub matches: ArgMatches,
    /// The keys whose values came from the file (for `--print-config`).
    pub from_file: BTreeSet<String>,
}

/// The file's key of a flag: its long name with `_` for `-`.
fn key_of(arg: &Arg) -> Option<String> {
    arg.get_long().map(|long| long.replace('-', "_"))
}

/// The flags of `baton server` that have a key: all but `--config`, `--print-config`, help
/// and the client's global options.
fn configurable(server: &Command) -> impl Iterator<Item = &Arg> {
    server.get_arguments().filter(|arg| {
        let id = arg.get_id().as_str();
        id != CONFIG
            && id != PRINT_CONFIG
            && !arg.is_global_set()
            && arg
                .get_long()
                .is_some_and(|long| long != "help" && long != "version")
    })
}

fn is_switch(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue)
}

fn is_list(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Append)
}

/// Applies `baton server`'s configuration file, if `--config` or `BATON_CONFIG` names one:
/// parses `argv` again with the file's values for every flag whose value would otherwise be
/// its default (or missing). Other commands pass through unchanged.
pub fn resolve(
    command: &Command,
    matches: ArgMatches,
    argv: &[OsString],
) -> Result<Resolved, ResolveError> {
    let unchanged = |matches| {
        Ok(Resolved {
            matches,
            from_file: BTreeSet::new(),
        })
    };
    let (server, server_matches) = match (matches.subcommand(), command.find_subcommand(SERVER)) {
        (Some((SERVER, server_matches)), Some(server)) => (server, server_matches),
        _ => return unchanged(matches),
    };
    let Some(path) = server_matches.get_one::<PathBuf>(CONFIG).cloned() else {
        return unchanged(matches);
    };
    let table = read(&path)?;
    let file_error = |key: &str, reason: String| {
        ResolveError::File(format!("{}: key `{key}`: {reason}", path.display()))
    };
    let mut extra: Vec<OsString> = Vec::new();
    let mut from_file = BTreeSet::new();
    for (key, value) in &table {
        let Some(arg) = configurable(server).find(|arg| key_of(arg).as_deref() == Some(key)) else {
            return Err(ResolveError::File(format!(
                "{}: unknown key `{key}` (a key is a `baton server` flag's long name with _ for -, \
                 e.g. default_ttl; see `baton server --help`)",
                path.display()
            )));
        };
        let values = values_of(arg, value).map_err(|reason| file_error(key, reason))?;
        for text in &values {
            check(arg, text).map_err(|error| file_error(key, value_reason(&error, text)))?;
        }
        let source = server_matches.value_source(arg.get_id().as_str());
        if source.is_some_and(|source| source != ValueSource::DefaultValue) {
            continue; // A flag or a variable beats the file.
        }
        let Some(long) = arg.get_long() else {
            continue;
        };
        if is_switch(arg) {
            if values.iter().any(|text| text == "true") {
                extra.push(format!("--{long}").into());
            }
        } else {
            extra.extend(values.iter().map(|text| format!("--{long}={text}").into()));
        }
        from_file.insert(key.clone());
    }
    let matches = command
        .clone()
        .try_get_matches_from(argv.iter().cloned().chain(extra))
        .map_err(ResolveError::Clap)?;
    Ok(Resolved { matches, from_file })
}

/// Checks one value with its flag's value parser (type, range, value set), alone: the flag's
/// relations to others (`requires`, `conflicts_with`) are checked when the whole command line
/// is parsed again.
fn check(arg: &Arg, text: &str) -> Result<(), clap::Error> {
    let probe = Arg::new(arg.get_id().clone())
        .long("value")
        .value_parser(arg.get_value_parser().clone())
        .allow_hyphen_values(true);
    Command::new("baton server --config")
        .no_binary_name(true)
        .arg(probe)
        .try_get_matches_from([OsString::from(format!("--value={text}"))])
        .map(drop)
}

/// Reads the file as a TOML table.
fn read(path: &Path) -> Result<toml::Table, ResolveError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| ResolveError::File(format!("cannot read {}: {error}", path.display())))?;
    text.parse::<toml::Table>()
        .map_err(|error| ResolveError::File(format!("{}: {error}", path.display())))
}

/// A file value as the command-line texts of its flag.
fn values_of(arg: &Arg, value: &toml::Value) -> Result<Vec<String>, String> {
    let scalar = |value: &toml::Value| match value {
        toml::Value::String(text) => Ok(text.clone()),
        toml::Value::Integer(number) => Ok(number.to_string()),
        toml::Value::Boolean(flag) => Ok(flag.to_string()),
        _ => Err("expected a string or a number".to_owned()),
    };
    if is_switch(arg) {
        return match value {
            toml::Value::Boolean(flag) => Ok(vec![flag.to_string()]),
            _ => Err("expected true or false".to_owned()),
        };
    }
    match value {
        toml::Value::Array(items) if is_list(arg) => items.iter().map(scalar).collect(),
        toml::Value::Array(_) => Err("expected one value, not a list".to_owned()),
        value => scalar(value).map(|text| vec![text]),
    }
}

/// Why a file value was refused, from the flag's value parser.
fn value_reason(error: &clap::Error, text: &str) -> String {
    use clap::error::{ContextKind, ContextValue};
    let mut reason = format!("invalid value {text:?}");
    if let Some(source) = std::error::Error::source(error) {
        reason.push_str(&format!(": {source}"));
    }
    if let Some(ContextValue::Strings(valid)) = error.get(ContextKind::ValidValue) {
        reason.push_str(&format!(" (one of: {})", valid.join(", ")));
    }
    reason
}

/// Whether the command line is `baton server --print-config`.
pub fn print_asked(matches: &ArgMatches) -> bool {
    matches
        .subcommand_matches(SERVER)
        .is_some_and(|server| server.get_flag(PRINT_CONFIG))
}

/// The effective configuration of `baton server` as a TOML file `--config` accepts: one line
/// per key, with where its value came from. Values that may hold a password (those whose
/// environment values help hides, such as `database`) are not shown.
pub fn render(command: &Command, resolved: &Resolved) -> String {
    let mut out = String::from(
        "# The effective configuration of `baton server` (flags > BATON_* > --config file > defaults).\n",
    );
    let (Some(server), Some(matches)) = (
        command.find_subcommand(SERVER),
        resolved.matches.subcommand_matches(SERVER),
    ) else {
        return out;
    };
    for arg in configurable(server) {
        let (Some(key), id) = (key_of(arg), arg.get_id().as_str()) else {
            continue;
        };
        let origin = if resolved.from_file.contains(&key) {
            "file".to_owned()
        } else {
            match matches.value_source(id) {
                Some(ValueSource::CommandLine) => "flag".to_owned(),
                Some(ValueSource::EnvVariable) => arg
                    .get_env()
                    .map_or("env".to_owned(), |name| name.to_string_lossy().into_owned()),
                _ => "default".to_owned(),
            }
        };
        let raw: Vec<String> = match matches.try_get_raw(id) {
            Ok(Some(values)) => values.map(|v| v.to_string_lossy().into_owned()).collect(),
            _ => Vec::new(),
        };
        let line = if raw.is_empty() {
            format!("# {key} is not set\n")
        } else if arg.is_hide_env_values_set() {
            format!("# {key} is set ({origin}); not shown, it may hold a password\n")
        } else if is_switch(arg) {
            let on = raw.iter().any(|text| text == "true");
            format!("{key} = {on}  # {origin}\n")
        } else if is_list(arg) {
            let items: Vec<String> = raw.iter().map(|text| literal(text)).collect();
            format!("{key} = [{}]  # {origin}\n", items.join(", "))
        } else {
            format!("{key} = {}  # {origin}\n", literal(&raw[0]))
        };
        out.push_str(&line);
    }
    out
}

/// A TOML literal for a command-line text: an integer when it is one, else a basic string
/// (JSON's string escapes are all valid in TOML).
fn literal(text: &str) -> String {
    match text.parse::<i64>() {
        Ok(number) => number.to_string(),
        Err(_) => serde_json::to_string(text).unwrap_or_else(|_| format!("{text:?}")),
    }
}

//! `baton keys create|list|revoke` and `baton audit`: API keys and the audit log.

use anyhow::Context as _;
use baton_client::proto::CreateKeyRequest;
use baton_server::auth;

use super::Context;
use crate::args::{AuditArgs, KeyCreateArgs, KeysCommand};
use crate::exit;
use crate::output::{self, Table, print_line};

/// `baton keys …`.
pub async fn keys(context: &Context, command: KeysCommand) -> anyhow::Result<u8> {
    match command {
        KeysCommand::Create(args) if args.offline => create_offline(context, &args),
        KeysCommand::Create(args) => create(context, args).await,
        KeysCommand::List => list(context).await,
        KeysCommand::Revoke(args) => {
            let answer = context.client.revoke_key(&args.id).await?;
            if context.json {
                output::print_json(&answer)?;
            } else if answer.revoked {
                print_line(&format!("revoked {} ({})", answer.key.id, answer.key.name))?;
            } else {
                print_line(&format!(
                    "{} ({}) was already revoked",
                    answer.key.id, answer.key.name
                ))?;
            }
            Ok(exit::SUCCESS)
        }
    }
}

async fn create(context: &Context, args: KeyCreateArgs) -> anyhow::Result<u8> {
    let answer = context
        .client
        .create_key(&CreateKeyRequest {
            name: args.name,
            grants: args.grants,
            rate_per_sec: args.rate,
            leases_max: args.max_leases,
            waiters_max: args.max_waiters,
            locks_max: args.max_locks,
            jobs_max: args.max_jobs,
        })
        .await?;
    if context.json {
        output::print_json(&answer)?;
    } else {
        // The secret alone on stdout (`KEY=$(baton keys create …)`); the rest for a person.
        eprintln!(
            "created {} ({}) granting {}; the secret below is shown this once",
            answer.key.id,
            answer.key.name,
            answer.key.grants.join(" ")
        );
        print_line(&answer.secret)?;
    }
    Ok(exit::SUCCESS)
}

/// Makes a key without a server: its secret, and the keys-file entry holding only its hash.
fn create_offline(context: &Context, args: &KeyCreateArgs) -> anyhow::Result<u8> {
    if let Err(message) = auth::validate_key(&args.name, &args.grants, args.rate).and_then(|_| {
        auth::validate_quota(
            args.max_leases,
            args.max_waiters,
            args.max_locks,
            args.max_jobs,
        )
    }) {
        eprintln!("baton: {message}");
        return Ok(exit::USAGE);
    }
    let secret = auth::generate_secret()?;
    let hash = auth::hash_secret(&secret);
    let mut entry = format!(
        "[[key]]\nname = {}\nsecret_sha256 = \"{hash}\"\ngrants = [{}]\n",
        toml_string(&args.name),
        args.grants
            .iter()
            .map(|grant| toml_string(grant))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(rate) = args.rate {
        entry.push_str(&format!("rate_per_sec = {rate}\n"));
    }
    for (field, value) in [
        ("leases_max", args.max_leases),
        ("waiters_max", args.max_waiters),
        ("locks_max", args.max_locks),
        ("jobs_max", args.max_jobs),
    ] {
        if let Some(value) = value {
            entry.push_str(&format!("{field} = {value}\n"));
        }
    }
    if context.json {
        output::print_json(&serde_json::json!({
            "secret": secret,
            "secret_sha256": hash,
            "keys_file_entry": entry,
        }))?;
    } else {
        // A TOML comment, so `2>>keys.toml` appends a valid entry.
        eprintln!(
            "# the secret (shown this once; give it as BATON_API_KEY) is on stdout; add this \
             to the server's --keys-file:\n{entry}"
        );
        print_line(&secret)?;
    }
    Ok(exit::SUCCESS)
}

/// A key's own quotas for the listing (`-` when it has none: the server's defaults apply).
fn quotas_text(key: &baton_client::proto::KeyInfo) -> String {
    let own: Vec<String> = [
        ("leases", key.leases_max),
        ("waiters", key.waiters_max),
        ("locks", key.locks_max),
        ("jobs", key.jobs_max),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.map(|value| format!("{name}={value}")))
    .collect();
    if own.is_empty() {
        "-".to_owned()
    } else {
        own.join(",")
    }
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned())
}

async fn list(context: &Context) -> anyhow::Result<u8> {
    let answer = context.client.keys().await?;
    if context.json {
        output::print_json(&answer)?;
        return Ok(exit::SUCCESS);
    }
    let now = jiff::Timestamp::now();
    let mut table = Table::new(&[
        "ID", "NAME", "GRANTS", "RATE", "QUOTAS", "CREATED", "REVOKED", "SOURCE",
    ]);
    for key in answer.keys {
        let quotas = quotas_text(&key);
        table.row(vec![
            key.id,
            key.name,
            key.grants.join(" "),
            key.rate_per_sec
                .map_or_else(|| "-".to_owned(), |rate| rate.to_string()),
            quotas,
            if key.source == "file" {
                "-".to_owned()
            } else {
                output::relative(key.created_at, now)
            },
            key.revoked_at
                .map_or_else(|| "-".to_owned(), |at| output::relative(at, now)),
            key.source,
        ]);
    }
    print_line(table.render().trim_end()).context("cannot print the keys")?;
    Ok(exit::SUCCESS)
}

/// `baton audit`.
pub async fn audit(context: &Context, args: AuditArgs) -> anyhow::Result<u8> {
    let answer = context.client.audit(args.before, Some(args.limit)).await?;
    if context.json {
        output::print_json(&answer)?;
        return Ok(exit::SUCCESS);
    }
    let mut table = Table::new(&["SEQ", "AT", "ACTOR", "ACTION", "TARGET", "DETAIL"]);
    for entry in answer.entries {
        table.row(vec![
            entry.seq.to_string(),
            entry.at.to_string(),
            entry.actor,
            entry.action,
            entry.target,
            entry.detail.unwrap_or_default(),
        ]);
    }
    print_line(table.render().trim_end())?;
    Ok(exit::SUCCESS)
}

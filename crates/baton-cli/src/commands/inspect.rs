//! `baton status`, `baton locks` and `baton history`: read-only views of the server's state.

use baton_proto::{HoldEnd, LockInfo, LockMode};
use jiff::Timestamp;
use serde::Serialize;

use super::Context;
use crate::args::{HistoryArgs, StatusArgs};
use crate::exit;
use crate::output::{self, Table, absolute, print_line, relative};

/// `baton status` without a lock, as JSON.
#[derive(Debug, Serialize)]
struct ServerStatus {
    /// The server that answered.
    url: String,
    /// Its `/healthz` answer.
    health: baton_proto::Health,
    /// How many locks it knows.
    locks: usize,
    /// How many of them have at least one holder.
    held: usize,
    /// How many of them have waiters.
    waited_on: usize,
}

/// `baton status [NAME]`.
pub async fn status(context: &Context, args: StatusArgs) -> anyhow::Result<u8> {
    match args.name {
        Some(name) => lock_status(context, &name).await,
        None => server_status(context).await,
    }
}

async fn server_status(context: &Context) -> anyhow::Result<u8> {
    let health = context.client.health().await?;
    let list = context.client.locks().await?;
    let status = ServerStatus {
        url: context.client.current_url().to_owned(),
        health,
        locks: list.locks.len(),
        held: list
            .locks
            .iter()
            .filter(|lock| !lock.holders.is_empty())
            .count(),
        waited_on: list
            .locks
            .iter()
            .filter(|lock| !lock.waiters.is_empty())
            .count(),
    };
    if context.json {
        output::print_json(&status)?;
        return Ok(exit::SUCCESS);
    }
    print_line(&format!(
        "server   {}\nstatus   {}\nversion  {}\nstore    {}\nlocks    {} ({} held, {} with waiters)",
        status.url,
        status.health.status,
        status.health.version,
        status.health.store,
        status.locks,
        status.held,
        status.waited_on
    ))?;
    Ok(exit::SUCCESS)
}

async fn lock_status(context: &Context, name: &str) -> anyhow::Result<u8> {
    let info = context.client.lock_info(name).await?;
    if context.json {
        output::print_json(&info)?;
    } else {
        print_line(&render_lock(&info, Timestamp::now()))?;
    }
    Ok(exit::SUCCESS)
}

/// One lock, for people.
fn render_lock(info: &LockInfo, now: Timestamp) -> String {
    let mut text = format!(
        "lock          {}\ncapacity      {}\nnewest token  {}\n",
        info.name, info.capacity, info.newest_token
    );
    if let Some(until) = info.delayed_until {
        text.push_str(&format!(
            "delayed until {} ({})\n",
            absolute(until),
            relative(until, now)
        ));
    }
    text.push_str(&format!(
        "\nholders ({}/{}):\n",
        info.holders.len(),
        info.capacity
    ));
    if info.holders.is_empty() {
        text.push_str("  none\n");
    } else {
        // The MODE and VALUE columns only when some holder is shared or published a value:
        // most locks have neither.
        let modes = info
            .holders
            .iter()
            .any(|holder| holder.mode == LockMode::Shared);
        let values = info.holders.iter().any(|holder| holder.value.is_some());
        let mut headers = vec!["TOKEN", "OWNER", "SINCE", "EXPIRES", "JOB"];
        if modes {
            headers.push("MODE");
        }
        if values {
            headers.push("VALUE");
        }
        let mut table = Table::new(&headers);
        for holder in &info.holders {
            let mut row = vec![
                holder.token.to_string(),
                holder.owner.clone(),
                relative(holder.since, now),
                relative(holder.expires_at, now),
                holder.job.clone().unwrap_or_else(|| "-".into()),
            ];
            if modes {
                row.push(holder.mode.as_str().to_owned());
            }
            if values {
                row.push(holder.value.clone().unwrap_or_else(|| "-".into()));
            }
            table.row(row);
        }
        text.push_str(&indent(&table.render()));
    }
    text.push_str(&format!("\nwaiters ({}):\n", info.waiters.len()));
    if info.waiters.is_empty() {
        text.push_str("  none\n");
    } else {
        let mut table = Table::new(&["POSITION", "OWNER", "SINCE", "JOB"]);
        for waiter in &info.waiters {
            table.row(vec![
                waiter.position.to_string(),
                waiter.owner.clone(),
                relative(waiter.since, now),
                waiter.job.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        text.push_str(&indent(&table.render()));
    }
    text.trim_end().to_owned()
}

/// Indents every line by two spaces.
fn indent(text: &str) -> String {
    text.lines().map(|line| format!("  {line}\n")).collect()
}

/// `baton locks`.
pub async fn locks(context: &Context) -> anyhow::Result<u8> {
    let list = context.client.locks().await?;
    if context.json {
        output::print_json(&list)?;
        return Ok(exit::SUCCESS);
    }
    if list.locks.is_empty() {
        eprintln!("no locks");
        return Ok(exit::SUCCESS);
    }
    let mut table = Table::new(&["NAME", "CAPACITY", "HOLDERS", "WAITERS", "NEWEST TOKEN"]);
    for lock in &list.locks {
        table.row(vec![
            lock.name.clone(),
            lock.capacity.to_string(),
            lock.holders.len().to_string(),
            lock.waiters.len().to_string(),
            lock.newest_token.to_string(),
        ]);
    }
    table.print()?;
    Ok(exit::SUCCESS)
}

/// `baton history LOCK`.
pub async fn history(context: &Context, args: HistoryArgs) -> anyhow::Result<u8> {
    let history = context.client.history(&args.lock, args.limit).await?;
    if context.json {
        output::print_json(&history)?;
        return Ok(exit::SUCCESS);
    }
    if history.entries.is_empty() {
        eprintln!("no past holds of {}", history.lock);
        return Ok(exit::SUCCESS);
    }
    let mut table = Table::new(&["TOKEN", "OWNER", "GRANTED", "ENDED", "HELD", "END"]);
    for entry in &history.entries {
        table.row(vec![
            entry.token.to_string(),
            entry.owner.clone(),
            absolute(entry.granted_at),
            absolute(entry.ended_at),
            output::duration(std::time::Duration::from_millis(entry.held_ms)),
            end_name(entry.end).to_owned(),
        ]);
    }
    table.print()?;
    Ok(exit::SUCCESS)
}

/// How a hold ended, as the wire spells it.
fn end_name(end: HoldEnd) -> &'static str {
    match end {
        HoldEnd::Released => "released",
        HoldEnd::Expired => "expired",
        HoldEnd::Revoked => "revoked",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::{Holder, Waiter};

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn a_lock_reads_as_holders_and_waiters() {
        let info = LockInfo {
            name: "deploy".into(),
            capacity: 2,
            holders: vec![Holder {
                mode: baton_proto::LockMode::Exclusive,
                value: None,
                owner: "h/u/1".into(),
                token: 41,
                since: at(940),
                expires_at: at(1020),
                job: None,
            }],
            waiters: vec![Waiter {
                mode: baton_proto::LockMode::Exclusive,
                position: 1,
                owner: "h/u/2".into(),
                since: at(990),
                job: None,
            }],
            delayed_until: None,
            newest_token: 41,
        };
        let text = render_lock(&info, at(1000));
        assert!(text.contains("holders (1/2):"), "{text}");
        assert!(text.contains("41     h/u/1  1m ago  in 20s"), "{text}");
        assert!(text.contains("1         h/u/2  10s ago"), "{text}");
    }
}

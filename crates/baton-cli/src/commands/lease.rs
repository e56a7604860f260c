//! `baton acquire`, `baton renew` and `baton release`: a critical section in a shell script.
//!
//! These commands hold nothing themselves: `acquire` exits as soon as the lease is granted and
//! prints its id; the script renews (for sections longer than the ttl) and releases with that id.

use std::time::Duration;

use baton_client::{LockOptions, owner_label};
use baton_proto::{Lease, LockMode};

use super::Context;
use super::keeper::Signals;
use crate::args::{AcquireArgs, PrintArg, ReleaseArgs, RenewArgs};
use crate::exit;
use crate::output::{self, print_line, shell_quote};

/// The default owner label: `HOST/USER/PID`, where PID is the parent's (the shell running the
/// script), because `baton acquire` itself exits right after acquiring.
fn default_owner() -> String {
    #[cfg(unix)]
    let pid = std::os::unix::process::parent_id();
    #[cfg(not(unix))]
    let pid = std::process::id();
    owner_label(pid)
}

/// `baton acquire`. A comma list of names takes every lock together ([`acquire_set`]).
pub async fn acquire(context: &Context, args: AcquireArgs) -> anyhow::Result<u8> {
    if args.name.contains(',') {
        return acquire_set(context, args).await;
    }
    baton_client::validate_lock_name(&args.name)?;
    let options = LockOptions {
        owner: args.owner.unwrap_or_else(default_owner),
        owner_key: args.owner_key,
        ttl: args.ttl,
        capacity: args.capacity,
        wait: if args.no_wait {
            Some(Duration::ZERO)
        } else {
            args.wait
        },
        request_id: args.request_id,
        value: args.value,
        mode: if args.shared {
            LockMode::Shared
        } else {
            LockMode::Exclusive
        },
        ..LockOptions::default()
    };
    // Listening from before the first request: a signal while queued gives the place up
    // before baton exits, so a release goes to the next live waiter at once.
    let mut signals = Signals::new()?;
    let waited = context
        .client
        .wait_for_lease_until(&args.name, &options, signals.next())
        .await?;
    let granted = match waited {
        Ok(granted) => granted,
        Err(signal) => {
            let message = format!(
                "signal {signal} while waiting for {}; left the queue",
                args.name
            );
            eprintln!("baton: {message}");
            let code = 128 + u8::try_from(signal).unwrap_or(0);
            if context.json {
                output::print_json_error("interrupted", &message, code, None);
            }
            return Ok(code);
        }
    };
    let lease = granted.lease;
    eprintln!(
        "acquired {}: token {}, expires in {}",
        lease.lock,
        lease.token,
        output::duration(Duration::from_millis(lease.expires_in_ms))
    );
    if context.json {
        output::print_json(&lease)?;
    } else {
        print_line(&printed(&lease, args.print))?;
    }
    Ok(exit::SUCCESS)
}

/// `baton acquire a,b`: every lock together (all granted in one step, or none), in one fair
/// order with every other request. Prints each lease as `--print` says, one per line in the
/// order given (`--print env` prints the first lease's variables plus `BATON_LOCKS`,
/// `BATON_LEASE_IDS` and `BATON_FENCING_TOKENS`); `--json` prints `{"leases": [...]}`.
async fn acquire_set(context: &Context, args: AcquireArgs) -> anyhow::Result<u8> {
    if args.owner_key.is_some() || args.capacity.is_some() {
        return Ok(context.usage_error(
            "baton acquire",
            "--owner-key and --capacity apply to one lock, not to a comma list of locks",
        ));
    }
    let names: Vec<String> = args.name.split(',').map(str::to_owned).collect();
    for name in &names {
        baton_client::validate_lock_name(name)?;
    }
    let options = LockOptions {
        owner: args.owner.unwrap_or_else(default_owner),
        ttl: args.ttl,
        wait: if args.no_wait {
            Some(Duration::ZERO)
        } else {
            args.wait
        },
        request_id: args.request_id,
        value: args.value,
        mode: if args.shared {
            LockMode::Shared
        } else {
            LockMode::Exclusive
        },
        ..LockOptions::default()
    };
    let mut signals = Signals::new()?;
    let waited = context
        .client
        .wait_for_lease_set_until(&names, &options, signals.next())
        .await?;
    let leases: Vec<Lease> = match waited {
        Ok(leases) => leases.into_iter().map(|granted| granted.lease).collect(),
        Err(signal) => {
            let message = format!(
                "signal {signal} while waiting for {}; left the queues",
                args.name
            );
            eprintln!("baton: {message}");
            let code = 128 + u8::try_from(signal).unwrap_or(0);
            if context.json {
                output::print_json_error("interrupted", &message, code, None);
            }
            return Ok(code);
        }
    };
    for lease in &leases {
        eprintln!(
            "acquired {}: token {}, expires in {}",
            lease.lock,
            lease.token,
            output::duration(Duration::from_millis(lease.expires_in_ms))
        );
    }
    if context.json {
        output::print_json(&serde_json::json!({ "leases": leases }))?;
        return Ok(exit::SUCCESS);
    }
    match (args.print, leases.first()) {
        (PrintArg::Env, Some(first)) => {
            let join = |field: fn(&Lease) -> String| {
                leases.iter().map(field).collect::<Vec<_>>().join(",")
            };
            print_line(&format!(
                "{}\nBATON_LOCKS={}\nBATON_LEASE_IDS={}\nBATON_FENCING_TOKENS={}",
                printed(first, PrintArg::Env),
                shell_quote(&join(|lease| lease.lock.clone())),
                shell_quote(&join(|lease| lease.id.clone())),
                shell_quote(&join(|lease| format!("{}={}", lease.lock, lease.token))),
            ))?;
        }
        (print, _) => {
            for lease in &leases {
                print_line(&printed(lease, print))?;
            }
        }
    }
    Ok(exit::SUCCESS)
}

/// What `--print` puts on stdout.
fn printed(lease: &Lease, print: PrintArg) -> String {
    match print {
        PrintArg::Id => lease.id.clone(),
        PrintArg::Token => lease.token.to_string(),
        PrintArg::Env => format!(
            "BATON_LEASE_ID={}\nBATON_FENCING_TOKEN={}\nBATON_LOCK={}",
            shell_quote(&lease.id),
            lease.token,
            shell_quote(&lease.lock)
        ),
    }
}

/// `baton renew`.
pub async fn renew(context: &Context, args: RenewArgs) -> anyhow::Result<u8> {
    let granted = context
        .client
        .renew_with_value(&args.lease_id, args.ttl, args.value)
        .await?;
    let lease = granted.lease;
    eprintln!(
        "renewed {}: token {}, expires in {}",
        lease.lock,
        lease.token,
        output::duration(Duration::from_millis(lease.expires_in_ms))
    );
    if context.json {
        output::print_json(&lease)?;
    }
    Ok(exit::SUCCESS)
}

/// `baton release`. A lease that had already been released is fine (a retried release); one
/// that expired or was revoked exits [`exit::LEASE_LOST`]: the section it guarded may have run
/// unprotected.
pub async fn release(context: &Context, args: ReleaseArgs) -> anyhow::Result<u8> {
    let answer = context.client.release(&args.lease_id).await?;
    if context.json {
        output::print_json(&answer)?;
    }
    if answer.released {
        if !context.json {
            eprintln!("released");
        }
        return Ok(exit::SUCCESS);
    }
    let reason = answer.reason.as_deref().unwrap_or("unknown");
    match reason {
        "already_released" => {
            eprintln!("baton: the lease was already released");
            Ok(exit::SUCCESS)
        }
        "revoked" => {
            eprintln!("baton: the lease had been revoked before this release (revoked)");
            Ok(exit::LEASE_LOST)
        }
        other => {
            eprintln!("baton: the lease had already ended: {other} (lease_lost)");
            Ok(exit::LEASE_LOST)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease() -> Lease {
        Lease {
            mode: LockMode::Exclusive,
            value: None,
            id: "L1".into(),
            lock: "team-a/deploy".into(),
            owner: "o".into(),
            owner_key: None,
            token: 42,
            ttl_ms: 30_000,
            granted_at: jiff::Timestamp::UNIX_EPOCH,
            expires_at: jiff::Timestamp::UNIX_EPOCH,
            expires_in_ms: 30_000,
        }
    }

    #[test]
    fn print_modes() {
        assert_eq!(printed(&lease(), PrintArg::Id), "L1");
        assert_eq!(printed(&lease(), PrintArg::Token), "42");
        assert_eq!(
            printed(&lease(), PrintArg::Env),
            "BATON_LEASE_ID='L1'\nBATON_FENCING_TOKEN=42\nBATON_LOCK='team-a/deploy'"
        );
    }

    #[test]
    fn the_default_owner_names_the_calling_process() {
        let owner = default_owner();
        assert_eq!(owner.split('/').count(), 3, "{owner}");
    }
}

//! `baton fence` and `baton revoke`: checking a fencing token, and ending someone's lease.

use super::Context;
use crate::args::TokenArgs;
use crate::exit;
use crate::output::{self, print_line};

/// `baton fence LOCK TOKEN`: exit 0 when the token is the newest seen for the lock, 1 when a
/// newer one was seen (the holder of TOKEN woke up late and must not touch the resource).
pub async fn fence(context: &Context, args: TokenArgs) -> anyhow::Result<u8> {
    let answer = context.client.fence(&args.lock, args.token).await?;
    if context.json {
        output::print_json(&answer)?;
    } else if answer.accepted {
        print_line(&format!(
            "accepted: token {} is the newest of {}",
            args.token, args.lock
        ))?;
    } else {
        print_line(&format!(
            "refused: token {} is stale; {} has seen token {}",
            args.token, args.lock, answer.newest_token
        ))?;
    }
    Ok(if answer.accepted {
        exit::SUCCESS
    } else {
        exit::REFUSED
    })
}

/// `baton revoke LOCK TOKEN`.
pub async fn revoke(context: &Context, args: TokenArgs) -> anyhow::Result<u8> {
    let answer = context.client.revoke(&args.lock, args.token).await?;
    if context.json {
        output::print_json(&answer)?;
    } else {
        print_line(&format!(
            "revoked token {} of {} (held by {})",
            answer.holder.token, args.lock, answer.holder.owner
        ))?;
    }
    Ok(exit::SUCCESS)
}

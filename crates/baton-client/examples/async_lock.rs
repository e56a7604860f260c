//! A critical section under a lock, with the async client.
//!
//! Start a server (`baton server`), then run
//! `cargo run -p baton-client --example async_lock`; `BATON_URL`, `BATON_API_KEY` and
//! `BATON_CA_FILE` say where it is and how to reach it. Run two at once to see the second one
//! queue behind the first.

use std::time::Duration;

use baton_client::{Client, LockOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::from_env()?;
    let options = LockOptions {
        ttl: Some(Duration::from_secs(10)),
        wait: Some(Duration::from_secs(120)),
        ..LockOptions::default()
    };
    let guard = client.lock("examples/critical-section", options).await?;
    println!("holding the lock with fencing token {}", guard.token());
    // The guard renews the lease in the background; stop the work if it is lost anyway.
    tokio::select! {
        reason = guard.lost() => {
            eprintln!("the lock was lost ({reason}); stopping");
            return Err(reason.to_string().into());
        }
        () = critical_section(guard.token()) => {}
    }
    let answer = guard.release().await?;
    println!("released: {}", answer.released);
    Ok(())
}

/// The work only one process may do at a time. Longer than the ttl, so the guard renews.
async fn critical_section(token: u64) {
    for step in 1..=3 {
        println!("step {step} of 3 (token {token})");
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

//! A critical section under a lock, with the blocking client (no async in sight).
//!
//! Start a server (`baton server`), then run
//! `cargo run -p baton-client --example blocking_lock`; `BATON_URL`, `BATON_API_KEY` and
//! `BATON_CA_FILE` say where it is and how to reach it. Run two at once to see the second one
//! queue behind the first.

use std::time::Duration;

use baton_client::LockOptions;
use baton_client::blocking::Client;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::from_env()?;
    let options = LockOptions {
        ttl: Some(Duration::from_secs(10)),
        wait: Some(Duration::from_secs(120)),
        ..LockOptions::default()
    };
    let guard = client.lock("examples/critical-section", options)?;
    println!("holding the lock with fencing token {}", guard.token());
    // The guard renews the lease on the client's own thread while this one works; the work
    // checks between steps that the lease still holds. It is longer than the ttl.
    for step in 1..=3 {
        if let Some(reason) = guard.status().lost_reason() {
            eprintln!("the lock was lost ({reason}); stopping");
            return Err(reason.to_string().into());
        }
        println!("step {step} of 3 (token {})", guard.token());
        std::thread::sleep(Duration::from_secs(5));
    }
    // Dropping the guard would release it too; release() shows the server's answer.
    let answer = guard.release()?;
    println!("released: {}", answer.released);
    Ok(())
}

//! The conformance suite against the in-memory store (the engine over [`MemoryPersister`]).
//! It is not durable, so the restart cases pass without running; `durable.rs` runs them.

#![allow(clippy::expect_used)]

use std::sync::Arc;

use async_trait::async_trait;
use baton_store::conformance::{self, Backend};
use baton_store::{Engine, EngineOptions, ManualClock, MemoryPersister, Store};

/// The in-memory store, with or without its own expiry timer.
struct Memory {
    run_timer: bool,
}

#[async_trait]
impl Backend for Memory {
    async fn open(&self, _key: &str, clock: Arc<ManualClock>) -> Arc<dyn Store> {
        let options = EngineOptions {
            config: conformance::config(),
            run_timer: self.run_timer,
            ..EngineOptions::default()
        };
        Arc::new(
            Engine::open(Box::new(MemoryPersister::new()), clock, options)
                .expect("open the memory store"),
        )
    }

    fn durable(&self) -> bool {
        false
    }
}

baton_store::conformance_tests!(Memory { run_timer: false });

/// The whole suite in one run, with the engine's timer running off the manual clock: the cases
/// must not depend on whether a backend ticks by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_with_the_timer_running() {
    conformance::run_all(&Memory { run_timer: true }).await;
}

//! Summaries of raw samples: latency percentiles, and the FIFO and fairness figures of a
//! contended run.
//!
//! Every time is in nanoseconds since one shared [`std::time::Instant`] origin of the bench
//! process, so samples taken by different client tasks compare directly.

/// One grant of the contended lock, as the client that received it saw it.
#[derive(Debug, Clone, Copy)]
pub struct Grant {
    /// Which client task received the grant.
    pub client: usize,
    /// When that client started waiting: just before it sent its acquire (first attempt).
    pub enqueued_ns: u64,
    /// When the client received the grant.
    pub granted_ns: u64,
    /// When the client sent its release.
    pub release_sent_ns: u64,
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Largest sample.
    pub max_us: f64,
}

/// Percentiles of `samples` (nanoseconds) by the nearest-rank method; zeros when empty.
pub fn percentiles(samples: &mut [u64]) -> Percentiles {
    if samples.is_empty() {
        return Percentiles::default();
    }
    samples.sort_unstable();
    let rank = |q: f64| {
        let idx = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[idx] as f64 / 1_000.0
    };
    Percentiles {
        p50_us: rank(0.50),
        p99_us: rank(0.99),
        max_us: samples[samples.len() - 1] as f64 / 1_000.0,
    }
}

/// FIFO order and fairness of the grants of one lock.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Fairness {
    /// Pairs of grants served against arrival order: the later-granted waiter had started
    /// waiting more than the tolerance before the earlier-granted one.
    pub inversions: u64,
    /// The same count with no tolerance (includes races of requests sent microseconds apart,
    /// whose arrival order at the server the client cannot know).
    pub inversions_strict: u64,
    /// Fraction of grants for which no waiter that had started waiting earlier (by more than
    /// the tolerance) was granted later.
    pub in_order_fraction: f64,
    /// Jain's fairness index over grants per client: 1.0 when every client got as many.
    pub jain_index: f64,
    /// Fewest grants any client received.
    pub min_grants: u64,
    /// Most grants any client received.
    pub max_grants: u64,
}

/// Computes [`Fairness`] of `grants` (any order) among `clients` clients, counting an
/// inversion only when the enqueue instants differ by more than `tolerance_ns`.
pub fn fairness(grants: &[Grant], clients: usize, tolerance_ns: u64) -> Fairness {
    let mut per_client = vec![0u64; clients];
    for g in grants {
        if let Some(n) = per_client.get_mut(g.client) {
            *n += 1;
        }
    }
    let sum: f64 = per_client.iter().map(|&n| n as f64).sum();
    let sum_sq: f64 = per_client.iter().map(|&n| (n as f64) * (n as f64)).sum();
    let jain_index = if sum_sq > 0.0 {
        sum * sum / (clients as f64 * sum_sq)
    } else {
        0.0
    };

    let mut by_grant: Vec<Grant> = grants.to_vec();
    by_grant.sort_by_key(|g| g.granted_ns);
    let enq: Vec<u64> = by_grant.iter().map(|g| g.enqueued_ns).collect();

    // In order: nobody granted later had started waiting (tolerance) earlier.
    let mut in_order = 0usize;
    let mut suffix_min = u64::MAX;
    for &e in enq.iter().rev() {
        if suffix_min.saturating_add(tolerance_ns) >= e {
            in_order += 1;
        }
        suffix_min = suffix_min.min(e);
    }

    Fairness {
        inversions: count_inversions(&enq, tolerance_ns),
        inversions_strict: count_inversions(&enq, 0),
        in_order_fraction: if enq.is_empty() {
            1.0
        } else {
            in_order as f64 / enq.len() as f64
        },
        jain_index,
        min_grants: per_client.iter().copied().min().unwrap_or(0),
        max_grants: per_client.iter().copied().max().unwrap_or(0),
    }
}

/// Pairs `i < j` (in grant order) with `enq[j] + tolerance < enq[i]`, in O(n log n) with a
/// Fenwick tree over the sorted enqueue instants.
fn count_inversions(enq: &[u64], tolerance: u64) -> u64 {
    let mut sorted: Vec<u64> = enq.to_vec();
    sorted.sort_unstable();
    let mut tree = vec![0u64; sorted.len() + 1];
    let mut total = 0u64;
    // Walk from the last grant back: the tree holds the enqueue instants of later grants.
    for &e in enq.iter().rev() {
        // Later grants whose enqueue instant is < e - tolerance.
        if let Some(limit) = e.checked_sub(tolerance) {
            let below = sorted.partition_point(|&x| x < limit);
            let mut i = below;
            while i > 0 {
                total += tree[i];
                i &= i - 1;
            }
        }
        let mut i = sorted.partition_point(|&x| x < e) + 1;
        while i < tree.len() {
            tree[i] += 1;
            i += i & i.wrapping_neg();
        }
    }
    total
}

/// Handoff latencies (nanoseconds): for each grant whose receiver was already waiting when the
/// previous holder sent its release, the time from that release being sent to this grant being
/// received. Grants to a client that arrived at an idle lock are not handoffs and are skipped.
pub fn handoff_latencies(grants: &[Grant]) -> Vec<u64> {
    let mut by_grant: Vec<&Grant> = grants.iter().collect();
    by_grant.sort_by_key(|g| g.granted_ns);
    by_grant
        .windows(2)
        .filter_map(|w| {
            let (prev, next) = (w[0], w[1]);
            (next.enqueued_ns <= prev.release_sent_ns && next.granted_ns >= prev.release_sent_ns)
                .then(|| next.granted_ns - prev.release_sent_ns)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(client: usize, enq: u64, granted: u64) -> Grant {
        Grant {
            client,
            enqueued_ns: enq,
            granted_ns: granted,
            release_sent_ns: granted + 1,
        }
    }

    #[test]
    fn fifo_grants_have_no_inversions() {
        let grants: Vec<Grant> = (0..100)
            .map(|i| g(i % 4, i as u64 * 10, i as u64 * 10 + 5))
            .collect();
        let f = fairness(&grants, 4, 0);
        assert_eq!(f.inversions, 0);
        assert_eq!(f.in_order_fraction, 1.0);
        assert!((f.jain_index - 1.0).abs() < 1e-9);
    }

    #[test]
    fn inversions_count_pairs_and_respect_tolerance() {
        // Enqueued at 0, 100, 200 but granted in order 2, 1, 0: three inverted pairs.
        let grants = vec![g(0, 0, 1_000), g(1, 100, 900), g(2, 200, 800)];
        let f = fairness(&grants, 3, 0);
        assert_eq!(f.inversions, 3);
        assert_eq!(f.inversions_strict, 3);
        assert!((f.in_order_fraction - 1.0 / 3.0).abs() < 1e-9);
        // With 150 ns of tolerance only (0 vs 200) counts.
        let f = fairness(&grants, 3, 150);
        assert_eq!(f.inversions, 1);
        assert_eq!(f.inversions_strict, 3);
    }

    #[test]
    fn handoffs_skip_idle_grants() {
        let grants = vec![
            g(0, 0, 10),    // releases at 11
            g(1, 5, 20),    // was waiting: handoff 9 ns
            g(0, 100, 110), // arrived at an idle lock
        ];
        assert_eq!(handoff_latencies(&grants), vec![9]);
    }

    #[test]
    fn percentiles_nearest_rank() {
        let mut v: Vec<u64> = (1..=100).map(|x| x * 1_000).collect();
        let p = percentiles(&mut v);
        assert_eq!(p.p50_us, 50.0);
        assert_eq!(p.p99_us, 99.0);
        assert_eq!(p.max_us, 100.0);
    }
}

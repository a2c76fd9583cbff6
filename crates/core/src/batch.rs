//! The batching policy as a pure state machine.
//!
//! The worker gathers preprocessed images from many messages into one model
//! batch. Each item weighs what it brings (a job of several images weighs
//! its images). A batch closes when the first of these happens:
//! - its items weigh `max_items` or more (so one item heavier than that makes a
//!   batch of its own, and a batch can exceed `max_items` by its last item);
//! - `max_wait_ms` has passed since its first item arrived (latency bound when
//!   the queue is quiet);
//! - the earliest lease deadline among its items is `lease_margin_ms` away
//!   (never sit on a job until its lease runs out: its message would become
//!   visible to another worker).
//!
//! Time is plain epoch milliseconds passed in by the caller, so the machine is
//! deterministic; the async driver calls [`Batcher::poll`] at
//! [`Batcher::next_deadline`].

/// When to close a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Weight at which a batch closes (≥ 1): items, when each weighs one.
    pub max_items: usize,
    /// Longest time the first item waits for company.
    pub max_wait_ms: u64,
    /// Close this long before the earliest lease deadline in the batch.
    pub lease_margin_ms: u64,
}

/// An open batch and the times that bound it.
#[derive(Debug)]
pub struct Batcher<T> {
    policy: Policy,
    items: Vec<T>,
    /// What the items weigh together.
    weight: usize,
    /// When the first item arrived; `None` while empty.
    opened_ms: Option<u64>,
    /// Earliest lease deadline among the items.
    earliest_lease_ms: u64,
}

impl<T> Batcher<T> {
    /// An empty batcher. `max_items` of 0 is treated as 1.
    pub fn new(policy: Policy) -> Self {
        let policy = Policy { max_items: policy.max_items.max(1), ..policy };
        Self {
            policy,
            items: Vec::with_capacity(policy.max_items),
            weight: 0,
            opened_ms: None,
            earliest_lease_ms: u64::MAX,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Adds an item of weight one whose lease ends at `lease_deadline_ms`.
    /// Returns a batch if this item filled it or made it due.
    pub fn push(&mut self, item: T, lease_deadline_ms: u64, now_ms: u64) -> Option<Vec<T>> {
        self.push_weighted(item, 1, lease_deadline_ms, now_ms)
    }

    /// [`Batcher::push`] for an item of weight `weight`.
    pub fn push_weighted(&mut self, item: T, weight: usize, lease_deadline_ms: u64, now_ms: u64) -> Option<Vec<T>> {
        if self.items.is_empty() {
            self.opened_ms = Some(now_ms);
        }
        self.items.push(item);
        self.weight += weight;
        self.earliest_lease_ms = self.earliest_lease_ms.min(lease_deadline_ms);
        if self.weight >= self.policy.max_items { Some(self.take()) } else { self.poll(now_ms) }
    }

    /// When the open batch must close, if anything is waiting.
    pub fn next_deadline(&self) -> Option<u64> {
        let opened = self.opened_ms?;
        let by_wait = opened.saturating_add(self.policy.max_wait_ms);
        let by_lease = self.earliest_lease_ms.saturating_sub(self.policy.lease_margin_ms);
        Some(by_wait.min(by_lease))
    }

    /// Returns the batch if it is due at `now_ms`.
    pub fn poll(&mut self, now_ms: u64) -> Option<Vec<T>> {
        match self.next_deadline() {
            Some(due) if now_ms >= due => Some(self.take()),
            _ => None,
        }
    }

    /// Returns whatever is waiting (shutdown).
    pub fn flush(&mut self) -> Option<Vec<T>> {
        (!self.items.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> Vec<T> {
        self.opened_ms = None;
        self.weight = 0;
        self.earliest_lease_ms = u64::MAX;
        std::mem::replace(&mut self.items, Vec::with_capacity(self.policy.max_items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const P: Policy = Policy { max_items: 4, max_wait_ms: 50, lease_margin_ms: 1_000 };

    #[test]
    fn closes_when_full() {
        let mut b = Batcher::new(P);
        for i in 0..3 {
            assert_eq!(b.push(i, 1_000_000, 0), None);
        }
        assert_eq!(b.push(3, 1_000_000, 0), Some(vec![0, 1, 2, 3]));
        assert!(b.is_empty());
        assert_eq!(b.next_deadline(), None);
    }

    #[test]
    fn closes_after_max_wait_from_the_first_item() {
        let mut b = Batcher::new(P);
        b.push('a', 1_000_000, 100);
        b.push('b', 1_000_000, 140);
        assert_eq!(b.next_deadline(), Some(150));
        assert_eq!(b.poll(149), None);
        assert_eq!(b.poll(150), Some(vec!['a', 'b']));
    }

    #[test]
    fn closes_before_the_earliest_lease_runs_out() {
        let mut b = Batcher::new(P);
        b.push('a', 1_030, 0);
        assert_eq!(b.next_deadline(), Some(30), "lease 1030 - margin 1000 comes before wait 50");
        // An item that arrives with its lease nearly gone closes the batch at once.
        let mut b = Batcher::new(P);
        b.push('x', 1_000_000, 0);
        assert_eq!(b.push('y', 900, 10), Some(vec!['x', 'y']));
    }

    #[test]
    fn weighted_items_close_a_batch_by_their_weight() {
        let mut b = Batcher::new(P);
        assert_eq!(b.push_weighted('a', 2, 1_000_000, 0), None);
        assert_eq!(b.push_weighted('b', 1, 1_000_000, 0), None);
        assert_eq!(b.push_weighted('c', 3, 1_000_000, 0), Some(vec!['a', 'b', 'c']), "weight 6 ≥ 4");
        assert_eq!(b.push_weighted('d', 9, 1_000_000, 0), Some(vec!['d']), "heavier than a batch: alone");
        assert_eq!(b.push_weighted('e', 3, 1_000_000, 0), None, "the weight starts again after a batch");
    }

    #[test]
    fn zero_max_items_means_one() {
        let mut b = Batcher::new(Policy { max_items: 0, ..P });
        assert_eq!(b.push(7, 1_000_000, 0), Some(vec![7]));
    }

    #[derive(Debug, Clone)]
    enum Ev {
        /// An item arrives after `gap` ms with a lease of `lease` ms.
        Arrive { gap: u64, lease: u64 },
        /// Time passes.
        Wait(u64),
    }

    fn ev() -> impl Strategy<Value = Ev> {
        prop_oneof![
            (0..40u64, 0..3_000u64).prop_map(|(gap, lease)| Ev::Arrive { gap, lease }),
            (0..200u64).prop_map(Ev::Wait),
        ]
    }

    /// Polls at every deadline up to `to`, as the worker's driver does;
    /// returns the new time.
    fn advance(b: &mut Batcher<usize>, now: u64, to: u64, out: &mut Vec<(usize, u64)>) -> u64 {
        while let Some(due) = b.next_deadline() {
            if due > to {
                break;
            }
            let at = due.max(now);
            let batch = b.poll(at).expect("due at its deadline");
            assert!(!batch.is_empty() && batch.len() <= b.policy().max_items);
            out.extend(batch.into_iter().map(|id| (id, at)));
        }
        to
    }

    proptest! {
        /// A driver that polls at every deadline, as the worker does: no batch
        /// exceeds max_items, every item comes out exactly once and in order,
        /// and no item is held past its bound (max_wait from its batch's first
        /// item, or its lease minus the margin, whichever is first).
        #[test]
        fn no_item_is_lost_duplicated_reordered_or_held_too_long(
            max_items in 1..8usize,
            max_wait in 0..100u64,
            margin in 0..500u64,
            events in proptest::collection::vec(ev(), 0..80),
        ) {
            let policy = Policy { max_items, max_wait_ms: max_wait, lease_margin_ms: margin };
            let mut b = Batcher::new(policy);
            let mut now = 0u64;
            let mut next_id = 0usize;
            // id -> (arrival, lease deadline)
            let mut meta: Vec<(u64, u64)> = Vec::new();
            let mut out: Vec<(usize, u64)> = Vec::new(); // (id, emitted at)
            for e in events {
                match e {
                    Ev::Wait(d) => now = advance(&mut b, now, now + d, &mut out),
                    Ev::Arrive { gap, lease } => {
                        now = advance(&mut b, now, now + gap, &mut out);
                        let id = next_id;
                        next_id += 1;
                        meta.push((now, now + lease));
                        if let Some(batch) = b.push(id, now + lease, now) { out.extend(batch.into_iter().map(|i| (i, now))); }
                    }
                }
            }
            advance(&mut b, now, u64::MAX / 2, &mut out);
            prop_assert!(b.is_empty());
            let ids: Vec<usize> = out.iter().map(|(id, _)| *id).collect();
            prop_assert_eq!(ids, (0..next_id).collect::<Vec<_>>());
            prop_assert!(out.len() == next_id);
            for (id, at) in out {
                let (arrived, lease) = meta[id];
                let lease_bound = lease.saturating_sub(margin).max(arrived);
                prop_assert!(at <= lease_bound.max(arrived), "item {} held past its lease bound", id);
                prop_assert!(at <= arrived + max_wait, "item {} held past max_wait", id);
            }
        }
    }
}

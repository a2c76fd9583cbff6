//! The dedup/lease protocol as pure transitions.
//!
//! One [`OutcomeRecord`] per job id. A worker must **claim** a job before
//! working on it, **renew** the lease while it works, and **finish** it with
//! the final outcome (or **release** it on shutdown). Every write after the
//! claim is *fenced* by `(owner, attempt)`: `attempt` grows by one with every
//! successful claim, so a worker whose lease was taken over can never
//! overwrite the new owner's record, even if it wakes up later believing it
//! still holds the lease.
//!
//! These functions are the specification. The DynamoDB adapter in
//! `scorefleet-aws` encodes each one as a single conditional write, and its
//! integration tests check it against the same cases as the tests here.
//!
//! **Finish-only mode** skips the claim: a job's only write is
//! [`finish_unclaimed`], which records the outcome if no live terminal
//! outcome exists and no live claim holds the job, and otherwise names what
//! stands ([`Unclaimed`]). It still stores exactly one outcome per job: the
//! write is conditional on the state it checks. What it gives up is the
//! guarantee that a job is *computed* once: two copies in flight at once
//! (at-least-once delivery) are both computed, and the second finish loses
//! and re-sends the stored result. Its record carries an attempt one above
//! the record it replaced, so a claim-mode worker whose lease it replaced
//! (ended) is fenced, and mixed fleets stay safe. [`Fence::unclaimed`] is
//! the fence such a job travels with: attempt 0, which no claim produces.
//!
//! Timestamps are in code, not only in TTL: DynamoDB deletes expired items
//! lazily (up to days later), so a record whose `expires_at_s` has passed is
//! treated as absent.

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Claimed by `owner` until `lease_until_ms`.
    InProgress,
    /// Scored; `result` holds the result message.
    Completed,
    /// Failed for good; `result` holds the error result message.
    Failed,
}

impl Status {
    /// The value stored in the table.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::InProgress => "IN_PROGRESS",
            Status::Completed => "COMPLETED",
            Status::Failed => "FAILED",
        }
    }

    /// Parses a stored value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "IN_PROGRESS" => Some(Status::InProgress),
            "COMPLETED" => Some(Status::Completed),
            "FAILED" => Some(Status::Failed),
            _ => None,
        }
    }
}

/// The final states a job can be finished in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Terminal {
    /// Scored.
    Completed,
    /// Failed for good.
    Failed,
}

impl From<Terminal> for Status {
    fn from(t: Terminal) -> Self {
        match t {
            Terminal::Completed => Status::Completed,
            Terminal::Failed => Status::Failed,
        }
    }
}

/// One job's record in the dedup table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomeRecord {
    /// Where the job stands.
    pub status: Status,
    /// The worker that holds or last held the lease.
    pub owner: String,
    /// Fencing token: incremented by every successful claim.
    pub attempt: u64,
    /// Lease end (epoch ms). Meaningful while `InProgress`; 0 once released.
    pub lease_until_ms: u64,
    /// The result message JSON, once finished.
    pub result: Option<String>,
    /// The run the job belongs to.
    pub run_id: String,
    /// TTL (epoch seconds): past this the record counts as absent.
    pub expires_at_s: u64,
}

/// Proof of holding a lease: what every fenced write must present.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fence {
    /// The claiming worker.
    pub owner: String,
    /// The attempt number the claim produced.
    pub attempt: u64,
}

impl Fence {
    /// The fence of a job that was not claimed (finish-only mode): attempt 0,
    /// which no claim produces (the first claim makes attempt 1). There is no
    /// lease to renew or release.
    pub fn unclaimed(owner: &str) -> Self {
        Fence { owner: owner.to_owned(), attempt: 0 }
    }

    /// Whether this fence came from a claim (and so holds a lease).
    pub fn is_claim(&self) -> bool {
        self.attempt > 0
    }
}

/// Why an unclaimed finish was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unclaimed {
    /// An outcome is stored already: re-send it, drop ours.
    Done(OutcomeRecord),
    /// A claim-mode worker's live lease holds the job: leave the message.
    Busy {
        /// The holder.
        owner: String,
        /// When its lease ends.
        lease_until_ms: u64,
    },
}

/// What a finish-only worker does with a job, from its record as the batched
/// read found it (possibly stale: the finish's condition decides for good).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// No outcome and no live lease: compute it.
    Compute,
    /// Already finished: re-send the stored result, do not compute.
    Done(OutcomeRecord),
    /// A claim-mode worker holds a live lease: leave the message.
    Busy,
}

/// The decision on a job from its looked-up record.
pub fn lookup(cur: Option<&OutcomeRecord>, now_ms: u64) -> Lookup {
    match live(cur, now_ms) {
        None => Lookup::Compute,
        Some(r) => match r.status {
            Status::Completed | Status::Failed => Lookup::Done(r.clone()),
            Status::InProgress if r.lease_until_ms > now_ms => Lookup::Busy,
            Status::InProgress => Lookup::Compute,
        },
    }
}

/// A finish without a claim.
#[derive(Debug, Clone)]
pub struct UnclaimedFinish<'a> {
    /// The finishing worker.
    pub owner: &'a str,
    /// The job's run.
    pub run_id: &'a str,
    /// The outcome.
    pub terminal: Terminal,
    /// The result message JSON.
    pub result_json: &'a str,
    /// Current time, epoch ms.
    pub now_ms: u64,
}

/// Finish-only: the outcome is written if the record is absent, past its TTL,
/// or `InProgress` with an ended lease (the same states a claim may take);
/// the new record's attempt is one above the old one's, and it lives `ttl_s`
/// seconds.
pub fn finish_unclaimed(
    cur: Option<&OutcomeRecord>,
    req: &UnclaimedFinish<'_>,
    ttl_s: u64,
) -> Result<OutcomeRecord, Unclaimed> {
    let attempt = match live(cur, req.now_ms) {
        None => cur.map_or(0, |r| r.attempt) + 1,
        Some(r) => match r.status {
            Status::Completed | Status::Failed => return Err(Unclaimed::Done(r.clone())),
            Status::InProgress if r.lease_until_ms > req.now_ms => {
                return Err(Unclaimed::Busy { owner: r.owner.clone(), lease_until_ms: r.lease_until_ms });
            }
            Status::InProgress => r.attempt + 1,
        },
    };
    Ok(OutcomeRecord {
        status: req.terminal.into(),
        owner: req.owner.to_owned(),
        attempt,
        lease_until_ms: 0,
        result: Some(req.result_json.to_owned()),
        run_id: req.run_id.to_owned(),
        expires_at_s: req.now_ms / 1000 + ttl_s,
    })
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// No live record existed: the lease is ours.
    Claimed(Fence),
    /// A crashed or stalled worker's lease had expired: it is ours now.
    TakenOver {
        /// Our new lease.
        fence: Fence,
        /// Whose lease we took over.
        previous_owner: String,
    },
    /// Another live lease holds the job (possibly our own, from an earlier
    /// delivery still in flight): leave the message alone.
    Busy {
        /// The holder.
        owner: String,
        /// When its lease ends.
        lease_until_ms: u64,
    },
    /// Already finished: do not recompute; re-send the stored result.
    Done(OutcomeRecord),
}

/// Why a fenced write was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// No live record (never claimed, or expired by TTL).
    #[error("no live record for this job")]
    NotFound,
    /// The job was finished already (by us or by a taker-over).
    #[error("the job is already finished")]
    AlreadyFinished,
    /// Someone else holds the lease now: we are a stale owner.
    #[error("lease lost to {owner} (attempt {attempt})")]
    Fenced {
        /// The current holder.
        owner: String,
        /// The current attempt.
        attempt: u64,
    },
}

/// A claim request.
#[derive(Debug, Clone)]
pub struct ClaimRequest<'a> {
    /// The claiming worker.
    pub owner: &'a str,
    /// The job's run.
    pub run_id: &'a str,
    /// Current time, epoch ms.
    pub now_ms: u64,
    /// Lease length.
    pub lease_ms: u64,
    /// TTL of the record, in seconds from now.
    pub ttl_s: u64,
}

/// Whether a record still counts at `now_ms`: one past its TTL
/// (`expires_at_s`) is treated as absent, whether or not DynamoDB has
/// deleted it yet. The adapters filter what they read with this rule.
pub fn is_live(r: &OutcomeRecord, now_ms: u64) -> bool {
    r.expires_at_s.saturating_mul(1000) > now_ms
}

fn live(cur: Option<&OutcomeRecord>, now_ms: u64) -> Option<&OutcomeRecord> {
    cur.filter(|r| is_live(r, now_ms))
}

/// Claim: succeeds on an absent (or TTL-expired) record, or on an
/// `InProgress` record whose lease has ended. Returns the new record to
/// write, if any.
pub fn claim(cur: Option<&OutcomeRecord>, req: &ClaimRequest<'_>) -> (ClaimOutcome, Option<OutcomeRecord>) {
    let next_attempt = cur.map_or(0, |r| r.attempt) + 1;
    let fresh = |attempt| OutcomeRecord {
        status: Status::InProgress,
        owner: req.owner.to_owned(),
        attempt,
        lease_until_ms: req.now_ms + req.lease_ms,
        result: None,
        run_id: req.run_id.to_owned(),
        expires_at_s: req.now_ms / 1000 + req.ttl_s,
    };
    let fence = Fence { owner: req.owner.to_owned(), attempt: next_attempt };
    match live(cur, req.now_ms) {
        None => (ClaimOutcome::Claimed(fence), Some(fresh(next_attempt))),
        Some(r) => match r.status {
            Status::Completed | Status::Failed => (ClaimOutcome::Done(r.clone()), None),
            Status::InProgress if r.lease_until_ms <= req.now_ms => {
                (ClaimOutcome::TakenOver { fence, previous_owner: r.owner.clone() }, Some(fresh(next_attempt)))
            }
            Status::InProgress => {
                (ClaimOutcome::Busy { owner: r.owner.clone(), lease_until_ms: r.lease_until_ms }, None)
            }
        },
    }
}

/// The check every fenced write shares: the record is live, in progress, and
/// held by exactly this fence.
fn check_fence<'r>(
    cur: Option<&'r OutcomeRecord>,
    fence: &Fence,
    now_ms: u64,
) -> Result<&'r OutcomeRecord, LeaseError> {
    let r = live(cur, now_ms).ok_or(LeaseError::NotFound)?;
    if r.owner != fence.owner || r.attempt != fence.attempt {
        return Err(LeaseError::Fenced { owner: r.owner.clone(), attempt: r.attempt });
    }
    if r.status != Status::InProgress {
        return Err(LeaseError::AlreadyFinished);
    }
    Ok(r)
}

/// Renew: extends the lease to `until_ms`. Allowed even after the lease ran
/// out, as long as nobody took it over (the fence still matches).
pub fn renew(
    cur: Option<&OutcomeRecord>,
    fence: &Fence,
    until_ms: u64,
    now_ms: u64,
) -> Result<OutcomeRecord, LeaseError> {
    let r = check_fence(cur, fence, now_ms)?;
    Ok(OutcomeRecord { lease_until_ms: until_ms, ..r.clone() })
}

/// Finish: records the terminal status and the result body.
pub fn finish(
    cur: Option<&OutcomeRecord>,
    fence: &Fence,
    terminal: Terminal,
    result_json: &str,
    now_ms: u64,
) -> Result<OutcomeRecord, LeaseError> {
    let r = check_fence(cur, fence, now_ms)?;
    Ok(OutcomeRecord { status: terminal.into(), lease_until_ms: 0, result: Some(result_json.to_owned()), ..r.clone() })
}

/// Release: gives the lease back unfinished, so the next claim succeeds at
/// once (as a take-over) instead of waiting for the lease to run out.
pub fn release(cur: Option<&OutcomeRecord>, fence: &Fence, now_ms: u64) -> Result<OutcomeRecord, LeaseError> {
    let r = check_fence(cur, fence, now_ms)?;
    Ok(OutcomeRecord { lease_until_ms: 0, ..r.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_000_000_000;
    const LEASE: u64 = 60_000;
    const TTL: u64 = 86_400;

    fn req(owner: &str, now_ms: u64) -> ClaimRequest<'_> {
        ClaimRequest { owner, run_id: "r", now_ms, lease_ms: LEASE, ttl_s: TTL }
    }

    fn rec(status: Status, owner: &str, attempt: u64, lease_until_ms: u64) -> OutcomeRecord {
        OutcomeRecord {
            status,
            owner: owner.into(),
            attempt,
            lease_until_ms,
            result: (status != Status::InProgress).then(|| "{}".into()),
            run_id: "r".into(),
            expires_at_s: NOW / 1000 + TTL,
        }
    }

    /// Every starting state the table can hold, named.
    fn states() -> Vec<(&'static str, Option<OutcomeRecord>)> {
        let mut ttl_gone = rec(Status::Completed, "a", 3, 0);
        ttl_gone.expires_at_s = NOW / 1000 - 1;
        vec![
            ("absent", None),
            ("ttl-expired", Some(ttl_gone)),
            ("live lease of a", Some(rec(Status::InProgress, "a", 2, NOW + 1))),
            ("ended lease of a", Some(rec(Status::InProgress, "a", 2, NOW))),
            ("released by a", Some(rec(Status::InProgress, "a", 2, 0))),
            ("completed", Some(rec(Status::Completed, "a", 2, 0))),
            ("failed", Some(rec(Status::Failed, "a", 2, 0))),
        ]
    }

    #[test]
    fn claim_from_every_state() {
        for (name, cur) in states() {
            for owner in ["a", "b"] {
                let (outcome, write) = claim(cur.as_ref(), &req(owner, NOW));
                let next = cur.as_ref().map_or(1, |r| r.attempt + 1);
                match (name, &outcome) {
                    ("absent" | "ttl-expired", ClaimOutcome::Claimed(f)) => {
                        assert_eq!(f, &Fence { owner: owner.into(), attempt: next });
                    }
                    ("ended lease of a" | "released by a", ClaimOutcome::TakenOver { fence, previous_owner }) => {
                        assert_eq!(fence.attempt, 3);
                        assert_eq!(previous_owner, "a");
                    }
                    ("live lease of a", ClaimOutcome::Busy { owner, lease_until_ms }) => {
                        assert_eq!((owner.as_str(), *lease_until_ms), ("a", NOW + 1));
                    }
                    ("completed" | "failed", ClaimOutcome::Done(r)) => assert_eq!(Some(r), cur.as_ref()),
                    _ => panic!("state {name}, owner {owner}: unexpected {outcome:?}"),
                }
                // A write happens exactly when the claim succeeded, and it
                // holds the new lease.
                let won = matches!(outcome, ClaimOutcome::Claimed(_) | ClaimOutcome::TakenOver { .. });
                assert_eq!(write.is_some(), won, "{name}");
                if let Some(w) = write {
                    assert_eq!(
                        (w.status, w.owner.as_str(), w.attempt, w.lease_until_ms),
                        (Status::InProgress, owner, next, NOW + LEASE)
                    );
                    assert_eq!(w.result, None);
                }
            }
        }
    }

    #[test]
    fn fenced_writes_from_every_state() {
        let good = Fence { owner: "a".into(), attempt: 2 };
        let stale = Fence { owner: "a".into(), attempt: 1 };
        let other = Fence { owner: "b".into(), attempt: 2 };
        for (name, cur) in states() {
            for (fname, fence) in [("good", &good), ("stale", &stale), ("other", &other)] {
                let results = [
                    renew(cur.as_ref(), fence, NOW + LEASE, NOW).map(|_| ()),
                    finish(cur.as_ref(), fence, Terminal::Completed, "{}", NOW).map(|_| ()),
                    release(cur.as_ref(), fence, NOW).map(|_| ()),
                ];
                for r in results {
                    let want = match (name, fname) {
                        ("absent" | "ttl-expired", _) => Err(LeaseError::NotFound),
                        (_, "stale" | "other") => Err(LeaseError::Fenced { owner: "a".into(), attempt: 2 }),
                        ("completed" | "failed", "good") => Err(LeaseError::AlreadyFinished),
                        // In progress and ours, whether the lease is live,
                        // ended or released: nobody took over, so still ours.
                        (_, "good") => Ok(()),
                        _ => unreachable!(),
                    };
                    assert_eq!(r, want, "state {name}, fence {fname}");
                }
            }
        }
    }

    fn unclaimed<'a>(owner: &'a str, now_ms: u64) -> UnclaimedFinish<'a> {
        UnclaimedFinish { owner, run_id: "r", terminal: Terminal::Completed, result_json: owner, now_ms }
    }

    #[test]
    fn unclaimed_finish_and_lookup_from_every_state() {
        for (name, cur) in states() {
            let got = finish_unclaimed(cur.as_ref(), &unclaimed("b", NOW), TTL);
            let seen = lookup(cur.as_ref(), NOW);
            match name {
                "absent" | "ttl-expired" | "ended lease of a" | "released by a" => {
                    let r = got.unwrap_or_else(|e| panic!("{name}: {e:?}"));
                    let next = cur.as_ref().map_or(1, |c| c.attempt + 1);
                    assert_eq!(
                        (r.status, r.owner.as_str(), r.attempt, r.lease_until_ms, r.result.as_deref()),
                        (Status::Completed, "b", next, 0, Some("b")),
                        "{name}"
                    );
                    assert_eq!(seen, Lookup::Compute, "{name}");
                }
                "live lease of a" => {
                    assert_eq!(got, Err(Unclaimed::Busy { owner: "a".into(), lease_until_ms: NOW + 1 }));
                    assert_eq!(seen, Lookup::Busy);
                }
                "completed" | "failed" => {
                    let stored = cur.clone().expect("a record");
                    assert_eq!(got, Err(Unclaimed::Done(stored.clone())), "{name}");
                    assert_eq!(seen, Lookup::Done(stored), "{name}");
                }
                _ => unreachable!("{name}"),
            }
        }
        assert!(!Fence::unclaimed("w").is_claim());
        assert!(Fence { owner: "w".into(), attempt: 1 }.is_claim());
    }

    #[test]
    fn a_claim_holder_replaced_by_an_unclaimed_finish_is_fenced() {
        // a claims, its lease ends, b finishes without a claim: a's finish must fail.
        let (ClaimOutcome::Claimed(fa), Some(rec_a)) = claim(None, &req("a", NOW)) else { panic!("claim") };
        let later = rec_a.lease_until_ms;
        let rec_b = finish_unclaimed(Some(&rec_a), &unclaimed("b", later), TTL).expect("ended lease");
        assert_eq!(
            finish(Some(&rec_b), &fa, Terminal::Completed, "a", later),
            Err(LeaseError::Fenced { owner: "b".into(), attempt: 2 })
        );
    }

    #[test]
    fn finish_and_release_write_what_they_say() {
        let cur = rec(Status::InProgress, "a", 2, NOW + 5);
        let fence = Fence { owner: "a".into(), attempt: 2 };
        let done = finish(Some(&cur), &fence, Terminal::Failed, "{\"x\":1}", NOW).expect("ours");
        assert_eq!((done.status, done.result.as_deref(), done.lease_until_ms), (Status::Failed, Some("{\"x\":1}"), 0));
        let rel = release(Some(&cur), &fence, NOW).expect("ours");
        assert_eq!((rel.status, rel.lease_until_ms), (Status::InProgress, 0));
        let renewed = renew(Some(&cur), &fence, NOW + 99, NOW).expect("ours");
        assert_eq!(renewed.lease_until_ms, NOW + 99);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Claim(usize),
        Renew(usize),
        Finish(usize),
        Release(usize),
        /// A finish-only worker (its own identity, `u0`–`u2`) finishes the job.
        Unclaimed(usize),
        Tick(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..3usize).prop_map(Op::Claim),
            (0..3usize).prop_map(Op::Unclaimed),
            (0..3usize).prop_map(Op::Renew),
            (0..3usize).prop_map(Op::Finish),
            (0..3usize).prop_map(Op::Release),
            (1..2 * LEASE).prop_map(Op::Tick),
        ]
    }

    proptest! {
        /// Three claiming workers and three finish-only workers race on one
        /// job in any interleaving, with time passing (the TTL never runs
        /// out here). Whatever happens: at most one finish ever succeeds, a
        /// worker only writes while its fence matches the record, and at most
        /// one worker believes it holds a live lease at any instant.
        #[test]
        fn races_never_produce_two_outcomes(ops in proptest::collection::vec(op(), 1..60)) {
            let owners = ["w0", "w1", "w2"];
            let mut now = NOW;
            let mut table: Option<OutcomeRecord> = None;
            let mut held: [Option<Fence>; 3] = [None, None, None];
            let mut finishes = 0;
            for op in ops {
                match op {
                    Op::Tick(d) => now += d,
                    Op::Claim(w) => {
                        let (outcome, write) = claim(table.as_ref(), &req(owners[w], now));
                        if let Some(rec) = write { table = Some(rec); }
                        match outcome {
                            ClaimOutcome::Claimed(f) | ClaimOutcome::TakenOver { fence: f, .. } => held[w] = Some(f),
                            ClaimOutcome::Busy { .. } | ClaimOutcome::Done(_) => {}
                        }
                    }
                    Op::Renew(w) => if let Some(f) = &held[w] {
                        match renew(table.as_ref(), f, now + LEASE, now) {
                            Ok(r) => table = Some(r),
                            Err(_) => held[w] = None,
                        }
                    },
                    Op::Finish(w) => if let Some(f) = held[w].take()
                        && let Ok(r) = finish(table.as_ref(), &f, Terminal::Completed, owners[w], now) {
                        finishes += 1;
                        table = Some(r);
                    },
                    Op::Release(w) => if let Some(f) = held[w].take()
                        && let Ok(r) = release(table.as_ref(), &f, now) {
                        table = Some(r);
                    },
                    Op::Unclaimed(w) => {
                        let owner = ["u0", "u1", "u2"][w];
                        if let Ok(r) = finish_unclaimed(table.as_ref(), &unclaimed(owner, now), TTL) {
                            finishes += 1;
                            table = Some(r);
                        }
                    }
                }
                prop_assert!(finishes <= 1);
                // Only the fence on the record can write; any other holder is stale.
                let live_holders = held.iter().flatten().filter(|f| {
                    table.as_ref().is_some_and(|t| t.owner == f.owner && t.attempt == f.attempt
                        && t.status == Status::InProgress && t.lease_until_ms > now)
                }).count();
                prop_assert!(live_holders <= 1);
            }
        }
    }
}

//! The dedup mode: **claim** each job before computing it, or **finish
//! only** (see `docs/protocol.md`, "Dedup and leases").
//!
//! - `claim`: a conditional claim, lease renewals, a fenced finish. A job is
//!   computed once (up to take-overs after a crash); two table writes a job.
//! - `finish-only`: one eventually consistent BatchGetItem per receive batch
//!   skips jobs that have an outcome; the only write is the finish,
//!   conditional on no outcome (and no live claim) existing. Still one stored
//!   outcome per job; two copies of a job in flight at once are both
//!   computed, and the later finish re-sends the stored result.
//! - `auto`: the cheaper of the two for the model served, by this rule.
//!   Finish-only saves a claim's write unit per job and spends half a read
//!   unit on the lookup; its worst case is every job computed twice. So it is
//!   chosen when one more computation of a job costs no more than the write
//!   it saves, `cpu_s_per_image × images_per_job × vcpu_hour_usd / 3600 ≤
//!   write_usd − read_usd / 2` (images per job as recorded so far), at the
//!   prices of `--dedup-vcpu-hour-usd`, `--dedup-write-usd-per-million` and
//!   `--dedup-read-usd-per-million`
//!   (defaults: $0.044625 per vCPU-hour, $0.625 and $0.125 per million units:
//!   ≈ 45 ms of CPU per image). The CPU per image is measured, not guessed: the model's forward
//!   time per image plus the decode time per image, once the worker has run
//!   [`AUTO_SAMPLE`] images. Until then it claims (the mode that computes
//!   once); the decision is then kept for the worker's life and exported as
//!   `scorefleet_dedup_mode`. Mixed modes on one table are safe: an unclaimed
//!   finish never overwrites a live claim, and it fences a claim whose lease
//!   it replaced.

use crate::metrics::{Metrics, Stage};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

/// Images measured before `auto` decides.
pub const AUTO_SAMPLE: u64 = 64;

/// How a job is deduplicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Claim, renew, fenced finish.
    Claim,
    /// Batched read, then one conditional finish.
    FinishOnly,
}

impl Mode {
    /// The flag's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Claim => "claim",
            Mode::FinishOnly => "finish-only",
        }
    }
}

/// The prices `auto` weighs, in dollars.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prices {
    /// One vCPU for an hour.
    pub vcpu_hour_usd: f64,
    /// One DynamoDB write unit.
    pub write_unit_usd: f64,
    /// One DynamoDB read unit (an eventually consistent read of an item under
    /// 4 KB is half of one).
    pub read_unit_usd: f64,
}

impl Prices {
    /// The CPU time per image at or below which finish-only is the cheaper
    /// mode even if every job were computed twice.
    pub fn break_even_cpu_s(&self) -> f64 {
        (self.write_unit_usd - self.read_unit_usd / 2.0).max(0.0) / (self.vcpu_hour_usd / 3600.0)
    }

    /// The mode for a measured CPU time per image.
    pub fn choose(&self, cpu_s_per_image: f64) -> Mode {
        if cpu_s_per_image <= self.break_even_cpu_s() { Mode::FinishOnly } else { Mode::Claim }
    }
}

/// The configured policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Policy {
    /// Always this mode.
    Fixed(Mode),
    /// Chosen from the measured CPU per image at these prices.
    Auto(Prices),
}

/// The policy and, under `auto`, the decision once made; shared by the
/// dedup stage (which asks per receive batch) and `/metrics`.
#[derive(Debug, Default)]
pub struct Choice {
    policy: OnceLock<Policy>,
    /// 0: undecided (auto still measuring), 1: claim, 2: finish-only.
    decided: AtomicU8,
    /// The process's CPU seconds when the policy was set (the pipeline's
    /// start, after the model loaded): where the measurement starts.
    cpu_at_start: OnceLock<Option<f64>>,
}

impl Choice {
    /// Sets the policy (once; later calls are ignored).
    pub fn configure(&self, policy: Policy) {
        if self.policy.set(policy).is_ok() {
            let _ = self.cpu_at_start.set(process_cpu_s());
            if let Policy::Fixed(mode) = policy {
                self.decided.store(code(mode), Ordering::Relaxed);
            }
        }
    }

    /// The mode for the next jobs. Under `auto`, decides once enough images
    /// were measured (and logs the decision).
    pub fn current(&self, metrics: &Metrics) -> Mode {
        match self.decided.load(Ordering::Relaxed) {
            1 => return Mode::Claim,
            2 => return Mode::FinishOnly,
            _ => {}
        }
        let Some(Policy::Auto(prices)) = self.policy.get() else { return Mode::Claim };
        let start = self.cpu_at_start.get().copied().flatten();
        let Some(cpu_s) = measured_cpu_s_per_image(metrics, start) else { return Mode::FinishOnly };
        // A duplicate computation costs a whole job: all of its images.
        let images_per_job = metrics.images_per_job();
        let mode = prices.choose(cpu_s * images_per_job);
        if self.decided.compare_exchange(0, code(mode), Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            tracing::info!(
                mode = mode.as_str(),
                cpu_ms_per_image = cpu_s * 1e3,
                images_per_job,
                break_even_ms = prices.break_even_cpu_s() * 1e3,
                "dedup mode chosen from the measured CPU per image"
            );
        }
        mode
    }

    /// The mode decided so far (`None`: auto still measuring).
    pub fn decided(&self) -> Option<Mode> {
        match self.decided.load(Ordering::Relaxed) {
            1 => Some(Mode::Claim),
            2 => Some(Mode::FinishOnly),
            _ => None,
        }
    }
}

fn code(mode: Mode) -> u8 {
    match mode {
        Mode::Claim => 1,
        Mode::FinishOnly => 2,
    }
}

/// CPU seconds per image, once [`AUTO_SAMPLE`] images went through the
/// model: the process's CPU time since `cpu_at_start` per image, or where
/// that cannot be read, forward time plus decode time per image.
fn measured_cpu_s_per_image(m: &Metrics, cpu_at_start: Option<f64>) -> Option<f64> {
    let images = m.inferences.load(Ordering::Relaxed);
    if images < AUTO_SAMPLE {
        return None;
    }
    if let (Some(start), Some(now)) = (cpu_at_start, process_cpu_s()) {
        return Some((now - start).max(0.0) / images as f64);
    }
    let (infer_us, _) = m.stage_total(Stage::Infer);
    let (decode_us, decodes) = m.stage_total(Stage::Decode);
    let decode = if decodes > 0 { decode_us as f64 / decodes as f64 } else { 0.0 };
    Some((infer_us as f64 / images as f64 + decode) / 1e6)
}

/// This process's CPU time (user + system, all threads) in seconds, from
/// `/proc/self/stat` (fields 14 and 15, in clock ticks of 1/100 s: Linux's
/// USER_HZ); `None` where there is no procfs. (The model crate's reader of
/// the same lives behind its `train` feature, which the worker leaves off.)
fn process_cpu_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; the rest follows its ')'.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const PRICES: Prices = Prices { vcpu_hour_usd: 0.044625, write_unit_usd: 0.625e-6, read_unit_usd: 0.125e-6 };

    #[test]
    fn the_break_even_is_about_45_ms_at_the_default_prices() {
        let ms = PRICES.break_even_cpu_s() * 1e3;
        assert!((45.0..46.0).contains(&ms), "{ms}");
        assert_eq!(PRICES.choose(0.002), Mode::FinishOnly);
        assert_eq!(PRICES.choose(0.120), Mode::Claim);
    }

    #[test]
    fn auto_runs_finish_only_until_it_has_measured_then_keeps_its_choice() {
        let m = Metrics::default();
        let c = Choice::default();
        c.configure(Policy::Auto(PRICES));
        assert_eq!((c.current(&m), c.decided()), (Mode::FinishOnly, None), "nothing measured yet");
        // The stage-time estimate (no process CPU start): 1 ms an image.
        m.batch(AUTO_SAMPLE as usize);
        m.observe(Stage::Infer, Duration::from_millis(AUTO_SAMPLE));
        m.observe(Stage::Decode, Duration::from_micros(300));
        assert_eq!(measured_cpu_s_per_image(&m, None), Some(0.0013));
        assert_eq!(c.current(&m), Mode::FinishOnly);
        // Slower images later do not flip it.
        m.observe(Stage::Infer, Duration::from_secs(100));
        assert_eq!((c.current(&m), c.decided()), (Mode::FinishOnly, Some(Mode::FinishOnly)));

        // 100 ms an image of process CPU: claim.
        if process_cpu_s().is_none() {
            return; // no procfs here
        }
        let slow = Metrics::default();
        slow.batch(AUTO_SAMPLE as usize);
        let start = process_cpu_s().map(|now| now - 0.1 * AUTO_SAMPLE as f64);
        let per_image = measured_cpu_s_per_image(&slow, start).expect("measured");
        assert!(per_image >= 0.1, "{per_image}");
        assert_eq!(PRICES.choose(per_image), Mode::Claim);
    }

    #[test]
    fn the_process_cpu_time_is_read_and_grows() {
        let Some(before) = process_cpu_s() else { return };
        let mut x = 0u64;
        for i in 0..30_000_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        std::hint::black_box(x);
        let after = process_cpu_s().expect("readable once");
        assert!(after >= before, "{before} → {after}");
    }

    #[test]
    fn a_fixed_mode_is_decided_from_the_start() {
        let c = Choice::default();
        c.configure(Policy::Fixed(Mode::FinishOnly));
        assert_eq!((c.decided(), c.current(&Metrics::default())), (Some(Mode::FinishOnly), Mode::FinishOnly));
    }
}

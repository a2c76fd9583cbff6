//! Progress for people: a bar on a terminal, a plain line every few seconds
//! otherwise (logs, CI, cron), nothing in tests.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often plain progress lines are written when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// Reports progress of a long command (`enqueue`, `collect`, `report`).
#[derive(Debug)]
pub struct Progress {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Bar(ProgressBar),
    Lines { started: Instant, last: Mutex<Instant> },
    Quiet,
}

impl Progress {
    /// A bar if stderr is a terminal, else periodic lines.
    pub fn auto() -> Self {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new_spinner();
            let style = ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(120));
            Self { kind: Kind::Bar(bar) }
        } else {
            let now = Instant::now();
            Self { kind: Kind::Lines { started: now, last: Mutex::new(now) } }
        }
    }

    /// No output (tests).
    pub fn quiet() -> Self {
        Self { kind: Kind::Quiet }
    }

    /// Updates the counts of an enqueue run.
    pub fn set(&self, enqueued: u64, skipped: u64, failed: u64) {
        self.show(enqueued, "msg", || format!("enqueued {enqueued}  skipped {skipped}  failed {failed}"));
    }

    /// Shows `msg()` with the rate of `done` per second since the start,
    /// `unit` naming what `done` counts. The message is built only when it is
    /// shown, so calling this once per item costs a clock read in line mode.
    pub fn show(&self, done: u64, unit: &str, msg: impl FnOnce() -> String) {
        match &self.kind {
            Kind::Bar(bar) => bar.set_message(msg()),
            Kind::Lines { started, last } => {
                let Ok(mut last) = last.lock() else { return };
                if last.elapsed() >= LINE_EVERY {
                    *last = Instant::now();
                    let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
                    eprintln!("progress: {}  ({rate:.0} {unit}/s)", msg());
                }
            }
            Kind::Quiet => {}
        }
    }

    /// A line about one item (a skipped manifest line), above the bar.
    pub fn warn(&self, line: &str) {
        match &self.kind {
            Kind::Bar(bar) => bar.println(line),
            Kind::Lines { .. } => eprintln!("{line}"),
            Kind::Quiet => {}
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Kind::Bar(bar) = &self.kind {
            bar.finish_and_clear();
        }
    }
}

//! Progress for people: a bar on a terminal, a plain line every few seconds
//! otherwise (logs, CI, cron), nothing in tests.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often plain progress lines are written when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// Reports progress of an enqueue run.
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

    /// Updates the counts.
    pub fn set(&self, enqueued: u64, skipped: u64, failed: u64) {
        let msg = format!("enqueued {enqueued}  skipped {skipped}  failed {failed}");
        match &self.kind {
            Kind::Bar(bar) => bar.set_message(msg),
            Kind::Lines { started, last } => {
                let Ok(mut last) = last.lock() else { return };
                if last.elapsed() >= LINE_EVERY {
                    *last = Instant::now();
                    let rate = enqueued as f64 / started.elapsed().as_secs_f64().max(1e-9);
                    eprintln!("progress: {msg}  ({rate:.0} msg/s)");
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

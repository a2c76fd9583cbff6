//! Supervision: every task and thread of the pipeline is watched.
//!
//! A stage that ends before shutdown began, or panics at any time (the
//! inference thread included), is a [`Fault`]: the root token is cancelled
//! at once (readiness turns false, the receivers stop), the drain runs as
//! after a signal, and the fault is returned so that the process exits
//! non-zero and the orchestrator restarts it. A worker must never sit ready
//! while its pipeline is broken.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::{Id, JoinError, JoinSet};

/// Why the pipeline stopped on its own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{part} {reason}")]
pub struct Fault {
    /// The task, thread or structure that failed (`infer`, `dedup`, …).
    pub part: &'static str,
    /// What happened to it.
    pub reason: String,
}

impl Fault {
    /// A fault of `part`.
    pub fn new(part: &'static str, reason: impl Into<String>) -> Self {
        Self { part, reason: reason.into() }
    }

    fn from_join(part: &'static str, e: JoinError) -> Self {
        if e.is_panic() {
            Self::new(part, format!("panicked: {}", panic_message(e.into_panic().as_ref())))
        } else {
            Self::new(part, "was cancelled")
        }
    }
}

/// The message of a panic payload.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// The pipeline's tasks and threads, and the first fault among them.
#[derive(Debug, Default)]
pub(crate) struct Supervisor {
    tasks: JoinSet<()>,
    names: HashMap<Id, &'static str>,
    fault: Option<Fault>,
}

impl Supervisor {
    /// Spawns and watches a task.
    pub(crate) fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let id = self.tasks.spawn(task).id();
        self.names.insert(id, name);
    }

    /// Runs `body` on a dedicated OS thread, watched like a task: its
    /// panic is caught on the thread and re-raised in its watcher, which
    /// joins the thread once it has ended.
    pub(crate) fn spawn_thread(
        &mut self,
        name: &'static str,
        thread: std::thread::Builder,
        body: impl FnOnce() + Send + 'static,
    ) {
        let (tx, rx) = oneshot::channel::<std::thread::Result<()>>();
        let spawned = thread.spawn(move || {
            let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)));
        });
        let handle = match spawned {
            Ok(h) => h,
            Err(e) => return self.fail(Fault::new(name, format!("could not start: {e}"))),
        };
        self.spawn(name, async move {
            match rx.await {
                Ok(Ok(())) => {}
                Ok(Err(payload)) => std::panic::resume_unwind(payload),
                Err(_) => panic!("the thread ended without reporting how"),
            }
            // It has returned, or is about to: the join is immediate.
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        });
    }

    /// Records a fault; the first one is the one reported.
    pub(crate) fn fail(&mut self, fault: Fault) {
        tracing::error!(part = fault.part, reason = %fault.reason, "pipeline fault: stopping the worker");
        self.fault.get_or_insert(fault);
    }

    /// Whether a fault was recorded.
    pub(crate) fn failed(&self) -> bool {
        self.fault.is_some()
    }

    fn name(&self, id: Id) -> &'static str {
        self.names.get(&id).copied().unwrap_or("task")
    }

    /// Waits for the next task to end. `None` when none is left. An end
    /// before shutdown (`expected` false) or a panic is recorded as a fault.
    pub(crate) async fn next(&mut self, expected: bool) -> Option<()> {
        let joined = self.tasks.join_next_with_id().await?;
        match joined {
            Ok((id, ())) if !expected => {
                let part = self.name(id);
                self.fail(Fault::new(part, "ended before shutdown"));
            }
            Ok(_) => {}
            Err(e) => {
                let part = self.name(e.id());
                self.fail(Fault::from_join(part, e));
            }
        }
        Some(())
    }

    /// Waits for every task, at most `limit`; returns whether all ended.
    /// The ones still running then are aborted (a thread cannot be: it is
    /// left to the process's exit).
    pub(crate) async fn join_all(&mut self, limit: Duration) -> bool {
        let all = async { while self.next(true).await.is_some() {} };
        let drained = tokio::time::timeout(limit, all).await.is_ok();
        if !drained {
            self.tasks.abort_all();
            while let Some(joined) = self.tasks.join_next_with_id().await {
                if let Err(e) = joined
                    && e.is_panic()
                {
                    let part = self.name(e.id());
                    self.fail(Fault::from_join(part, e));
                }
            }
        }
        drained
    }

    /// The fault, if any.
    pub(crate) fn into_fault(self) -> Option<Fault> {
        self.fault
    }
}

//! Storage health: the one storage probe (/readyz answers with it too, so the two cannot
//! disagree) and the background task that runs it every few seconds.
//!
//! Why: once sled has seen an IO error (a full disk) it keeps failing every write even
//! after space is freed; only a fresh process that re-opens the database heals. The task
//! pings systemd's watchdog only after a good probe, and after
//! `storage.fatal_after_secs` of continuous failure it ends the server with
//! `ServerError::StorageFatal` (exit code 75, EX_TEMPFAIL), so `Restart=on-failure`
//! starts a fresh one on the same data.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::server::{AppState, ServerError};
use crate::store::{EventLog, StoreError};
use crate::systemd::Notifier;

/// How long a probe may take before it counts as failed (and /readyz answers 503).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Probe interval without a watchdog.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Probes never run more often than this, however short the watchdog or the deadline.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the database did not complete a write within 5 s")]
    Slow,
}

/// Writes and flushes a marker within `PROBE_TIMEOUT`: the storage works.
pub async fn probe(log: &EventLog) -> Result<(), ProbeError> {
    match tokio::time::timeout(PROBE_TIMEOUT, log.probe()).await {
        Ok(r) => r.map_err(ProbeError::Store),
        Err(_) => Err(ProbeError::Slow),
    }
}

/// How often the task probes: every 5 s, or half the watchdog interval (systemd's advice) if shorter, and
/// at least twice within `fatal_after`, so the exit comes close to its deadline.
pub fn probe_interval(watchdog: Option<Duration>, fatal_after: Option<Duration>) -> Duration {
    let base = watchdog.map_or(DEFAULT_INTERVAL, |w| (w / 2).min(DEFAULT_INTERVAL));
    let base = fatal_after.map_or(base, |f| base.min(f / 2));
    base.max(MIN_INTERVAL)
}

/// What one probe result means.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Healthy { recovered_after: Option<Duration> },
    Failing { first: bool, for_: Duration },
    Fatal { for_: Duration },
}

/// Since when probes have failed without a success in between.
#[derive(Debug)]
pub struct FailureClock {
    failing_since: Option<Instant>,
    fatal_after: Option<Duration>,
}

impl FailureClock {
    /// `fatal_after_secs` = 0: failures are never fatal.
    pub fn new(fatal_after_secs: u64) -> FailureClock {
        FailureClock {
            failing_since: None,
            fatal_after: (fatal_after_secs > 0).then(|| Duration::from_secs(fatal_after_secs)),
        }
    }

    pub fn fatal_after(&self) -> Option<Duration> {
        self.fatal_after
    }

    pub fn record(&mut self, ok: bool, now: Instant) -> Verdict {
        if ok {
            let recovered_after = self.failing_since.take().map(|t| now - t);
            return Verdict::Healthy { recovered_after };
        }
        let first = self.failing_since.is_none();
        let since = *self.failing_since.get_or_insert(now);
        let for_ = now - since;
        match self.fatal_after {
            Some(limit) if for_ >= limit => Verdict::Fatal { for_ },
            _ => Verdict::Failing { first, for_ },
        }
    }
}

/// Probes until storage has failed for `storage.fatal_after_secs`, then returns the
/// error that ends the server; with 0 it runs until aborted. Sends `WATCHDOG=1` after
/// each good probe and keeps `surepush_storage_healthy` current.
pub async fn watch(state: AppState, notifier: Arc<Notifier>) -> ServerError {
    let mut clock = FailureClock::new(state.config.storage.fatal_after_secs);
    let watchdog = notifier.watchdog_interval();
    if let (Some(w), Some(f)) = (watchdog, clock.fatal_after()) {
        if w <= f {
            tracing::warn!(
                watchdog_secs = w.as_secs_f64(),
                fatal_after_secs = f.as_secs(),
                "the systemd watchdog is not longer than storage.fatal_after_secs: on a storage \
                 fault systemd kills and restarts the server before it exits by itself"
            );
        }
    }
    let every = probe_interval(watchdog, clock.fatal_after());
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = probe(&state.log).await;
        if matches!(result, Err(ProbeError::Store(StoreError::Closed))) {
            // Shutting down: the log is closed on purpose.
            std::future::pending::<()>().await;
        }
        let verdict = clock.record(result.is_ok(), Instant::now());
        state.metrics.storage_healthy.set(i64::from(result.is_ok()));
        match (verdict, result) {
            (Verdict::Healthy { recovered_after }, _) => {
                notifier.watchdog();
                if let Some(after) = recovered_after {
                    tracing::info!(
                        failed_for_secs = after.as_secs(),
                        "storage works again: the probe succeeded"
                    );
                    notifier.status("serving; storage works again");
                }
            }
            (Verdict::Failing { first, for_ }, Err(e)) => {
                if first {
                    let limit = clock.fatal_after().map_or(0, |d| d.as_secs());
                    tracing::warn!(
                        error = %e,
                        fatal_after_secs = limit,
                        "the storage probe failed; the server exits for a restart if storage \
                         keeps failing for fatal_after_secs (0: never)"
                    );
                } else {
                    tracing::debug!(error = %e, failing_for_secs = for_.as_secs(), "storage probe failed again");
                }
                notifier.status(&format!("storage failing for {} s: {e}", for_.as_secs()));
            }
            (Verdict::Fatal { for_ }, Err(e)) => {
                return ServerError::StorageFatal {
                    failing_secs: for_.as_secs(),
                    last_error: e.to_string(),
                };
            }
            // A failing verdict always comes with an error.
            (_, Ok(())) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_follows_watchdog_and_deadline() {
        let s = Duration::from_secs;
        assert_eq!(probe_interval(None, None), s(5));
        assert_eq!(probe_interval(Some(s(90)), None), s(5));
        assert_eq!(probe_interval(Some(s(6)), Some(s(60))), s(3));
        assert_eq!(
            probe_interval(None, Some(s(3))),
            Duration::from_millis(1500)
        );
        assert_eq!(
            probe_interval(Some(Duration::from_millis(10)), None),
            MIN_INTERVAL
        );
    }

    #[test]
    fn continuous_failure_becomes_fatal_a_success_resets_it() {
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let mut c = FailureClock::new(10);
        assert_eq!(
            c.record(true, at(0)),
            Verdict::Healthy {
                recovered_after: None
            }
        );
        assert_eq!(
            c.record(false, at(1)),
            Verdict::Failing {
                first: true,
                for_: Duration::ZERO
            }
        );
        assert_eq!(
            c.record(false, at(6)),
            Verdict::Failing {
                first: false,
                for_: Duration::from_secs(5)
            }
        );
        assert_eq!(
            c.record(true, at(8)),
            Verdict::Healthy {
                recovered_after: Some(Duration::from_secs(7))
            }
        );
        // the clock restarted: 10 s from the next failure, not from the first one
        assert!(matches!(
            c.record(false, at(9)),
            Verdict::Failing { first: true, .. }
        ));
        assert!(matches!(
            c.record(false, at(18)),
            Verdict::Failing { first: false, .. }
        ));
        assert_eq!(
            c.record(false, at(19)),
            Verdict::Fatal {
                for_: Duration::from_secs(10)
            }
        );
    }

    #[test]
    fn zero_never_exits() {
        let t0 = Instant::now();
        let mut c = FailureClock::new(0);
        assert_eq!(c.fatal_after(), None);
        c.record(false, t0);
        assert!(matches!(
            c.record(false, t0 + Duration::from_secs(86_400 * 365)),
            Verdict::Failing { .. }
        ));
    }
}

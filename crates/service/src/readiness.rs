//! `Readiness`: whether this process should get traffic, for `/readyz` and load balancers.
//!
//! Services register checks (a store whose disk is full, a broker that is unreachable); the
//! gateway marks the whole process as draining on SIGTERM. `/readyz` answers 200 only when
//! nothing is draining and every check passes, else 503 naming what is wrong. Checks are
//! plain functions read at each probe: they read state the service keeps anyway (an atomic,
//! a `watch` value), so a probe costs nothing and is never stale.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// Why the process is not ready: which service, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub service: String,
    pub reason: String,
}

type Check = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// The process's readiness: draining flag plus every service's checks. Clones share state.
#[derive(Clone, Default)]
pub struct Readiness {
    draining: Arc<AtomicBool>,
    checks: Arc<RwLock<Vec<(String, Check)>>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("draining", &self.is_draining())
            .field("problems", &self.problems())
            .finish()
    }
}

impl Readiness {
    pub fn new() -> Self {
        Readiness::default()
    }

    /// Adds `service`'s check: `None` while it can serve, else the reason it cannot.
    pub fn add_check(
        &self,
        service: &str,
        check: impl Fn() -> Option<String> + Send + Sync + 'static,
    ) {
        let mut checks = self.checks.write().unwrap_or_else(|p| p.into_inner());
        checks.push((service.to_string(), Arc::new(check)));
    }

    /// From now on the process is shutting down: not ready, whatever the checks say.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// What every failing check says, in the order the checks were added.
    pub fn problems(&self) -> Vec<Problem> {
        let checks = self.checks.read().unwrap_or_else(|p| p.into_inner());
        checks
            .iter()
            .filter_map(|(service, check)| {
                check().map(|reason| Problem {
                    service: service.clone(),
                    reason,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_check_names_its_service_and_draining_overrides_all() {
        let readiness = Readiness::new();
        let full = Arc::new(AtomicBool::new(false));
        let flag = full.clone();
        readiness.add_check("messages", move || {
            flag.load(Ordering::SeqCst)
                .then(|| "store: disk full".to_string())
        });
        assert!(readiness.problems().is_empty());
        full.store(true, Ordering::SeqCst);
        assert_eq!(
            readiness.problems(),
            vec![Problem {
                service: "messages".into(),
                reason: "store: disk full".into()
            }]
        );
        assert!(!readiness.is_draining());
        readiness.start_draining();
        assert!(readiness.clone().is_draining());
    }
}

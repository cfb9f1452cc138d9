//! Per-request metric labels that a service sets and that cannot grow without bound.
//!
//! The gateway counts every request by service and status. A service can add one label of
//! its own to a request (the proxy: the managed service it went to; the job API: the job
//! service) by putting a [`RouteLabel`] into the response's extensions. Label values come
//! from input (a path segment), so they are interned: each distinct text is stored once, the
//! metrics key on its address (as they do for service names), and past [`MAX_LABELS`]
//! distinct values every new one becomes `other`, so a client inventing names cannot make
//! the metrics grow.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Distinct label values kept in the process; later ones are counted as `other`.
pub const MAX_LABELS: usize = 1000;

/// The label every value past [`MAX_LABELS`] becomes.
const OVERFLOW: &str = "other";

/// An interned label value: equal texts share one allocation.
#[derive(Debug, Clone)]
pub struct Label(Arc<str>);

/// The response extension through which a service labels a request.
#[derive(Debug, Clone)]
pub struct RouteLabel(pub Label);

impl Label {
    /// The interned value for `text` (or `other` once the table is full).
    pub fn intern(text: &str) -> Label {
        let mut table = table();
        if let Some(existing) = table.get(text) {
            return Label(existing.clone());
        }
        if table.len() >= MAX_LABELS {
            return Label(overflow(&mut table));
        }
        let value: Arc<str> = Arc::from(text);
        table.insert(Box::from(text), value.clone());
        Label(value)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// An identity for the value, equal for equal texts: metrics key their series on it.
    pub fn key(&self) -> usize {
        Arc::as_ptr(&self.0) as *const u8 as usize
    }

    /// The shared text.
    pub fn text(&self) -> &Arc<str> {
        &self.0
    }
}

impl PartialEq for Label {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Label {}

type Table = HashMap<Box<str>, Arc<str>>;

fn table() -> std::sync::MutexGuard<'static, Table> {
    static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
    // Inserts only: a panic cannot leave the table half-written.
    TABLE
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `other`, kept in the table (one slot past the limit) so it too has one address.
fn overflow(table: &mut Table) -> Arc<str> {
    table
        .entry(Box::from(OVERFLOW))
        .or_insert_with(|| Arc::from(OVERFLOW))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_texts_are_one_label_and_past_the_limit_everything_is_other() {
        let a = Label::intern("label-test-a");
        assert_eq!(a, Label::intern("label-test-a"));
        assert_eq!(a.key(), Label::intern("label-test-a").key());
        assert_ne!(a, Label::intern("label-test-b"));
        // Fill the table (other tests may have added a few labels of their own).
        for n in 0..MAX_LABELS {
            Label::intern(&format!("label-test-fill-{n}"));
        }
        let late = Label::intern("label-test-late");
        assert_eq!(late.as_str(), "other");
        assert_eq!(late, Label::intern("label-test-later"));
        assert!(table().len() <= MAX_LABELS + 1);
        // Values interned before the table filled keep their identity.
        assert_eq!(a.as_str(), "label-test-a");
        assert_eq!(a, Label::intern("label-test-a"));
    }
}

//! What a lease store refuses, and why: a lease key whose value is no lease (etcd), a Node
//! whose annotations make none (Kubernetes). Each reason is logged once (by the store's `log`)
//! and kept for status until the key holds a lease again, is gone, or a full listing no
//! longer has it. Shared between the store's watch and
//! whoever reads the list (status), hence the lock.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct Refusals<K> {
    map: Arc<Mutex<BTreeMap<K, String>>>,
    /// Logs a new reason.
    log: fn(&K, &str),
}

impl<K: Ord + Clone> Refusals<K> {
    pub fn new(log: fn(&K, &str)) -> Refusals<K> {
        Refusals {
            map: Arc::default(),
            log,
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<K, String>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `key` is refused for `why`, or (`None`) holds a lease again or is gone. `true` when the
    /// reason is new (and was logged).
    pub fn note(&self, key: K, why: Option<String>) -> bool {
        let mut r = self.map();
        let Some(why) = why else {
            r.remove(&key);
            return false;
        };
        let new = r.get(&key) != Some(&why);
        if new {
            (self.log)(&key, &why);
        }
        r.insert(key, why);
        new
    }

    /// A full listing's refusals replace those known before; the ones that are new are logged
    /// and returned (a key refused before for the same reason is not logged again).
    pub fn relist(&self, refused: impl IntoIterator<Item = (K, String)>) -> Vec<K> {
        let mut r = self.map();
        let before = std::mem::take(&mut *r);
        let mut new = Vec::new();
        for (key, why) in refused {
            if before.get(&key) != Some(&why) {
                (self.log)(&key, &why);
                new.push(key.clone());
            }
            r.insert(key, why);
        }
        new
    }

    /// As status shows them: `<what> <key>: <why>`.
    pub fn describe(&self, what: &str) -> Vec<String>
    where
        K: Display,
    {
        self.map()
            .iter()
            .map(|(k, why)| format!("{what} {k}: {why}"))
            .collect()
    }

    #[cfg(test)]
    pub fn get(&self, key: &K) -> Option<String> {
        self.map().get(key).cloned()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> String {
        x.to_string()
    }

    #[test]
    fn a_reason_is_new_once_and_a_relist_reports_only_what_changed() {
        let r: Refusals<String> = Refusals::new(|_, _| {});
        assert!(r.note(s("a"), Some(s("broken"))));
        assert!(!r.note(s("a"), Some(s("broken"))), "same reason: not again");
        assert!(r.note(s("a"), Some(s("other"))), "a new reason is");
        assert!(r.note(s("b"), Some(s("broken"))));
        // After 410 Gone or a compaction: "a" still refused for the same reason, "b" fixed,
        // "c" new.
        let new = r.relist([(s("a"), s("other")), (s("c"), s("bad"))]);
        assert_eq!(new, [s("c")]);
        assert_eq!(r.describe("node"), ["node a: other", "node c: bad"]);
        assert!(!r.note(s("c"), None));
        assert_eq!(r.get(&s("c")), None);
        assert!(r.relist([]).is_empty());
        assert!(r.is_empty());
    }
}

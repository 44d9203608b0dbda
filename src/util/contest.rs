//! Repairing what someone else keeps undoing, without fighting in a tight loop.
//!
//! podnetd puts its objects back when something else changes them (a route deleted by hand, a
//! rule flushed). Once, that is drift; over and over, it is another agent managing the same
//! object, and repairing at once every time would turn two agents into a busy loop. So each
//! object's repairs are tracked: the first few within a while are made at once (after a few
//! milliseconds for the burst of notifications to settle), every one after
//! that waits twice as long as the last (up to a ceiling), and an object undone that often is
//! *contested* — shown in status and doctor until it has been left alone for a while.
//!
//! Pure bookkeeping over `Instant`s the caller passes in; nothing is tracked for objects nobody
//! touches, so a quiet node holds no records.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// How patient to be.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// How long the first repairs wait, so that the burst of notifications one change makes
    /// (a device deleted takes its neighbours, FDB entries and then itself) is one undoing.
    pub settle: Duration,
    /// Repairs made after `settle` before backing off.
    pub free: u32,
    /// The first delay once backing off; each one after doubles it.
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
    /// Left alone this long, an object's record is forgotten (more than `max`, so a fight at
    /// the slowest pace still counts as one).
    pub quiet: Duration,
}

impl Policy {
    /// The wait before the repair that follows `strikes` undoings in a row.
    fn delay(&self, strikes: u32) -> Duration {
        match strikes.checked_sub(self.free + 1) {
            None => self.settle,
            Some(n) => self.base.saturating_mul(1u32 << n.min(20)).min(self.max),
        }
    }
}

/// Three repairs after 50 ms, then 250 ms doubling to 30 s; forgotten after a minute of peace.
pub const DEFAULT: Policy = Policy {
    settle: Duration::from_millis(50),
    free: 3,
    base: Duration::from_millis(250),
    max: Duration::from_secs(30),
    quiet: Duration::from_secs(60),
};

/// What is known about one object that was undone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Times it was found undone since the record began.
    pub undone: u64,
    /// Times podnetd put it back.
    pub repairs: u64,
    /// Undone in a row with less than `quiet` between: decides the delay.
    strikes: u32,
    pub first: Instant,
    pub last: Instant,
    /// When the next repair runs, if one is waiting.
    pub due: Option<Instant>,
}

/// An object something else keeps undoing, as status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contested {
    pub object: String,
    pub undone: u64,
    pub repairs: u64,
    /// Since the first time it was undone in this run of undoings.
    pub since: Duration,
    /// Until the next repair, if one waits.
    pub next: Option<Duration>,
}

/// The records, by object.
#[derive(Debug)]
pub struct Contest<K> {
    policy: Policy,
    records: HashMap<K, Record>,
}

impl<K: Hash + Eq + Clone> Contest<K> {
    pub fn new(policy: Policy) -> Contest<K> {
        Contest {
            policy,
            records: HashMap::new(),
        }
    }

    /// `key` was found undone: when to repair it. A repair already waiting keeps its time.
    pub fn undone(&mut self, key: K, now: Instant) -> Instant {
        let policy = self.policy;
        let r = self.records.entry(key).or_insert(Record {
            undone: 0,
            repairs: 0,
            strikes: 0,
            first: now,
            last: now,
            due: None,
        });
        if let Some(due) = r.due {
            return due;
        }
        if now.duration_since(r.last) > policy.quiet {
            r.strikes = 0;
            r.first = now;
        }
        r.undone += 1;
        r.strikes += 1;
        r.last = now;
        let due = now + policy.delay(r.strikes);
        r.due = Some(due);
        due
    }

    /// `key` is as wanted again (put back by someone else): no repair is needed.
    pub fn settled(&mut self, key: &K) {
        if let Some(r) = self.records.get_mut(key) {
            r.due = None;
        }
    }

    /// The repairs due by `now`, taken off the schedule (the caller repairs and calls
    /// `repaired`).
    pub fn take_due(&mut self, now: Instant) -> Vec<K> {
        let mut due = Vec::new();
        for (k, r) in &mut self.records {
            if r.due.is_some_and(|d| d <= now) {
                r.due = None;
                due.push(k.clone());
            }
        }
        due
    }

    pub fn record(&self, key: &K) -> Option<&Record> {
        self.records.get(key)
    }

    pub fn repaired(&mut self, key: &K) {
        if let Some(r) = self.records.get_mut(key) {
            r.repairs += 1;
        }
    }

    /// The earliest waiting repair.
    pub fn next_due(&self) -> Option<Instant> {
        self.records.values().filter_map(|r| r.due).min()
    }

    /// Forgets objects left alone for `quiet` (none waiting for a repair).
    pub fn expire(&mut self, now: Instant) {
        let quiet = self.policy.quiet;
        self.records
            .retain(|_, r| r.due.is_some() || now.duration_since(r.last) <= quiet);
    }

    /// Objects undone more often than the free repairs allow, until they have been left alone.
    pub fn contested(&self, now: Instant) -> impl Iterator<Item = (&K, &Record)> {
        let (free, quiet) = (self.policy.free, self.policy.quiet);
        self.records
            .iter()
            .filter(move |(_, r)| r.strikes > free && now.duration_since(r.last) <= quiet)
    }

    /// The contested objects `keep` keeps, described by `describe`.
    pub fn report(
        &self,
        now: Instant,
        keep: impl Fn(&K) -> bool,
        describe: impl Fn(&K) -> String,
    ) -> Vec<Contested> {
        self.contested(now)
            .filter(|(k, _)| keep(k))
            .map(|(k, r)| Contested {
                object: describe(k),
                undone: r.undone,
                repairs: r.repairs,
                since: now.saturating_duration_since(r.first),
                next: r.due.map(|d| d.saturating_duration_since(now)),
            })
            .collect()
    }

    /// Whether nothing is tracked (a quiet node).
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_few_repairs_at_once_then_doubling_delays_up_to_the_ceiling() {
        let mut c = Contest::new(DEFAULT);
        let t0 = Instant::now();
        let mut t = t0;
        let mut delays = Vec::new();
        for _ in 0..12 {
            let due = c.undone("route", t);
            delays.push(due.duration_since(t).as_millis());
            assert_eq!(c.next_due(), Some(due));
            t = due;
            assert_eq!(c.take_due(t), ["route"]);
            c.repaired(&"route");
            // Deleted again right after the repair.
            t += MS;
        }
        assert_eq!(
            delays,
            [
                50, 50, 50, 250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000
            ]
        );
        let (_, r) = c.contested(t).next().expect("contested");
        assert_eq!((r.undone, r.repairs), (12, 12));
        // Undone again while a repair waits: the same time, no extra strike.
        let due = c.undone("route", t);
        assert_eq!(c.undone("route", t + MS), due);
        assert_eq!(c.contested(t).next().unwrap().1.undone, 13);
        // The report says what it is told to keep.
        let all = c.report(t, |_| true, |k| k.to_string());
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].object.as_str(), all[0].undone), ("route", 13));
        assert!(c.report(t, |k| *k != "route", |k| k.to_string()).is_empty());
    }

    #[test]
    fn peace_forgets_and_settling_cancels() {
        let mut c = Contest::new(DEFAULT);
        let t0 = Instant::now();
        for i in 0..5 {
            let due = c.undone("fdb", t0 + i * 100 * MS);
            c.take_due(due);
        }
        let t = t0 + 1000 * MS;
        assert!(c.contested(t).next().is_some());
        // Put back by someone else while the repair waits.
        let due = c.undone("fdb", t);
        assert!(due > t);
        c.settled(&"fdb");
        assert!(c.take_due(due).is_empty() && c.next_due().is_none());
        // A minute later it is no longer contested, and then forgotten.
        let later = t0 + Duration::from_secs(62);
        assert!(c.contested(later).next().is_none());
        c.expire(later);
        assert!(c.is_empty());
        // And starts with free repairs again.
        assert_eq!(c.undone("fdb", later), later + DEFAULT.settle);
    }
}

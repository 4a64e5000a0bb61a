//! FIFO message groups (DESIGN rule 8): of each group one lease runs at a
//! time, in the order received; the next starts only when the one before
//! is settled.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::held::Lease;
use super::state::LeaseState;

/// One message group's leases: the one running, and those waiting behind it.
#[derive(Default)]
struct Group {
    running: Option<u64>,
    waiting: VecDeque<Arc<Lease>>,
}

/// The FIFO groups of one pipeline, held beside its leases so that
/// whoever settles a lease can move its group on.
#[derive(Default)]
pub(crate) struct Groups {
    map: Mutex<HashMap<String, Group>>,
    /// Leases waiting behind their group's running one.
    waiting: AtomicUsize,
}

/// What settling a group's lease lets happen.
#[derive(Default)]
pub(crate) struct Next {
    /// The next lease of the group, to run now.
    pub(crate) go: Vec<Arc<Lease>>,
    /// Waiting leases to give back (their group's head failed).
    pub(crate) release: Vec<Arc<Lease>>,
}

impl Groups {
    /// Leases waiting behind a running one of their group.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Takes new leases in receive order; returns those that may run now.
    pub(crate) fn admit(&self, leases: Vec<Arc<Lease>>) -> Vec<Arc<Lease>> {
        let mut map = self.map.lock().expect("groups lock");
        let mut go = Vec::new();
        for lease in leases {
            let key = lease.job.group_id.clone().unwrap_or_default();
            let g = map.entry(key).or_default();
            if g.running.is_none() || crate::sabotage::on(crate::sabotage::Sabotage::LoseFifoOrder)
            {
                g.running = Some(lease.id);
                go.push(lease);
            } else {
                g.waiting.push_back(lease);
                self.waiting.fetch_add(1, Ordering::AcqRel);
            }
        }
        go
    }

    /// Whether a lease is its group's running one.
    pub(crate) fn is_running(&self, lease: &Lease) -> bool {
        let key = lease.job.group_id.as_deref().unwrap_or_default();
        let map = self.map.lock().expect("groups lock");
        map.get(key).is_some_and(|g| g.running == Some(lease.id))
    }

    /// Whether a lease waits behind its group's running one.
    pub(crate) fn is_waiting(&self, lease: &Lease) -> bool {
        let key = lease.job.group_id.as_deref().unwrap_or_default();
        let map = self.map.lock().expect("groups lock");
        map.get(key)
            .is_some_and(|g| g.waiting.iter().any(|l| l.id == lease.id))
    }

    /// Moves on every group whose running lease is no longer held (it ended
    /// on a path that did not reach its group): the stall watch's repair.
    /// Returns each such group, its lease, and its waiting leases, which
    /// must be given back.
    pub(crate) fn repair(&self, held: impl Fn(u64) -> bool) -> Vec<(String, u64, Vec<Arc<Lease>>)> {
        let gone: Vec<(String, u64)> = {
            let map = self.map.lock().expect("groups lock");
            map.iter()
                .filter_map(|(k, g)| g.running.map(|id| (k.clone(), id)))
                .filter(|(_, id)| !held(*id))
                .collect()
        };
        let mut out = Vec::new();
        for (group, id) in gone {
            let mut map = self.map.lock().expect("groups lock");
            let Some(g) = map.get_mut(&group) else {
                continue;
            };
            if g.running != Some(id) {
                continue;
            }
            g.running = None;
            self.waiting.fetch_sub(g.waiting.len(), Ordering::AcqRel);
            let release: Vec<_> = g.waiting.drain(..).collect();
            map.remove(&group);
            out.push((group, id, release));
        }
        out
    }

    /// A lease ended: `finished` (deleted or dead-lettered) lets its group
    /// go on; otherwise the group's waiting leases are given back.
    pub(crate) fn settled(&self, lease: &Lease, finished: bool) -> Next {
        let mut next = Next::default();
        let key = lease.job.group_id.as_deref().unwrap_or_default();
        let mut map = self.map.lock().expect("groups lock");
        let Some(g) = map.get_mut(key) else {
            return next;
        };
        if g.running == Some(lease.id) {
            g.running = None;
            if finished {
                while let Some(l) = g.waiting.pop_front() {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    // A waiting lease given back meanwhile (a drain) is skipped.
                    if l.state() == LeaseState::Gated {
                        g.running = Some(l.id);
                        next.go.push(l);
                        break;
                    }
                }
            } else {
                self.waiting.fetch_sub(g.waiting.len(), Ordering::AcqRel);
                next.release.extend(g.waiting.drain(..));
            }
        } else if let Some(i) = g.waiting.iter().position(|l| l.id == lease.id) {
            g.waiting.remove(i);
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            if !finished {
                // It comes back later (lost, given back): the leases behind
                // it would overtake it, so they go back too and the queue
                // hands the group out again in order.
                let behind: Vec<_> = g.waiting.drain(i..).collect();
                self.waiting.fetch_sub(behind.len(), Ordering::AcqRel);
                next.release.extend(behind);
            }
        }
        if g.running.is_none() && g.waiting.is_empty() {
            map.remove(key);
        }
        next
    }
}

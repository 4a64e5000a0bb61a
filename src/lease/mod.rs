//! The lease table and each lease's lifecycle state: every received
//! message's lease, kept outside any actor so an actor that restarts loses
//! none (DESIGN rules 5 and 6).
//!
//! A lease is always in exactly one [`LeaseState`], and the state names the
//! actor that owns its next step. An actor that restarts re-derives its work
//! from the leases in its states: everything it needs (the receipt handle,
//! the processor's output, the ending to carry out) is kept in the lease.
//!
//! ```text
//!             ┌──────────── Gated (FIFO group, claim) ─────────────┐
//! receive ──▶ Pending ◀──── Probing (redelivery: result exists?) ──┤
//!               │                         │ yes                    │
//!               ▼                         ▼                        │
//!            Running ──▶ Processed ──▶ Stored ──▶ Settling ──▶ Ended
//!               │ (fail, panic)            (publish)  ▲  (delete, retry,
//!               └─────────────────────────────────────┘   dead-letter, release)
//! any state ──(lost: deadline passed, receipt refused)──▶ Ended
//! ```

mod groups;
mod held;
mod seen;
mod state;
mod table;

pub(crate) use groups::Groups;
pub use held::Lease;
pub use seen::{Arrival, SeenCache};
pub(crate) use state::{Ending, LeaseState, Move, Owner};
pub use table::LeaseTable;

#[cfg(test)]
mod tests;

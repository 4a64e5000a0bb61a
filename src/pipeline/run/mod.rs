//! The one way a job runs: input, split, process, the outcome's next step
//! (`outcome`), with a thin adapter for each kind of processor: sync ones on
//! worker threads (`pool`), async and batch ones as tasks (`runner`).

pub(crate) mod deadline; // effects only within a lease's deadline
pub(crate) mod outcome; // the one way a job runs: input, step, the outcome's next step
pub(crate) mod pool; // sync processors on worker threads
pub(crate) mod runner; // async and batch processors as tasks
pub(crate) mod split; // content-derived job ids and split messages
pub(crate) mod stuck; // hung worker threads, abandoned and replaced

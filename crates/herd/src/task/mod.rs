//! Naming a task: the registry (stable name + type fingerprint + build id),
//! the codec for arguments and results, and panic capture.

mod call;
mod codec;
mod panic;
mod registry;

pub use call::TaskFn;
pub(crate) use codec::{decode, encode};
pub use panic::PanicReport;
pub(crate) use panic::install_panic_hook;
pub use registry::{BatchRun, ItemFailure, PreparedTask, RunFailure, TaskEntry};
pub(crate) use registry::{build_id, find_by_name, find_by_type};

/// Items used by the `#[herd::task]` expansion. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use super::registry::{TASKS, fingerprint_of, prepare, run_batch, type_id_of_val};
    pub use linkme;
}

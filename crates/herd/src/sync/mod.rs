//! Shared state across processes and threads: the seed's locks (S9, C3) and
//! the rest of Python's `multiprocessing` synchronisation, robust against a
//! holder that dies, plus values and arrays in shared memory.
//!
//! Every object here lives in an anonymous shared-memory segment (a memfd:
//! nothing to leak in `/dev/shm`) and is a serde type, so it is passed to a
//! child process as a task argument like any other value (its file
//! descriptor travels beside the bytes). Clones share the same object.
//!
//! | Python | herd | when a holder dies |
//! |---|---|---|
//! | `Lock` | [`Lock`] | next acquirer gets [`LockError::Poisoned`] at once |
//! | `RLock` | [`RLock`] | same |
//! | `Semaphore`, `BoundedSemaphore` | [`Semaphore`], [`BoundedSemaphore`] | its permit is recovered (≤ 100 ms for a sleeping waiter) |
//! | `Event` | [`Event`] | (no holder) |
//! | `Condition` | [`Condition`] | its lock reports [`LockError::Poisoned`] |
//! | `Barrier` | [`Barrier`] | the barrier breaks (≤ 100 ms) |
//! | `Value`, `Array` | [`Value`], [`Array`] | their lock reports [`LockError::Poisoned`] |

mod barrier;
mod condition;
mod deadlock;
mod event;
mod lock;
mod robust;
mod semaphore;
mod shared;
mod value;

pub(crate) use lock::{LOCK_BODY, LockCore};
pub(crate) use robust::{Acquired, RawMutex};
pub(crate) use shared::{Kind, Region};

pub use barrier::{Barrier, BarrierError, Party};
pub use bytemuck::{Pod, Zeroable};
pub use condition::{Condition, ConditionGuard};
pub use deadlock::{Deadlock, Link, detect_deadlocks};
pub use event::Event;
pub use lock::{Lock, LockError, LockGuard, LockResult, PoisonCause, RLock, RLockGuard};
pub use semaphore::{BoundedSemaphore, Permit, Semaphore};
pub use value::{
    Array, ArrayGuard, AtomicInteger, AtomicPlain, IndexOutOfRange, Value, ValueGuard,
};

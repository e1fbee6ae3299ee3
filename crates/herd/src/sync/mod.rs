//! Shared state across processes: values in shared memory (and, to come,
//! the robust locks of the seed's S9 and C3).

mod value;

pub use value::{AtomicInteger, AtomicPlain, Value};

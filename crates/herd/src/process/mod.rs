//! Child processes that run a Rust function: builder, handle, start methods,
//! supervision and the child's side of the bootstrap.

mod builder;
mod child;
mod children;
mod error;
mod forkserver;
mod handle;
mod protocol;
mod spawn;
mod status;

pub use builder::{ProcessBuilder, StartMethod, Stdio, set_start_method, spawn, start_method};
pub use child::{CurrentProcess, current_process, init};
pub(crate) use children::arm_exit_handler;
pub use children::{ChildInfo, active_children};
pub use error::{ProcessError, Refusal, StartError};
pub use forkserver::forkserver_pid;
pub use handle::Process;
pub use status::{ExitStatus, ProcessState, Signal};

//! Inter-process plumbing shared by every primitive that lives in shared
//! memory: anonymous segments, and the side channel that carries their file
//! descriptors when a primitive is passed to a child as a task argument.

mod handles;
mod segment;

pub(crate) use handles::{collect_fds, export_fd, import_fd, provide_fds};
pub(crate) use segment::Segment;

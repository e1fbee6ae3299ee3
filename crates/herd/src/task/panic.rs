//! Capturing a panic in a child (message, location, backtrace) so that it can
//! cross the process boundary.

use std::any::Any;
use std::backtrace::Backtrace;
use std::cell::RefCell;
use std::sync::Once;

use serde::{Deserialize, Serialize};

/// A panic that happened in a child process, as reported to the parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PanicReport {
    /// The panic message (`"<non-string panic payload>"` when it was not text).
    pub message: String,
    /// `file:line:column` where the panic happened, when known.
    pub location: Option<String>,
    /// The child's backtrace at the panic, captured unconditionally.
    pub backtrace: String,
}

thread_local! {
    static LAST: RefCell<Option<(Option<String>, String)>> = const { RefCell::new(None) };
}

/// Installs (once) a hook that records the location and backtrace of a panic
/// on the current thread, then runs the previous hook (which prints it).
pub(crate) fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let location = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
            let backtrace = Backtrace::force_capture().to_string();
            LAST.with(|last| *last.borrow_mut() = Some((location, backtrace)));
            previous(info);
        }));
    });
}

impl PanicReport {
    /// Builds the report for a payload caught by `catch_unwind` on this thread.
    pub(crate) fn from_payload(payload: &(dyn Any + Send)) -> Self {
        let message = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "<non-string panic payload>".to_owned()
        };
        let (location, backtrace) = LAST
            .with(|last| last.borrow_mut().take())
            .unwrap_or((None, String::new()));
        Self {
            message,
            location,
            backtrace,
        }
    }
}

impl std::fmt::Display for PanicReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.location {
            Some(loc) => write!(f, "panicked at {loc}: {}", self.message),
            None => write!(f, "panicked: {}", self.message),
        }
    }
}

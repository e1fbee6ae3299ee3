//! [`Event`]: a flag that wakes every waiter, in every process.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::shared::{Kind, Region};
use crate::os;

/// A flag shared by threads and processes: [`set`](Self::set) wakes every
/// waiter, everywhere. Python's `multiprocessing.Event`. It has no holder,
/// so nobody's death can wedge it.
///
/// ```
/// use herd::sync::Event;
///
/// #[herd::task]
/// fn wait_for_go(go: Event) -> bool {
///     go.wait_timeout(std::time::Duration::from_secs(30))
/// }
///
/// fn main() {
///     herd::init();
///     let go = Event::new().unwrap();
///     let mut child = herd::spawn(wait_for_go, (go.clone(),)).unwrap();
///     go.set();
///     assert!(child.join().unwrap());
/// }
/// ```
#[derive(Clone)]
pub struct Event {
    region: Arc<Region>,
}

impl Event {
    /// A new, clear event.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            region: Arc::new(Region::create(Kind::Event, 0, 64)?),
        })
    }

    fn flag(&self) -> &AtomicU32 {
        // SAFETY: the body is 64-byte aligned, at least 64 bytes, lives as
        // long as the region, and is only used as this atomic.
        unsafe { AtomicU32::from_ptr(self.region.body().cast()) }
    }

    // The word: bit 0 is the flag; the other bits count the `set` calls,
    // so a waiter notices a `set` even if a `clear` follows at once.

    /// Sets the flag and wakes every waiter.
    pub fn set(&self) {
        let _ = self
            .flag()
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                Some(((w >> 1).wrapping_add(1) << 1) | 1)
            });
        os::futex_wake(self.flag(), os::WAKE_ALL);
    }

    /// Clears the flag.
    pub fn clear(&self) {
        self.flag().fetch_and(!1, Ordering::AcqRel);
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        self.flag().load(Ordering::Acquire) & 1 != 0
    }

    /// Waits until the flag is set.
    pub fn wait(&self) {
        self.wait_until(None);
    }

    /// Waits at most `timeout`; returns whether the flag is set.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(Instant::now().checked_add(timeout))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let first = self.flag().load(Ordering::Acquire);
        let mut seen = first;
        loop {
            if seen & 1 != 0 || seen >> 1 != first >> 1 {
                return true;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
            os::futex_wait(self.flag(), seen, deadline);
            seen = self.flag().load(Ordering::Acquire);
        }
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("set", &self.is_set())
            .finish()
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.region.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self {
            region: Arc::new(Region::deserialize(d, Kind::Event, |_| Some(64))?),
        })
    }
}

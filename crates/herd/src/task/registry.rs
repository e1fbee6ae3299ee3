//! The task registry: every `#[herd::task]` function adds one [`TaskEntry`]
//! to a link-time distributed slice (no code runs before `main`). A parent
//! finds a task's entry by the function's `TypeId`; a child finds it by the
//! stable name sent over the wire, then checks the type fingerprint and the
//! build id before it decodes a single argument.

use std::any::{TypeId, type_name};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::call::TaskFn;
use super::codec::{decode, encode};
use super::panic::PanicReport;

/// One registered task. Built by `#[herd::task]`; not constructed by hand.
#[derive(Debug)]
pub struct TaskEntry {
    /// `module_path!()::function_name`: stable across builds of the same source.
    pub name: &'static str,
    /// The `TypeId` of the function item.
    pub type_id: fn() -> TypeId,
    /// A hash of the argument and return types.
    pub fingerprint: fn() -> u64,
    /// Decodes the arguments and returns the call, ready to run.
    pub prepare: fn(&[u8]) -> Result<PreparedTask, String>,
    /// Runs a batch: decodes a list of argument tuples, calls the function
    /// on each, and encodes the values and the failures (pools send a chunk
    /// of a `map` this way, one message for all).
    pub run_batch: fn(&[u8]) -> Result<BatchRun, String>,
}

/// What [`TaskEntry::run_batch`] produced.
#[derive(Debug)]
pub struct BatchRun {
    /// The encoded pair `(values, failures)`; see [`run_batch`].
    pub results: Vec<u8>,
    /// How many items failed.
    pub failed: usize,
}

/// Why one item of a batch produced no value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ItemFailure {
    /// The call panicked.
    Panicked(PanicReport),
    /// The result did not serialize.
    ResultEncode(String),
}

/// A task whose arguments are decoded, ready to run in the child.
pub type PreparedTask = Box<dyn FnOnce() -> Result<Vec<u8>, RunFailure>>;

/// How running a prepared task failed.
#[derive(Debug)]
pub enum RunFailure {
    /// The task panicked.
    Panicked(PanicReport),
    /// The task's return value could not be encoded.
    ResultEncode(String),
}

/// Every registered task in this binary.
#[linkme::distributed_slice]
pub static TASKS: [TaskEntry];

/// `TypeId` of the value's type (for function items, the function itself).
pub fn type_id_of_val<T: 'static>(_: &T) -> TypeId {
    TypeId::of::<T>()
}

/// The type fingerprint of a task: a hash of its argument and return types.
pub fn fingerprint_of<F: TaskFn<A>, A>(_: F) -> u64 {
    let mut h = Fnv::new();
    h.write(type_name::<A>().as_bytes());
    h.write(b"->");
    h.write(type_name::<F::Output>().as_bytes());
    h.finish()
}

/// Decodes the arguments of task `f` and packages the call.
pub fn prepare<F, A>(f: F, input: &[u8]) -> Result<PreparedTask, String>
where
    F: TaskFn<A>,
    A: DeserializeOwned + 'static,
    F::Output: Serialize,
{
    let args: A = decode(input)?;
    Ok(Box::new(move || {
        match catch_unwind(AssertUnwindSafe(move || f.call(args))) {
            Ok(out) => encode(&out).map_err(RunFailure::ResultEncode),
            Err(payload) => Err(RunFailure::Panicked(PanicReport::from_payload(&*payload))),
        }
    }))
}

/// Runs task `f` on each of a batch of encoded argument tuples; see
/// [`TaskEntry::run_batch`]. `Err` when the batch does not decode.
///
/// The output is the MessagePack pair `(values, failures)`: the values of
/// the items that succeeded, in order, and `(index, ItemFailure)` for each
/// item that did not. The values are encoded one by one straight into the
/// output (an item whose result does not serialize fails alone), under an
/// array header whose count is patched at the end.
pub fn run_batch<F, A>(f: F, input: &[u8]) -> Result<BatchRun, String>
where
    F: TaskFn<A>,
    A: DeserializeOwned + 'static,
    F::Output: Serialize,
{
    let items: Vec<A> = decode(input)?;
    let mut out = Vec::with_capacity(16 + items.len() * 4);
    // [values, failures]; values under a fixed-width (array 32) header.
    rmp::encode::write_array_len(&mut out, 2).map_err(|e| e.to_string())?;
    let header = out.len();
    out.extend_from_slice(&[0xdd, 0, 0, 0, 0]);
    let mut values: u32 = 0;
    let mut failures: Vec<(u32, ItemFailure)> = Vec::new();
    for (index, args) in (0u32..).zip(items) {
        match catch_unwind(AssertUnwindSafe(move || f.call(args))) {
            Ok(value) => {
                let mark = out.len();
                match rmp_serde::encode::write(&mut out, &value) {
                    Ok(()) => values += 1,
                    Err(e) => {
                        // Only this item fails: its partial bytes go.
                        out.truncate(mark);
                        failures.push((index, ItemFailure::ResultEncode(e.to_string())));
                    }
                }
            }
            Err(payload) => failures.push((
                index,
                ItemFailure::Panicked(PanicReport::from_payload(&*payload)),
            )),
        }
    }
    out[header + 1..header + 5].copy_from_slice(&values.to_be_bytes());
    rmp_serde::encode::write(&mut out, &failures).map_err(|e| e.to_string())?;
    Ok(BatchRun {
        results: out,
        failed: failures.len(),
    })
}

/// Looks a task up by the `TypeId` of its function item.
pub(crate) fn find_by_type(id: TypeId) -> Option<&'static TaskEntry> {
    TASKS.iter().find(|e| (e.type_id)() == id)
}

/// Looks a task up by name; `Err` when two registered tasks share the name.
pub(crate) fn find_by_name(name: &str) -> Result<Option<&'static TaskEntry>, ()> {
    let mut found = TASKS.iter().filter(|e| e.name == name);
    let first = found.next();
    if found.next().is_some() {
        return Err(());
    }
    Ok(first)
}

/// This binary's build id: a hash of herd's version, every registered task's
/// name and fingerprint, and the size of the executable. Parent and child must
/// agree on it; a child from another build refuses the task.
pub(crate) fn build_id() -> u64 {
    static ID: OnceLock<u64> = OnceLock::new();
    *ID.get_or_init(|| {
        let mut entries: Vec<(&str, u64)> =
            TASKS.iter().map(|e| (e.name, (e.fingerprint)())).collect();
        entries.sort_unstable();
        let mut h = Fnv::new();
        h.write(env!("CARGO_PKG_VERSION").as_bytes());
        for (name, fp) in entries {
            h.write(name.as_bytes());
            h.write(&fp.to_le_bytes());
        }
        h.write(&crate::os::exe_size(&crate::os::self_exe()).to_le_bytes());
        h.finish()
    })
}

/// 64-bit FNV-1a: tiny, stable across Rust versions (unlike `DefaultHasher`).
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

//! The locks and atomics of the store, its event bus and the repair state:
//! std's, or, with the `shuttle` feature, shuttle's, whose scheduler
//! explores their interleavings (the `schedules` tests in `store.rs`).

#[cfg(feature = "shuttle")]
pub(crate) use shuttle::sync::{
    atomic::{AtomicU32, AtomicU64, Ordering},
    Mutex, MutexGuard,
};
#[cfg(not(feature = "shuttle"))]
pub(crate) use std::sync::{
    atomic::{AtomicU32, AtomicU64, Ordering},
    Mutex, MutexGuard,
};

/// Locks `m`, taking over a lock poisoned by a panicking holder (the data
/// it guards stays consistent: every critical section leaves it so).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

//! Gives back to the OS the memory the startup policy load has just freed.
//!
//! Loading and compiling a large policy allocates and frees tens of
//! megabytes on one thread. mimalloc keeps a thread's freed pages until that
//! thread allocates again, and the main thread, which loads the policy at
//! startup, then only waits: with 10,000 clients the gateway stayed at
//! ~104 MB resident after starting, against ~63 MB with the pages returned.
//!
//! Not done after reloads: there it did not lower the resident size
//! (measured; see BENCHMARKS.md, "Memory").

/// Returns the calling thread's free pages to the OS. Costs a walk of that
/// thread's heap; called once, at startup.
pub fn release_freed() {
    // SAFETY: `mi_collect` takes no pointer and touches only mimalloc's own
    // state for the calling thread and its arenas; it is safe to call at any
    // time, whichever allocator is global.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

//! Telling storages that the calling thread may block.
//!
//! A storage whose calls block (SQLite) runs them on tokio's blocking pool, so that they
//! never stall a runtime worker thread. A thread that does nothing but wait for the call
//! (the Python bindings' caller, in `Runtime::block_on` with the GIL released) gains
//! nothing from that hop and pays two thread wake-ups for it: inside [`caller_blocks`],
//! such storages run the call on the calling thread instead.

use std::cell::Cell;

thread_local! {
    static CALLER_BLOCKS: Cell<bool> = const { Cell::new(false) };
}

/// Run `f` (which drives storage futures on this thread, e.g. with `Runtime::block_on`)
/// with blocking storage work done inline on this thread. Never call it on a runtime
/// worker thread.
pub fn caller_blocks<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            CALLER_BLOCKS.with(|c| c.set(self.0));
        }
    }
    let _reset = Reset(CALLER_BLOCKS.with(|c| c.replace(true)));
    f()
}

/// Whether the current thread is inside [`caller_blocks`].
pub(crate) fn may_block() -> bool {
    CALLER_BLOCKS.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_inside_the_scope_and_restored_after() {
        assert!(!may_block());
        caller_blocks(|| {
            assert!(may_block());
            caller_blocks(|| assert!(may_block()));
            assert!(may_block());
        });
        assert!(!may_block());
        std::thread::spawn(|| assert!(!may_block())).join().unwrap();
    }
}

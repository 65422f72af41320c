//! The storage conformance suite against [`MemoryStorage`].

use std::sync::Arc;

use hauler_core::storage::{conformance, MemoryStorage, Storage};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_storage_passes_the_conformance_suite() {
    conformance::run_all(|| async { Arc::new(MemoryStorage::new()) as Arc<dyn Storage> }).await;
}

#[test]
fn memory_storage_is_not_polled() {
    assert_eq!(MemoryStorage::new().poll_interval(), None);
}

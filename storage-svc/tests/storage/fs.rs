//! What only the filesystem backend does.

use crate::harness::{Backend, Storage};

#[tokio::test]
async fn unfinished_writes_from_a_dead_process_are_cleaned_at_start() {
    let mut storage = Storage::start(Backend::Fs);
    storage.process.kill();
    let tmp = storage.data_dir().join("tmp");
    std::fs::write(tmp.join("put-1-0"), b"half an object").unwrap();
    storage.restart();
    assert_eq!(storage.leftovers(), Vec::<String>::new());
}

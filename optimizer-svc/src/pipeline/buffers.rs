//! Where the pipeline's pixel buffers come from and go back to: the
//! allocator, with no pool of our own in between.
//!
//! A pool of spare buffers used to sit here so a steady stream of photos
//! would not fault in fresh pages per stage. Measured through the mesh
//! (benches/memory.sh, BENCHMARKS.md "Memory"), it only added to the peak:
//! jobs that hand back more buffers than they take (a PNG's decoded image
//! comes from its decoder) filled it to its cap and kept it there while
//! idle, and under jemalloc, the binaries' allocator, freed pages are
//! reused for a second anyway before they go back to the system. Without
//! the pool (jemalloc in both runs), 30 uploads of the 2000×1125 PNG with
//! alpha peaked 54 MiB lower and the mixed stream at 8 concurrent uploads
//! 57 MiB lower.

/// A zeroed buffer of exactly `len` bytes. Zeroed: a buffer the decoder
/// fills only in part (a damaged image) must not show another image.
pub fn take(len: usize) -> Vec<u8> {
    vec![0; len]
}

/// Frees a buffer a stage is done with.
pub fn give_back(buffer: Vec<u8>) {
    drop(buffer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_zeroed_at_the_requested_length() {
        let mut first = take(3 << 20);
        assert_eq!(first.len(), 3 << 20);
        first.fill(0xAB);
        give_back(first);
        let again = take(3 << 20);
        assert_eq!(again.len(), 3 << 20);
        assert!(
            again.iter().all(|&byte| byte == 0),
            "nothing of the last image shows"
        );
    }
}

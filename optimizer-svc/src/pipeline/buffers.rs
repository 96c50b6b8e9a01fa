//! Pixel buffers handed back after a job and reused by the next one, so a
//! steady stream of photos does not allocate, fault in and free several
//! megabytes per stage per image. Every user overwrites the whole buffer, so
//! what a reused one still holds never shows.

use std::sync::Mutex;

/// Larger buffers (a rare huge image) are freed rather than kept.
const LARGEST_KEPT: usize = 48 << 20;
/// The most memory kept idle, whatever the number of workers.
const MOST_KEPT: usize = 128 << 20;

static SPARE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A buffer of exactly `len` bytes: a spare one when one is large enough,
/// else a new one.
pub fn take(len: usize) -> Vec<u8> {
    let reused = {
        let mut spare = SPARE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // The smallest that fits, so large buffers stay for large images.
        let best = spare
            .iter()
            .enumerate()
            .filter(|(_, buffer)| buffer.capacity() >= len)
            .min_by_key(|(_, buffer)| buffer.capacity())
            .map(|(i, _)| i);
        best.map(|i| spare.swap_remove(i))
    };
    match reused {
        Some(mut buffer) => {
            buffer.resize(len, 0);
            buffer
        }
        None => vec![0; len],
    }
}

/// Hands a buffer back for reuse (or frees it, past the limits).
pub fn give_back(buffer: Vec<u8>) {
    if buffer.capacity() < (1 << 20) || buffer.capacity() > LARGEST_KEPT {
        return;
    }
    let mut spare = SPARE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    spare.push(buffer);
    // Over the budget: drop the smallest first, they are the cheapest to remake.
    while spare.iter().map(Vec::capacity).sum::<usize>() > MOST_KEPT {
        let smallest = spare
            .iter()
            .enumerate()
            .min_by_key(|(_, buffer)| buffer.capacity())
            .map(|(i, _)| i)
            .expect("over budget means not empty");
        spare.swap_remove(smallest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_at_the_requested_length() {
        let first = take(3 << 20);
        let address = first.as_ptr();
        give_back(first);
        let again = take(2 << 20);
        assert_eq!(again.len(), 2 << 20);
        assert_eq!(again.as_ptr(), address, "the spare buffer is reused");
        give_back(again);
        // Tiny and huge buffers are not kept.
        give_back(vec![0; 10]);
        give_back(Vec::with_capacity(LARGEST_KEPT + 1));
        let spare = SPARE.lock().unwrap();
        assert!(
            spare
                .iter()
                .all(|b| (1 << 20..=LARGEST_KEPT).contains(&b.capacity()))
        );
        assert!(spare.iter().map(Vec::capacity).sum::<usize>() <= MOST_KEPT);
    }
}

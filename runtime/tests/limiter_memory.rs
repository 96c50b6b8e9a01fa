//! The stated bound on rate limit state: 100,000 callers in under 4 MiB,
//! measured by counting every allocation the buckets make.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicIsize, Ordering},
};

use nws_runtime::policy::{Rate, limit::Buckets};

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only
// the byte count is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on as it is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MIB: isize = 1 << 20;

#[test]
fn a_hundred_thousand_callers_fit_in_four_mib_and_more_do_not_grow_it() {
    let rate = Rate {
        per_second: 0.001,
        burst: 10,
    };
    let max_keys = 100_000;
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let buckets = Buckets::new(rate, max_keys);
    // Long identities, as `sub` claims can be: the buckets keep hashes.
    let identity = |n: usize| format!("sub:{n:0>120}");
    for caller in 0..max_keys {
        buckets.check(&identity(caller));
    }
    let full = LIVE_BYTES.load(Ordering::Relaxed) - before;
    println!("{} callers: {:.2} MiB", buckets.len(), full as f64 / MIB as f64);
    assert!(full < 4 * MIB, "{full} bytes");

    // Four times as many, all still draining: the nearest to full are
    // forgotten, memory stays put.
    for caller in max_keys..4 * max_keys {
        buckets.check(&identity(caller));
    }
    let flooded = LIVE_BYTES.load(Ordering::Relaxed) - before;
    println!(
        "after 400,000 callers: {} kept, {:.2} MiB",
        buckets.len(),
        flooded as f64 / MIB as f64
    );
    assert!(buckets.len() <= max_keys + 16, "{}", buckets.len());
    assert!(flooded < 4 * MIB, "{flooded} bytes");
}

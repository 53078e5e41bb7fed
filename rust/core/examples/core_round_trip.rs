//! Machine probe: `cargo run --release -p unimask-core --example core_round_trip -- [ROUNDS]`
//! prints how long a cache line takes to go from one thread to another and back (two threads
//! of this process bouncing one atomic counter, ROUNDS times; median of 5 tries).
//!
//! Why it is here: the tokenizer's 1 -> 2 thread scaling on a shared VM depends on where the
//! host places the two vCPUs. When they share a last-level cache the round trip is ~50-150 ns
//! and English scales 1.8-2.0x; when they sit on cores ~400 ns apart (no shared cache) every
//! cache line one thread writes and the other reads (the output columns, the texts' first
//! bytes next to their reference counts) crosses the slow link and the same code scales
//! 1.55-1.65x, while two single-thread *processes* still lose only ~4% each. Run this next to
//! `unimask bench --filter scaling` to tell the two cases apart (docs/tokenizer.md).
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

fn one_try(rounds: u64) -> f64 {
    let flag = AtomicU64::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..rounds {
                while flag.load(Ordering::Acquire) != 2 * i + 1 {
                    std::hint::spin_loop();
                }
                flag.store(2 * i + 2, Ordering::Release);
            }
        });
        let t = Instant::now();
        for i in 0..rounds {
            flag.store(2 * i + 1, Ordering::Release);
            while flag.load(Ordering::Acquire) != 2 * i + 2 {
                std::hint::spin_loop();
            }
        }
        t.elapsed().as_nanos() as f64 / rounds as f64
    })
}

fn main() {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        // Two spinning threads on one core would wait for preemption every round.
        println!("one CPU available: no core-to-core round trip to measure");
        return;
    }
    let rounds: u64 = std::env::args().nth(1).map_or(100_000, |s| {
        s.parse().expect("ROUNDS must be a positive integer")
    });
    let mut tries: Vec<f64> = (0..5).map(|_| one_try(rounds.max(1))).collect();
    tries.sort_by(f64::total_cmp);
    println!(
        "core-to-core round trip: {:.0} ns (median of 5 x {rounds})",
        tries[2]
    );
}

//! Scaling harness: `cargo run --release -p unimask-core --example twin_threads -- VOCAB FILE [ITERS]`
//! encodes the non-empty lines of FILE (uncased BERT rules) three ways and prints MB/s (median
//! call) for each, three rounds:
//!
//! - `one`: `encode_batch` on 1 thread;
//! - `twins`: two threads of this process, each running its own 1-thread `encode_batch` of the
//!   whole file (what two cores give when they share nothing but the machine);
//! - `two`: `encode_batch` on 2 threads.
//!
//! `two` against the sum of `twins` is the parallel path's own cost (chunk copies, placement,
//! the pool); `twins` against twice `one` is the machine's (shared cache and memory).
use std::time::Instant;

use unimask_core::tokenizer::{EncodeOptions, Tokenizer, TokenizerConfig};
use unimask_core::vocab::Vocab;

/// The allocator the Python extension installs (large output blocks kept for the next call).
#[global_allocator]
static ALLOC: unimask_core::block_cache::BlockCache = unimask_core::block_cache::BlockCache::new();

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let vocab = Vocab::from_text(&std::fs::read_to_string(&args[1]).unwrap()).unwrap();
    let text = std::fs::read_to_string(&args[2]).unwrap();
    let iters: usize = args.get(3).map_or(100, |s| s.parse().unwrap());
    let lines: Vec<&str> = text.split('\n').filter(|l| !l.trim().is_empty()).collect();
    let bytes: usize = lines.iter().map(|l| l.len()).sum();
    let tok = Tokenizer::new(vocab, TokenizerConfig::default()).unwrap();
    let opts = EncodeOptions::default();
    let run = |threads: usize| {
        let mut times = Vec::with_capacity(iters);
        for _ in 0..iters {
            let t = Instant::now();
            let b = tok
                .encode_batch(&lines, None, &opts, Some(threads))
                .unwrap();
            times.push(t.elapsed().as_secs_f64());
            std::hint::black_box(b);
        }
        times.sort_by(|a, b| a.total_cmp(b));
        bytes as f64 / times[iters / 2] / 1e6
    };
    for round in 0..3 {
        let one = run(1);
        let twins: Vec<f64> = std::thread::scope(|s| {
            let h: Vec<_> = (0..2).map(|_| s.spawn(|| run(1))).collect();
            h.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let two = run(2);
        println!(
            "round {round}: one {one:.0} MB/s | twins {:.0} + {:.0} MB/s | two {two:.0} MB/s ({:.2}x one, {:.0}% of twins)",
            twins[0],
            twins[1],
            two / one,
            100.0 * two / (twins[0] + twins[1])
        );
    }
}

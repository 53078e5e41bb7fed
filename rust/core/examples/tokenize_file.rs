//! Profiling harness: `cargo run --release -p unimask-core --example tokenize_file -- VOCAB FILE [ITERS] [THREADS]`
//! encodes the non-empty lines of FILE with the uncased BERT rules, ITERS times, and prints MB/s
//! (best and median call). It uses the allocator the Python extension installs
//! (`block_cache`), so no malloc tunables are needed for steady numbers.
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
    let iters: usize = args.get(3).map_or(50, |s| s.parse().unwrap());
    let threads: usize = args.get(4).map_or(1, |s| s.parse().unwrap());
    let lines: Vec<&str> = text.split('\n').filter(|l| !l.trim().is_empty()).collect();
    let bytes: usize = lines.iter().map(|l| l.len()).sum();
    let tok = Tokenizer::new(vocab, TokenizerConfig::default()).unwrap();
    let opts = EncodeOptions::default();
    let mut times = Vec::with_capacity(iters);
    let mut n = 0;
    for _ in 0..iters {
        let t = Instant::now();
        let b = tok
            .encode_batch(&lines, None, &opts, Some(threads))
            .unwrap();
        times.push(t.elapsed().as_secs_f64());
        n = b.tokens.len();
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let (best, median) = (times[0], times[times.len() / 2]);
    println!(
        "{} lines, {} bytes, {} tokens: best {:.1} MB/s, median {:.1} MB/s",
        lines.len(),
        bytes,
        n,
        bytes as f64 / best / 1e6,
        bytes as f64 / median / 1e6
    );
}

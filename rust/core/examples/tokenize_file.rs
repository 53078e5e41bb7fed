//! Profiling harness: `cargo run --release -p unimask-core --example tokenize_file -- VOCAB FILE [ITERS] [THREADS|twins|spaced]`
//! encodes the non-empty lines of FILE with the uncased BERT rules, ITERS times, and prints MB/s
//! (best and median call). It uses the allocator the Python extension installs
//! (`block_cache`), so no malloc tunables are needed for steady numbers.
//!
//! With `twins` for THREADS it compares, three rounds, median MB/s of:
//! - `one`: `encode_batch` on 1 thread;
//! - `twins`: two threads of this process, each running its own 1-thread `encode_batch` of the
//!   whole file (what two cores give when they share nothing but the machine);
//! - `two`: `encode_batch` on 2 threads.
//!
//! `two` against the sum of `twins` is the parallel path's own cost (chunk copies, placement,
//! the pool); `twins` against twice `one` is the machine's (shared cache and memory).
//!
//! With `spaced` for THREADS it times calls on 1 and 2 threads back to back and each after a
//! 30 ms pause (the calling thread asleep, or spinning without touching memory), and 1-thread
//! calls after the pause followed by encoding the file's distinct words once (untimed): how
//! much of a spaced call's extra time is the vocabulary lookups' working set going cold.
use std::time::{Duration, Instant};

use unimask_core::tokenizer::{EncodeOptions, Tokenizer, TokenizerConfig};
use unimask_core::vocab::Vocab;

/// The allocator the Python extension installs (large output blocks kept for the next call).
#[global_allocator]
static ALLOC: unimask_core::block_cache::BlockCache = unimask_core::block_cache::BlockCache::new();

/// Seconds of each of `iters` calls on `threads` threads, sorted, and the token count.
fn time_calls(tok: &Tokenizer, lines: &[&str], iters: usize, threads: usize) -> (Vec<f64>, usize) {
    time_calls_after(tok, lines, iters, threads, || {})
}

/// [`time_calls`], running `before` (untimed) ahead of each call.
fn time_calls_after(
    tok: &Tokenizer,
    lines: &[&str],
    iters: usize,
    threads: usize,
    mut before: impl FnMut(),
) -> (Vec<f64>, usize) {
    let opts = EncodeOptions::default();
    let mut times = Vec::with_capacity(iters);
    let mut n = 0;
    for _ in 0..iters {
        before();
        let t = Instant::now();
        let b = tok.encode_batch(lines, None, &opts, Some(threads)).unwrap();
        times.push(t.elapsed().as_secs_f64());
        n = b.tokens.len();
    }
    times.sort_by(|a, b| a.total_cmp(b));
    (times, n)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let vocab = Vocab::from_text(&std::fs::read_to_string(&args[1]).unwrap()).unwrap();
    let text = std::fs::read_to_string(&args[2]).unwrap();
    let iters: usize = args.get(3).map_or(50, |s| s.parse().unwrap());
    let threads = args.get(4).map_or("1", String::as_str);
    let lines: Vec<&str> = text.split('\n').filter(|l| !l.trim().is_empty()).collect();
    let bytes: usize = lines.iter().map(|l| l.len()).sum();
    let tok = Tokenizer::new(vocab, TokenizerConfig::default()).unwrap();
    let mb_s = |times: &[f64]| bytes as f64 / times[times.len() / 2] / 1e6;
    if threads == "twins" {
        for round in 0..3 {
            let one = mb_s(&time_calls(&tok, &lines, iters, 1).0);
            let twins: Vec<f64> = std::thread::scope(|s| {
                let h: Vec<_> = (0..2)
                    .map(|_| s.spawn(|| mb_s(&time_calls(&tok, &lines, iters, 1).0)))
                    .collect();
                h.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let two = mb_s(&time_calls(&tok, &lines, iters, 2).0);
            println!(
                "round {round}: one {one:.0} MB/s | twins {:.0} + {:.0} MB/s | two {two:.0} MB/s ({:.2}x one, {:.0}% of twins)",
                twins[0],
                twins[1],
                two / one,
                100.0 * two / (twins[0] + twins[1])
            );
        }
        return;
    }
    if threads == "spaced" {
        let pause = Duration::from_millis(30);
        let spin = || {
            let end = Instant::now() + pause;
            while Instant::now() < end {
                std::hint::spin_loop();
            }
        };
        let mut seen = std::collections::HashSet::new();
        let words: Vec<&str> = lines
            .iter()
            .flat_map(|l| l.split(|c: char| !c.is_alphanumeric()))
            .filter(|w| !w.is_empty() && seen.insert(*w))
            .collect();
        let opts = EncodeOptions::default();
        let iters = iters.min(40); // each call here costs a 30 ms pause
        for threads in [1, 2] {
            let ms = |t: &[f64]| t[t.len() / 2] * 1e3;
            let back = ms(&time_calls(&tok, &lines, iters, threads).0);
            let slept =
                ms(&time_calls_after(&tok, &lines, iters, threads, || std::thread::sleep(pause)).0);
            let spun = ms(&time_calls_after(&tok, &lines, iters, threads, spin).0);
            print!(
                "{threads} thread(s), median ms a call: back to back {back:.2} | after 30 ms asleep {slept:.2} | spinning {spun:.2}"
            );
            if threads == 1 {
                let warmed = ms(&time_calls_after(&tok, &lines, iters, 1, || {
                    spin();
                    std::hint::black_box(tok.encode_batch(&words, None, &opts, Some(1)).unwrap());
                })
                .0);
                print!(
                    " | spinning, then the {} distinct words {warmed:.2}",
                    words.len()
                );
            }
            println!();
        }
        return;
    }
    let threads: usize = threads.parse().unwrap();
    let (times, n) = time_calls(&tok, &lines, iters, threads);
    println!(
        "{} lines, {} bytes, {} tokens: best {:.1} MB/s, median {:.1} MB/s",
        lines.len(),
        bytes,
        n,
        bytes as f64 / times[0] / 1e6,
        mb_s(&times)
    );
}

//! A fork-aware thread pool.
//!
//! rayon's global pool is created once per process; after `fork()` (PyTorch DataLoader
//! workers) the child inherits the pool's bookkeeping but not its threads, and the first
//! parallel call hangs. unimask never uses the global pool: [`run`] looks up a pool keyed
//! by `(process id, thread count)` and builds a fresh one when the process id changed.
//! Results never depend on the thread count: callers split work into fixed chunks and
//! write each chunk's output to its own slot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rayon::{ThreadPool, ThreadPoolBuilder};

use crate::{Error, Result};

struct Cached {
    pid: u32,
    threads: usize,
    pool: Arc<ThreadPool>,
}

fn cache() -> &'static Mutex<Vec<Cached>> {
    static CACHE: OnceLock<Mutex<Vec<Cached>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(Vec::new()))
}

/// Number of threads used when the caller passes `None`: the machine's parallelism.
///
/// `std::thread::available_parallelism` reads the CPU affinity and cgroup quota files (~25 µs
/// here, more than encoding a short batch), so the answer is kept, per process: a forked
/// DataLoader worker asks again (its affinity may have been narrowed). A change of affinity
/// inside a running process is not seen.
pub fn default_threads() -> usize {
    // (process id << 32) | threads; 0 = not known yet.
    static KNOWN: AtomicU64 = AtomicU64::new(0);
    let pid = u64::from(std::process::id());
    let known = KNOWN.load(Ordering::Relaxed);
    if known != 0 && known >> 32 == pid {
        return (known & 0xffff_ffff) as usize;
    }
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(u32::MAX as usize);
    KNOWN.store(pid << 32 | n as u64, Ordering::Relaxed);
    n
}

/// Resolve a user-facing `num_threads` (None or 0 = all cores). Rejects absurd values.
pub fn resolve_threads(num_threads: Option<usize>) -> Result<usize> {
    match num_threads {
        None | Some(0) => Ok(default_threads()),
        Some(n) if n > 1024 => Err(Error::InvalidInput(format!(
            "num_threads must be between 1 and 1024, got {n}"
        ))),
        Some(n) => Ok(n),
    }
}

/// The pool for `threads` threads in the current process (built on first use, rebuilt after fork).
pub fn get(threads: usize) -> Result<Arc<ThreadPool>> {
    let pid = std::process::id();
    let mut guard = cache().lock().unwrap_or_else(|p| p.into_inner());
    if guard.iter().any(|c| c.pid != pid) {
        // Inherited from the parent across fork: its worker threads do not exist here.
        // Forget (leak) them rather than run their destructors, which would wait forever.
        for stale in guard.drain(..) {
            std::mem::forget(stale.pool);
        }
    }
    if let Some(c) = guard.iter().find(|c| c.threads == threads) {
        return Ok(Arc::clone(&c.pool));
    }
    let pool = ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("unimask-{i}"))
        .build()
        .map_err(|e| Error::Internal(format!("cannot start a thread pool: {e}")))?;
    let pool = Arc::new(pool);
    guard.push(Cached {
        pid,
        threads,
        pool: Arc::clone(&pool),
    });
    Ok(pool)
}

/// Run `f` inside the pool for `num_threads` (None = all cores); one thread runs inline.
pub fn run<R: Send>(num_threads: Option<usize>, f: impl FnOnce() -> R + Send) -> Result<R> {
    let threads = resolve_threads(num_threads)?;
    if threads == 1 {
        return Ok(f());
    }
    Ok(get(threads)?.install(f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    #[test]
    fn pools_are_reused_per_thread_count() {
        let a = get(2).unwrap();
        let b = get(2).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.current_num_threads(), 2);
    }

    #[test]
    fn run_uses_requested_threads_and_result_is_independent_of_them() {
        let sum = |t| {
            run(Some(t), || {
                (0..10_000u64).into_par_iter().map(|x| x * x).sum::<u64>()
            })
            .unwrap()
        };
        let expect: u64 = (0..10_000u64).map(|x| x * x).sum();
        assert_eq!(sum(1), expect);
        assert_eq!(sum(3), expect);
        assert_eq!(run(Some(3), rayon::current_num_threads).unwrap(), 3);
    }

    #[test]
    fn absurd_thread_counts_are_rejected() {
        assert!(matches!(
            resolve_threads(Some(5000)),
            Err(Error::InvalidInput(_))
        ));
        assert_eq!(resolve_threads(Some(0)).unwrap(), default_threads());
    }

    #[test]
    fn default_threads_is_the_machine_parallelism_and_stays() {
        let want = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(default_threads(), want);
        assert_eq!(default_threads(), want); // the kept answer
        assert_eq!(resolve_threads(None).unwrap(), want);
    }
}

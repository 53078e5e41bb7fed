//! Counter-based random numbers: a pure function of (seed, epoch, sample index).
//!
//! Dynamic masking (RoBERTa; fairseq seeds each sample with `(seed, epoch, index)`) needs a
//! fresh but reproducible mask every time a sample is seen. A stateful generator shared by a
//! batch would make the masks depend on the batch composition, the thread count and the
//! number of DataLoader workers. Here every sample owns its own stream, keyed by
//! `(seed, epoch, index, stream)`: the key is hashed with SplitMix64's finalizer and the
//! stream is SplitMix64 (a Weyl sequence passed through the same finalizer), which passes
//! BigCrush and is trivially cheap. Nothing here is cryptographic.

/// SplitMix64's increment (the golden ratio in 64-bit fixed point).
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function (Stafford's "mix13" variant).
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Separate streams for separate purposes of the same sample, so adding a draw in one
/// never shifts the draws of another.
pub mod stream {
    /// Masking decisions (positions, 80/10/10).
    pub const MASK: u64 = 1;
    /// UNILM attention-mode draw.
    pub const MODE: u64 = 2;
    /// Truncation choices (which end of which segment).
    pub const TRUNCATE: u64 = 3;
    /// NSP pair building for one document.
    pub const NSP: u64 = 4;
    /// Span corruption (MASS, T5).
    pub const SPAN: u64 = 5;
    /// Shuffling of dataset orders.
    pub const SHUFFLE: u64 = 6;
}

/// A SplitMix64 stream whose starting point is a hash of `(seed, epoch, index, stream)`.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// The stream of one sample: a pure function of its four keys.
    pub fn new(seed: u64, epoch: u64, index: u64, stream: u64) -> Self {
        let mut h = mix64(seed ^ 0x5EED_0000_0000_0001);
        h = mix64(h ^ epoch.wrapping_mul(GAMMA));
        h = mix64(
            h ^ index
                .wrapping_add(0xA5A5_A5A5)
                .wrapping_mul(0xD1B5_4A32_D192_ED03),
        );
        h = mix64(h ^ stream.wrapping_mul(0x8CB9_2BA7_2F3D_8DD7));
        Rng { state: h }
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GAMMA);
        mix64(self.state)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    #[inline]
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// `true` with probability `p`.
    #[inline]
    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    /// Uniform integer in `[0, n)` without modulo bias (Lemire's method). `n` must be > 0.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        let mut m = (self.next_u64() as u128) * (n as u128);
        if (m as u64) < n {
            let t = n.wrapping_neg() % n;
            while (m as u64) < t {
                m = (self.next_u64() as u128) * (n as u128);
            }
        }
        (m >> 64) as u64
    }

    /// Uniform integer in `[lo, hi]` (inclusive, like Python's `random.randint`).
    #[inline]
    pub fn randint(&mut self, lo: usize, hi: usize) -> usize {
        debug_assert!(lo <= hi);
        lo + self.below((hi - lo) as u64 + 1) as usize
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }

    /// Step `i` of a forward Fisher-Yates shuffle: swap a uniformly chosen element of
    /// `v[i..]` into place `i` and return it. Calling it for `i = 0, 1, ...` visits `v` in a
    /// uniformly random order and can stop early (only the visited prefix costs draws).
    #[inline]
    pub fn shuffle_step<T: Copy>(&mut self, v: &mut [T], i: usize) -> T {
        let j = i + self.below((v.len() - i) as u64) as usize;
        v.swap(i, j);
        v[i]
    }

    /// Index drawn from a cumulative distribution `cum` (non-decreasing, last = total > 0).
    pub fn pick_cumulative(&mut self, cum: &[f64]) -> usize {
        let total = *cum.last().unwrap_or(&0.0);
        let u = self.uniform() * total;
        cum.iter()
            .position(|&c| u < c)
            .unwrap_or(cum.len().saturating_sub(1))
    }
}

/// A permutation of `0..n` that is a pure function of `(seed, epoch)` (dataset shuffling).
/// An `n` whose `8 * n` bytes cannot be allocated is an `InvalidInput` error naming `n` (the
/// allocation is fallible, so it never aborts the process).
pub fn permutation(n: usize, seed: u64, epoch: u64) -> crate::Result<Vec<u64>> {
    let mut v: Vec<u64> = Vec::new();
    v.try_reserve_exact(n).map_err(|e| {
        crate::Error::InvalidInput(format!(
            "permutation of n={n} elements: cannot allocate {n} indices ({e})"
        ))
    })?;
    v.extend(0..n as u64);
    Rng::new(seed, epoch, u64::MAX, stream::SHUFFLE).shuffle(&mut v);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_too_large_is_an_error_not_an_abort() {
        // 2**62 * 8 bytes overflows isize; 2**59 * 8 bytes (4 EiB) cannot be allocated.
        for n in [1usize << 62, 1 << 59, usize::MAX] {
            match permutation(n, 0, 0) {
                Err(crate::Error::InvalidInput(m)) => assert!(m.contains(&format!("n={n}")), "{m}"),
                other => panic!("n={n}: {:?}", other.map(|v| v.len())),
            }
        }
    }

    #[test]
    fn streams_are_pure_functions_of_their_keys() {
        let a: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::new(1, 2, 3, 4);
                move |_| r.next_u64()
            })
            .collect();
        let mut r = Rng::new(1, 2, 3, 4);
        let b: Vec<u64> = (0..5).map(|_| r.next_u64()).collect();
        assert_eq!(a, b);
        for other in [
            Rng::new(0, 2, 3, 4),
            Rng::new(1, 3, 3, 4),
            Rng::new(1, 2, 4, 4),
            Rng::new(1, 2, 3, 5),
        ] {
            let mut o = other;
            assert_ne!(o.next_u64(), a[0]);
        }
    }

    #[test]
    fn below_is_unbiased_and_in_range() {
        let mut r = Rng::new(7, 0, 0, 0);
        let n = 6u64;
        let draws = 60_000;
        let mut counts = [0usize; 6];
        for _ in 0..draws {
            let x = r.below(n);
            assert!(x < n);
            counts[x as usize] += 1;
        }
        // binomial sd = sqrt(60000 * 1/6 * 5/6) ~ 91; 5 sd tolerance
        for c in counts {
            assert!((c as f64 - 10_000.0).abs() < 460.0, "{counts:?}");
        }
    }

    #[test]
    fn uniform_mean_and_bernoulli_rate() {
        let mut r = Rng::new(11, 1, 2, 3);
        let n = 100_000;
        let mean: f64 = (0..n).map(|_| r.uniform()).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.005);
        let hits = (0..n).filter(|_| r.bernoulli(0.15)).count() as f64;
        // sd = sqrt(n p q) ~ 113
        assert!((hits - 15_000.0).abs() < 600.0);
    }

    #[test]
    fn shuffle_and_permutation_are_permutations() {
        let p = permutation(1000, 3, 4).unwrap();
        let mut s = p.clone();
        s.sort_unstable();
        assert_eq!(s, (0..1000).collect::<Vec<_>>());
        assert_eq!(p, permutation(1000, 3, 4).unwrap());
        assert_ne!(p, permutation(1000, 3, 5).unwrap());
    }

    #[test]
    fn randint_and_cumulative_picks() {
        let mut r = Rng::new(5, 5, 5, 5);
        for _ in 0..1000 {
            let x = r.randint(2, 4);
            assert!((2..=4).contains(&x));
        }
        let cum = [0.5, 0.5, 1.0];
        let mut c = [0usize; 3];
        for _ in 0..10_000 {
            c[r.pick_cumulative(&cum)] += 1;
        }
        assert_eq!(c[1], 0);
        assert!((c[0] as f64 - 5000.0).abs() < 300.0);
    }
}

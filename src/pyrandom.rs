//! A bit-exact port of the parts of CPython's `random.Random` that
//! lm-evaluation-harness relies on: seeding from a non-negative integer,
//! `random()`, `getrandbits()`, `sample()` and `choices()` (unweighted).
//!
//! lm-eval draws few-shot examples with `random.Random(seed).sample(...)` and
//! bootstraps stderrs with `random.Random(i).choices(...)`. Reproducing the
//! Mersenne Twister and CPython's sampling algorithms here makes our few-shot
//! prompts and bootstrap replicates identical to lm-eval's, draw for draw.
//! Pure: no I/O, no global state.

const N: usize = 624;
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// CPython's `random.Random`, seeded like `random.Random(seed)` for an
/// integer `seed >= 0`.
#[derive(Clone)]
pub struct PyRandom {
    state: [u32; N],
    index: usize,
}

impl std::fmt::Debug for PyRandom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PyRandom")
            .field("index", &self.index)
            .finish()
    }
}

impl PyRandom {
    /// Equivalent of Python's `random.Random(seed)`.
    pub fn new(seed: u64) -> Self {
        // CPython splits abs(seed) into 32-bit words, least significant first,
        // and always passes at least one word.
        let lo = (seed & 0xffff_ffff) as u32;
        let hi = (seed >> 32) as u32;
        let key: Vec<u32> = if hi == 0 { vec![lo] } else { vec![lo, hi] };
        let mut rng = PyRandom {
            state: [0; N],
            index: N + 1,
        };
        rng.init_by_array(&key);
        rng
    }

    fn init_genrand(&mut self, s: u32) {
        self.state[0] = s;
        for i in 1..N {
            let prev = self.state[i - 1];
            self.state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        self.index = N;
    }

    fn init_by_array(&mut self, key: &[u32]) {
        self.init_genrand(19_650_218);
        let mut i = 1usize;
        let mut j = 0usize;
        let mut k = N.max(key.len());
        while k > 0 {
            let prev = self.state[i - 1];
            self.state[i] = (self.state[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                self.state[0] = self.state[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
            k -= 1;
        }
        k = N - 1;
        while k > 0 {
            let prev = self.state[i - 1];
            self.state[i] = (self.state[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_566_083_941))
                .wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                self.state[0] = self.state[N - 1];
                i = 1;
            }
            k -= 1;
        }
        self.state[0] = 0x8000_0000;
        self.index = N;
    }

    fn twist(&mut self) {
        let mag = |y: u32| if y & 1 == 1 { MATRIX_A } else { 0 };
        for kk in 0..N - M {
            let y = (self.state[kk] & UPPER_MASK) | (self.state[kk + 1] & LOWER_MASK);
            self.state[kk] = self.state[kk + M] ^ (y >> 1) ^ mag(y);
        }
        for kk in N - M..N - 1 {
            let y = (self.state[kk] & UPPER_MASK) | (self.state[kk + 1] & LOWER_MASK);
            self.state[kk] = self.state[kk + M - N] ^ (y >> 1) ^ mag(y);
        }
        let y = (self.state[N - 1] & UPPER_MASK) | (self.state[0] & LOWER_MASK);
        self.state[N - 1] = self.state[M - 1] ^ (y >> 1) ^ mag(y);
        self.index = 0;
    }

    /// One 32-bit Mersenne Twister output (`genrand_uint32`).
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// Python's `random()`: a float in [0, 1) with 53 random bits.
    pub fn random(&mut self) -> f64 {
        let a = f64::from(self.next_u32() >> 5);
        let b = f64::from(self.next_u32() >> 6);
        (a * 67_108_864.0 + b) * (1.0 / 9_007_199_254_740_992.0)
    }

    /// Python's `getrandbits(k)` for `k <= 64`.
    pub fn getrandbits(&mut self, k: u32) -> u64 {
        if k == 0 {
            return 0;
        }
        if k <= 32 {
            return u64::from(self.next_u32() >> (32 - k));
        }
        // Words are filled least significant first; the last one is truncated.
        let low = u64::from(self.next_u32());
        let rest = k.min(64) - 32;
        let high = u64::from(self.next_u32() >> (32 - rest));
        low | (high << 32)
    }

    /// Python's `_randbelow_with_getrandbits(n)`: uniform in `[0, n)`; `n > 0`.
    pub fn randbelow(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let n64 = n as u64;
        let k = 64 - n64.leading_zeros();
        loop {
            let r = self.getrandbits(k);
            if r < n64 {
                return r as usize;
            }
        }
    }

    /// Python's `sample(population, k)` for a population of size `n`, returned
    /// as indices into the population, in draw order. `None` when `k > n`
    /// (Python raises `ValueError`).
    pub fn sample_indices(&mut self, n: usize, k: usize) -> Option<Vec<usize>> {
        if k > n {
            return None;
        }
        let mut setsize: usize = 21;
        if k > 5 {
            let exp = ((k * 3) as f64).ln() / 4f64.ln();
            let exp = exp.ceil().max(0.0) as u32;
            setsize = setsize.saturating_add(4usize.saturating_pow(exp));
        }
        let mut result = Vec::with_capacity(k);
        if n <= setsize {
            let mut pool: Vec<usize> = (0..n).collect();
            for i in 0..k {
                let j = self.randbelow(n - i);
                result.push(pool[j]);
                pool[j] = pool[n - i - 1];
            }
        } else {
            let mut selected = std::collections::HashSet::with_capacity(k);
            for _ in 0..k {
                let mut j = self.randbelow(n);
                while selected.contains(&j) {
                    j = self.randbelow(n);
                }
                selected.insert(j);
                result.push(j);
            }
        }
        Some(result)
    }

    /// One draw of Python's unweighted `choices(population)` for a population
    /// of size `n > 0`: `floor(random() * n)`, as an index.
    pub fn choice_index(&mut self, n: usize) -> usize {
        ((self.random() * n as f64).floor() as usize).min(n.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values were produced by CPython 3.11's `random` module.
    #[test]
    fn sample_matches_cpython() {
        let mut r = PyRandom::new(1234);
        assert_eq!(r.sample_indices(400, 2), Some(vec![398, 225]));
        assert_eq!(r.sample_indices(400, 3), Some(vec![59, 3, 46]));
        assert_eq!(r.sample_indices(10, 4), Some(vec![9, 0, 1, 8]));
        assert_eq!(
            r.sample_indices(2251, 26),
            Some(vec![
                1452, 969, 71, 126, 64, 1417, 1983, 1898, 608, 373, 749, 468, 59, 2060, 1993, 1023,
                264, 2216, 1908, 280, 364, 2109, 188, 1104, 258, 1238
            ])
        );
        assert_eq!(r.sample_indices(3, 4), None);
    }

    #[test]
    fn choices_random_and_bits_match_cpython() {
        let mut r = PyRandom::new(0);
        let picks: Vec<usize> = (0..5).map(|_| r.choice_index(5)).collect();
        assert_eq!(picks, vec![4, 3, 2, 1, 2]);
        assert_eq!(r.random(), 0.4049341374504143);
        assert_eq!(r.getrandbits(40), 913_899_456_057);
    }
}

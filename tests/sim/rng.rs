//! SplitMix64: the simulator's only source of randomness. One seed drives every choice,
//! so a seed replays the same run bit for bit (no global or thread-local RNG anywhere).

/// A SplitMix64 generator (Steele, Lea, Flood 2014; the seeding function of xoshiro).
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.state)
    }

    /// Uniform in `[0, n)`; `n` must be positive. Lemire's multiply-shift: the bias is
    /// below 2^-32 for the small ranges used here, which does not matter for a simulator.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below(0)");
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `[lo, hi)`; `lo < hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo < hi, "Rng::range({lo}, {hi})");
        lo + self.below(hi - lo)
    }

    /// True with probability `ppm` / 1,000,000.
    pub fn chance_ppm(&mut self, ppm: u64) -> bool {
        ppm > 0 && self.below(1_000_000) < ppm
    }

    /// An independent stream, so that adding draws in one subsystem does not shift
    /// every other subsystem's choices.
    pub fn fork(&mut self) -> Rng {
        Rng::new(self.next_u64())
    }

    /// Picks one element of a non-empty slice.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// The SplitMix64 finalizer; also the harness's hash-combining function.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A tiny deterministic `Hasher` (FNV-style fold through `mix64`) for trace hashes: the
/// std `DefaultHasher` is deterministic too, but this one is stable across Rust releases.
#[derive(Default)]
pub struct TraceHasher {
    state: u64,
}

impl std::hash::Hasher for TraceHasher {
    fn finish(&self) -> u64 {
        mix64(self.state)
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.state =
                mix64(self.state ^ u64::from_le_bytes(word)).wrapping_add(chunk.len() as u64);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.state = mix64(self.state ^ value).wrapping_add(8);
    }
}

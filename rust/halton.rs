//! Scrambled, randomly shifted Halton sequences (Bousquet et al. 2017,
//! arXiv:1706.03200), indexed rather than stateful and bit-stable across platforms.
//!
//! Plain Rust on slices; the PyO3 wrapper lives in `bindings/halton.rs`.
//!
//! # The sequence, exactly
//!
//! Dimension `j` (0-based) uses base `b = p_j`, the `j`-th prime (2, 3, 5, ...), and a
//! random shift `s_j`, a 64-bit integer. Write the shifted index `i + s_j` (exact, in
//! 65 bits) in base `b` as digits `a_0 (least significant), a_1, ...`. Then
//!
//! ```text
//! x_j(i) = sum_{k=0}^{K_b-1} floor(pi_{j,k}(a_k) * 2^64 / b^(k+1))        < 2^64
//! u_j(i) = floor(x_j(i) / 2^11) * 2^-53                                  in [0, 1)
//! ```
//!
//! * `pi_{j,k}` is a random permutation of `{0, .., b-1}`, one per (dimension, digit
//!   position), as in scipy's Owen-style scrambling. It is applied to *every* digit
//!   position up to `K_b`, the smallest `K` with `b^K >= 2^64`, including the run of
//!   leading zero digits of the index (`pi_{j,k}(0)` is generally not 0). Past `K_b`
//!   `floor(pi * 2^64 / b^(k+1)) = 0` exactly, so `x_j` is the scrambled radical
//!   inverse on a 2^-64 fixed-point grid, finer than float64 needs.
//! * The shift is b-adic: it moves the start of the sequence (the random start of Wang &
//!   Hickernell 2000, "Randomized Halton sequences"), not the points. Any `b^m`
//!   consecutive indices still fill every interval `[c/b^m, (c+1)/b^m)` once, so the
//!   shift keeps the sequence's stratification. A real shift mod 1 (Bousquet et al.'s
//!   `fmod(x + shift, 1)`) misaligns that stratification with the cube's faces and
//!   raises the mean centred discrepancy by 10-60% at n = 32..128 (benches/halton.py).
//! * The result keeps the top 53 bits, so every value is a multiple of 2^-53 and lies in
//!   `[0, 1 - 2^-53]`: never 1.0.
//!
//! All arithmetic is on integers, so the values are the same on every platform.
//!
//! # Randomness
//!
//! Every random number comes from [`SplitMix64`] (Steele, Lea & Flood 2014), written out
//! below with its constants, in a stream keyed by `(seed, dimension, digit position)`
//! (see [`stream`]). The shift is the first output of position [`SHIFT_STREAM`]'s
//! stream. A permutation is drawn by forward Fisher-Yates: for `t = 0, 1, .., b-2`, swap
//! entries `t` and `t + below(b - t)`, where `below(m)` is Lemire's unbiased bounded
//! integer. Forward order fixes `pi(a)` after step `a`, so only the prefix of a
//! permutation that the requested indices reach is ever drawn, and that prefix never
//! depends on how many points are asked for. Point `i` is therefore a pure function of
//! `(seed, j, i)`: `start`, `n` and `d` only choose which points are computed.
//!
//! # Stability promise
//!
//! The formula, the PRNG, its seeding and the permutation algorithm above are part of
//! tunebook's API: the golden values in the tests pin them, and they change only with a
//! major version.

use std::fmt;

/// The largest supported dimension: the first 1000 primes, up to 7919.
pub const MAX_DIMENSION: usize = 1000;

/// The digit position whose stream draws the per-dimension shift. Real digit positions
/// are below 64.
pub const SHIFT_STREAM: u64 = 0xFFFF;

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function (Stafford's "Mix13" variant, as in `java.util.SplittableRandom`).
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// SplitMix64: `state += 0x9E3779B97F4A7C15; return mix64(state)`.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose first output is `mix64(state + GOLDEN_GAMMA)`.
    pub fn new(state: u64) -> Self {
        Self { state }
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix64(self.state)
    }

    /// An unbiased integer in `[0, range)` (Lemire 2019, "Fast random integer
    /// generation in an interval"); `range` must be at least 1.
    #[inline]
    pub fn below(&mut self, range: u64) -> u64 {
        debug_assert!(range >= 1);
        let mut m = u128::from(self.next_u64()) * u128::from(range);
        if (m as u64) < range {
            let threshold = range.wrapping_neg() % range;
            while (m as u64) < threshold {
                m = u128::from(self.next_u64()) * u128::from(range);
            }
        }
        (m >> 64) as u64
    }
}

/// The random stream for one `(seed, dimension, digit position)`:
///
/// ```text
/// h = mix64(seed + G);  h = mix64(h + G * (dimension + 1));  state = mix64(h + G * (position + 1))
/// ```
///
/// with `G = 0x9E3779B97F4A7C15` and wrapping arithmetic.
pub fn stream(seed: u64, dimension: u64, position: u64) -> SplitMix64 {
    let mut h = mix64(seed.wrapping_add(GOLDEN_GAMMA));
    h = mix64(h.wrapping_add(GOLDEN_GAMMA.wrapping_mul(dimension.wrapping_add(1))));
    SplitMix64::new(mix64(
        h.wrapping_add(GOLDEN_GAMMA.wrapping_mul(position.wrapping_add(1))),
    ))
}

/// Why a request for Halton points was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HaltonError {
    /// `d` was 0.
    ZeroDimension,
    /// `d` was above [`MAX_DIMENSION`].
    DimensionTooLarge(usize),
    /// `start + n` does not fit in 64 bits.
    IndexOverflow { n: usize, start: u64 },
    /// The output slice does not hold `n * d` values.
    OutputLength { expected: usize, got: usize },
}

impl fmt::Display for HaltonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HaltonError::ZeroDimension => write!(f, "d=0 must be >= 1: ask for at least one dimension"),
            HaltonError::DimensionTooLarge(d) => write!(
                f,
                "d={d} must be <= {MAX_DIMENSION}: tunebook's Halton sequence uses the first \
                 {MAX_DIMENSION} primes as bases; split the space or use fewer dimensions"
            ),
            HaltonError::IndexOverflow { n, start } => write!(
                f,
                "start={start} plus n={n} must be < 2**64: point indices are 64-bit; use a smaller start"
            ),
            HaltonError::OutputLength { expected, got } => {
                write!(f, "output holds {got} values but n * d = {expected}: allocate n * d values")
            }
        }
    }
}

impl std::error::Error for HaltonError {}

/// The first `count` primes, in increasing order.
pub fn first_primes(count: usize) -> Vec<u64> {
    let mut primes: Vec<u64> = Vec::with_capacity(count);
    let mut candidate = 2u64;
    while primes.len() < count {
        if primes
            .iter()
            .take_while(|&&p| p * p <= candidate)
            .all(|&p| candidate % p != 0)
        {
            primes.push(candidate);
        }
        candidate += 1;
    }
    primes
}

/// `floor(p * 2^64 / b_power)` computed exactly; `p < b_power` keeps it below 2^64.
#[inline]
pub fn digit_weight(p: u64, b_power: u128) -> u64 {
    debug_assert!(u128::from(p) < b_power);
    ((u128::from(p) << 64) / b_power) as u64
}

/// `floor(p * 2^64 / b_power)` for every `p` in `0..base`, by exact incremental addition
/// (the same values as [`digit_weight`], without a 128-bit division per entry).
fn all_digit_weights(base: u64, b_power: u128) -> Vec<u64> {
    let two_64 = 1u128 << 64;
    let (step_quotient, step_remainder) = (two_64 / b_power, two_64 % b_power);
    let mut weights = Vec::with_capacity(base as usize);
    let (mut quotient, mut remainder) = (0u128, 0u128);
    for _ in 0..base {
        weights.push(quotient as u64);
        quotient += step_quotient;
        remainder += step_remainder;
        if remainder >= b_power {
            remainder -= b_power;
            quotient += 1;
        }
    }
    weights
}

/// The table of one digit position: `weights[t] = floor(pi_k(a) * 2^64 / b^(k+1))` for
/// the digits `a = (first + t) mod b`, `t < weights.len()`, that the requested indices
/// reach there (all `b` of them, with `first = 0`, when the indices span a full cycle).
struct Position {
    weights: Vec<u64>,
    /// `b - first`: the value of `t` at which the digit wraps from `b - 1` to 0.
    wrap: u32,
}

/// One dimension's scrambling, restricted to the shifted indices `start + s ..= end + s`.
struct Dimension {
    base: u64,
    /// The b-adic shift `s`: the dimension's random start.
    shift: u64,
    positions: Vec<Position>,
}

impl Dimension {
    fn new(seed: u64, dimension: usize, base: u64, start: u64, end: u64) -> Self {
        let shift = stream(seed, dimension as u64, SHIFT_STREAM).next_u64();
        let (low, high) = (
            u128::from(start) + u128::from(shift),
            u128::from(end) + u128::from(shift),
        );
        let base_wide = u128::from(base);
        let mut b_k = 1u128; // b^k
        let mut permutation: Vec<u64> = Vec::new();
        let mut positions = Vec::new();
        // Positions 0 .. K_b; from K_b on every weight is exactly 0.
        for position in 0u64.. {
            if b_k >= 1u128 << 64 {
                break;
            }
            let b_power = b_k * base_wide; // b^(k+1)
                                           // The digits here run cyclically from `first` through `count` values.
            let count = high / b_k - low / b_k + 1;
            let (first, count) = if count >= base_wide {
                (0, base)
            } else {
                ((low / b_k % base_wide) as u64, count as u64)
            };
            let max_digit = if first + count > base {
                base - 1
            } else {
                first + count - 1
            };
            // Forward Fisher-Yates, stopped once pi(0..=max_digit) is fixed.
            let mut rng = stream(seed, dimension as u64, position);
            permutation.clear();
            permutation.extend(0..base);
            for t in 0..(max_digit + 1).min(base - 1) {
                let swap_with = t + rng.below(base - t);
                permutation.swap(t as usize, swap_with as usize);
            }
            let digits = (0..count).map(|t| ((first + t) % base) as usize);
            let weights: Vec<u64> = if count * 16 >= base {
                let all = all_digit_weights(base, b_power);
                digits.map(|a| all[permutation[a] as usize]).collect()
            } else {
                digits
                    .map(|a| digit_weight(permutation[a], b_power))
                    .collect()
            };
            positions.push(Position {
                weights,
                wrap: (base - first) as u32,
            });
            b_k = b_power;
        }
        Self {
            base,
            shift,
            positions,
        }
    }

    /// The table offsets `t` of the digits of `index + s` (least significant first) in
    /// `offsets`, and the sum of every position's weight except position 0's.
    fn seek(&self, index: u64, offsets: &mut [u32]) -> u64 {
        let mut rest = u128::from(index) + u128::from(self.shift);
        let base = u128::from(self.base);
        let mut high = 0u64;
        for (k, position) in self.positions.iter().enumerate() {
            let digit = (rest % base) as u32;
            rest /= base;
            // offset = (digit - first) mod b, and wrap = b - first.
            let offset = (digit + position.wrap) % self.base as u32;
            offsets[k] = offset;
            if k > 0 {
                high = high.wrapping_add(position.weights[offset as usize]);
            }
        }
        high
    }

    /// Writes `rows` consecutive points of this dimension into `out` with stride
    /// `stride`, advancing `offsets`/`high` (from [`Self::seek`]) past them.
    #[inline]
    fn fill(
        &self,
        out: &mut [f64],
        stride: usize,
        rows: usize,
        offsets: &mut [u32],
        high: &mut u64,
    ) {
        let table = &self.positions[0].weights[..];
        let wrap = self.positions[0].wrap;
        let mut t = offsets[0];
        let mut h = *high;
        for row in 0..rows {
            let x = h.wrapping_add(table[t as usize]);
            // x >> 11 < 2^53 converts exactly, through i64 for a single instruction.
            out[row * stride] = ((x >> 11) as i64) as f64 * (1.0 / 9_007_199_254_740_992.0);
            t += 1;
            if t == wrap {
                if t == self.base as u32 {
                    t = 0;
                }
                h = self.carry(offsets, h);
            }
        }
        offsets[0] = t;
        *high = h;
    }

    /// Propagates a carry out of position 0 and returns the updated high sum. A carry
    /// out of the last position is dropped: the shifted index is taken mod b^K_b.
    #[cold]
    fn carry(&self, offsets: &mut [u32], mut high: u64) -> u64 {
        let base = self.base as u32;
        for (offset, position) in offsets.iter_mut().zip(&self.positions).skip(1) {
            let old = *offset;
            let mut new = old + 1;
            let wrapped = new == position.wrap;
            if new == base {
                new = 0;
            }
            *offset = new;
            // Past the last requested index (after the final row) the next digit may be
            // outside the table; it is never read, so leave the sum alone.
            if let Some(&weight) = position.weights.get(new as usize) {
                high = high
                    .wrapping_sub(position.weights[old as usize])
                    .wrapping_add(weight);
            }
            if !wrapped {
                return high;
            }
        }
        high
    }
}

fn check(n: usize, d: usize, start: u64) -> Result<u64, HaltonError> {
    if d == 0 {
        return Err(HaltonError::ZeroDimension);
    }
    if d > MAX_DIMENSION {
        return Err(HaltonError::DimensionTooLarge(d));
    }
    start
        .checked_add(n as u64)
        .filter(|_| (n as u128) < (1u128 << 64))
        .ok_or(HaltonError::IndexOverflow { n, start })
}

/// Number of threads worth using for `n * d` values.
fn default_threads(values: usize) -> usize {
    if values < (1 << 16) {
        return 1;
    }
    let available = std::thread::available_parallelism().map_or(1, |c| c.get());
    available.min(64).min(values >> 15).max(1)
}

/// Fills `out` (row-major, `n` rows of `d`) with points `start .. start + n` of the
/// scrambled, shifted Halton sequence for `seed`, using up to `threads` threads
/// (0 = as many as useful). The values never depend on `threads`.
pub fn halton_into(
    out: &mut [f64],
    n: usize,
    d: usize,
    seed: u64,
    start: u64,
    threads: usize,
) -> Result<(), HaltonError> {
    let end = check(n, d, start)?;
    let expected = n
        .checked_mul(d)
        .ok_or(HaltonError::IndexOverflow { n, start })?;
    if out.len() != expected {
        return Err(HaltonError::OutputLength {
            expected,
            got: out.len(),
        });
    }
    if n == 0 {
        return Ok(());
    }
    let threads = if threads == 0 {
        default_threads(expected)
    } else {
        threads
    }
    .clamp(1, n);
    let bases = first_primes(d);

    // Tables for indices start..=end: the odometer steps onto `end` after the last row.
    let dimensions: Vec<Dimension> = if threads == 1 {
        bases
            .iter()
            .enumerate()
            .map(|(j, &b)| Dimension::new(seed, j, b, start, end))
            .collect()
    } else {
        let per = d.div_ceil(threads);
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..d)
                .step_by(per)
                .map(|lo| {
                    let bases = &bases;
                    scope.spawn(move || {
                        (lo..(lo + per).min(d))
                            .map(|j| Dimension::new(seed, j, bases[j], start, end))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("table construction cannot panic"))
                .collect()
        })
    };

    let rows_per_thread = n.div_ceil(threads);
    let fill_rows = |chunk: &mut [f64], first_row: usize| {
        let rows = chunk.len() / d;
        let positions = dimensions
            .iter()
            .map(|dim| dim.positions.len())
            .max()
            .unwrap_or(1);
        let mut digits = vec![0u32; d * positions];
        let mut highs: Vec<u64> = dimensions
            .iter()
            .enumerate()
            .map(|(j, dim)| {
                dim.seek(
                    start + first_row as u64,
                    &mut digits[j * positions..(j + 1) * positions],
                )
            })
            .collect();
        // Tiles of 128..1024 rows (about 1 MiB of output at most), filled one dimension
        // at a time: each dimension's state stays in registers, its table is read
        // sequentially, and the tile stays in L2 while every dimension writes into it.
        let tile_rows = (131_072 / d).clamp(128, 1024);
        let mut row = 0;
        while row < rows {
            let tile = tile_rows.min(rows - row);
            for (j, dim) in dimensions.iter().enumerate() {
                dim.fill(
                    &mut chunk[row * d + j..],
                    d,
                    tile,
                    &mut digits[j * positions..(j + 1) * positions],
                    &mut highs[j],
                );
            }
            row += tile;
        }
    };
    if threads == 1 {
        fill_rows(out, 0);
    } else {
        std::thread::scope(|scope| {
            for (t, chunk) in out.chunks_mut(rows_per_thread * d).enumerate() {
                let fill_rows = &fill_rows;
                scope.spawn(move || fill_rows(chunk, t * rows_per_thread));
            }
        });
    }
    Ok(())
}

/// Points `start .. start + n` of the scrambled, shifted Halton sequence in `d`
/// dimensions for `seed`, row-major (`n * d` values).
pub fn halton(n: usize, d: usize, seed: u64, start: u64) -> Result<Vec<f64>, HaltonError> {
    check(n, d, start)?;
    let mut out = vec![
        0.0;
        n.checked_mul(d)
            .ok_or(HaltonError::IndexOverflow { n, start })?
    ];
    halton_into(&mut out, n, d, seed, start, 0)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition in the module docs, computed one point at a time with full
    /// permutations and no tables, odometers or threads.
    fn reference_point(seed: u64, dimension: usize, index: u64) -> f64 {
        let base = first_primes(dimension + 1)[dimension];
        let shift = stream(seed, dimension as u64, SHIFT_STREAM).next_u64();
        let mut rest = u128::from(index) + u128::from(shift);
        let (mut x, mut b_power, mut position) = (0u64, u128::from(base), 0u64);
        while b_power / u128::from(base) < (1u128 << 64) {
            let mut rng = stream(seed, dimension as u64, position);
            let mut permutation: Vec<u64> = (0..base).collect();
            for t in 0..base as usize - 1 {
                let swap_with = t + rng.below(base - t as u64) as usize;
                permutation.swap(t, swap_with);
            }
            let digit = rest % u128::from(base);
            rest /= u128::from(base);
            x = x
                .checked_add(digit_weight(permutation[digit as usize], b_power))
                .unwrap();
            b_power *= u128::from(base);
            position += 1;
        }
        (x >> 11) as f64 / 2f64.powi(53)
    }

    #[test]
    fn splitmix64_matches_published_output() {
        // First outputs of SplitMix64 seeded with 0 (Vigna's reference splitmix64.c).
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(rng.next_u64(), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn below_is_in_range_and_covers_it() {
        let mut rng = SplitMix64::new(7);
        let mut seen = [0u32; 7];
        for _ in 0..7000 {
            seen[rng.below(7) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| (800..1200).contains(&c)), "{seen:?}");
        assert_eq!(rng.below(1), 0);
    }

    #[test]
    fn primes() {
        assert_eq!(first_primes(10), vec![2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert_eq!(*first_primes(MAX_DIMENSION).last().unwrap(), 7919);
    }

    #[test]
    fn incremental_weights_are_exact() {
        for &base in &[2u64, 3, 7, 97, 7919] {
            let mut b_power = u128::from(base);
            while b_power / u128::from(base) < (1u128 << 64) {
                let weights = all_digit_weights(base, b_power);
                for (p, &w) in weights.iter().enumerate() {
                    assert_eq!(
                        w,
                        digit_weight(p as u64, b_power),
                        "base {base} power {b_power} digit {p}"
                    );
                }
                b_power *= u128::from(base);
            }
        }
    }

    #[test]
    fn golden_values() {
        let points = halton(3, 4, 0, 0).unwrap();
        let golden = [GOLDEN_SEED0_ROW0, GOLDEN_SEED0_ROW1, GOLDEN_SEED0_ROW2].concat();
        assert_eq!(points, golden);
        let points = halton(1, 3, 12345, 1_000_000).unwrap();
        assert_eq!(points, GOLDEN_SEED12345_START1E6);
    }

    // Pinned: these values are part of the API (see "Stability promise" above) and are
    // repeated in tests/test_halton.py.
    const GOLDEN_SEED0_ROW0: [f64; 4] = [
        0.30586641011386917,
        0.5861550680765686,
        0.8285089096827897,
        0.9907050244498662,
    ];
    const GOLDEN_SEED0_ROW1: [f64; 4] = [
        0.8058664101138692,
        0.919488401409902,
        0.2285089096827897,
        0.1335621673070091,
    ];
    const GOLDEN_SEED0_ROW2: [f64; 4] = [
        0.05586641011386917,
        0.2528217347432353,
        0.6285089096827896,
        0.7049907387355805,
    ];
    const GOLDEN_SEED12345_START1E6: [f64; 3] =
        [0.7941064260986684, 0.3798816910491164, 0.15586360082309658];

    #[test]
    fn matches_the_definition() {
        let d = 12;
        for &(seed, start, n) in &[
            (0u64, 0u64, 40usize),
            (9, 123_456_789, 20),
            (3, u64::MAX - 30, 30),
        ] {
            let points = halton(n, d, seed, start).unwrap();
            for i in 0..n {
                for j in 0..d {
                    assert_eq!(
                        points[i * d + j],
                        reference_point(seed, j, start + i as u64),
                        "seed {seed} row {i} dim {j}"
                    );
                }
            }
        }
        // A large base, across a carry at position 1.
        let points = halton(3, 1000, 5, 7919 * 7919 - 1).unwrap();
        for i in 0..3 {
            assert_eq!(
                points[i * 1000 + 999],
                reference_point(5, 999, 7919 * 7919 - 1 + i as u64)
            );
        }
    }

    #[test]
    fn start_extends_and_threads_do_not_matter() {
        let (n, d) = (5000, 7);
        let whole = halton(n, d, 42, 0).unwrap();
        let tail = halton(n - 1234, d, 42, 1234).unwrap();
        assert_eq!(&whole[1234 * d..], &tail[..]);
        for threads in [1, 2, 3, 8] {
            let mut out = vec![0.0; n * d];
            halton_into(&mut out, n, d, 42, 0, threads).unwrap();
            assert_eq!(out, whole, "threads={threads}");
        }
        // Asking for more points does not change earlier ones.
        assert_eq!(&halton(10, d, 42, 0).unwrap()[..], &whole[..10 * d]);
    }

    #[test]
    fn values_are_in_the_unit_interval_and_stratified() {
        // Any 3^7 consecutive points of dimension 1 (base 3) put exactly one point in
        // every interval [c/3^7, (c+1)/3^7): scrambling and the b-adic shift keep that.
        let (n, d) = (3usize.pow(7), 3);
        for start in [0u64, 1, 1_000_003] {
            let points = halton(n, d, 1, start).unwrap();
            assert!(points.iter().all(|&x| (0.0..1.0).contains(&x)));
            let mut counts = vec![0u32; n];
            for i in 0..n {
                counts[(points[i * d + 1] * n as f64) as usize] += 1;
            }
            assert!(counts.iter().all(|&c| c == 1), "start {start}");
        }
    }

    #[test]
    fn seeds_differ() {
        assert_ne!(halton(8, 3, 0, 0).unwrap(), halton(8, 3, 1, 0).unwrap());
    }

    #[test]
    fn errors() {
        assert_eq!(halton(1, 0, 0, 0), Err(HaltonError::ZeroDimension));
        assert_eq!(
            halton(1, MAX_DIMENSION + 1, 0, 0),
            Err(HaltonError::DimensionTooLarge(1001))
        );
        assert!(matches!(
            halton(2, 1, 0, u64::MAX),
            Err(HaltonError::IndexOverflow { .. })
        ));
        let mut out = vec![0.0; 5];
        assert!(matches!(
            halton_into(&mut out, 2, 3, 0, 0, 0),
            Err(HaltonError::OutputLength { .. })
        ));
        assert_eq!(halton(0, 5, 0, 0).unwrap(), Vec::<f64>::new());
        assert_eq!(halton(1, MAX_DIMENSION, 0, 0).unwrap().len(), MAX_DIMENSION);
    }
}

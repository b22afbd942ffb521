//! Checkpoint and trial ranking: the N best checkpoints of a run, and study-level
//! ranking over many trials' metric histories.
//!
//! Plain Rust on slices; the PyO3 wrappers live in `bindings/ranking.rs`.
//!
//! # Rules shared by every function
//!
//! * **Non-finite values never rank.** NaN, +inf and -inf are never admitted to a
//!   top-k, never chosen as a trial's best, and always sort after every finite value
//!   (in index order among themselves). A diverged run's NaN is recorded by the
//!   caller but never displaces a finite value.
//! * **Ties keep the earlier step** (or the lower trial index), unless [`Tie::Later`]
//!   is asked for where a function takes a [`Tie`].
//! * `Mode::Min` ranks smaller values first, `Mode::Max` larger values first.

use std::cmp::Ordering;
use std::fmt;

/// Whether smaller or larger metric values are better.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Min,
    Max,
}

/// Which of two equal values ranks first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tie {
    /// The earlier step (smaller step number) wins a tie.
    Earlier,
    /// The later step wins a tie.
    Later,
}

/// Errors for arguments the caller can fix; the bindings turn them into `ValueError`.
#[derive(Clone, Debug, PartialEq)]
pub enum RankingError {
    InvalidArgument(String),
}

impl fmt::Display for RankingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RankingError::InvalidArgument(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for RankingError {}

fn invalid<T>(message: String) -> Result<T, RankingError> {
    Err(RankingError::InvalidArgument(message))
}

/// Compares two finite values: `Less` when `a` is better than `b`.
#[inline]
fn compare_finite(mode: Mode, a: f64, b: f64) -> Ordering {
    match mode {
        Mode::Min => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
        Mode::Max => b.partial_cmp(&a).unwrap_or(Ordering::Equal),
    }
}

/// Total ranking order of `(value, key)` pairs: `Less` when `a` ranks before `b`.
///
/// Finite values first, by value in `mode`; equal values by key (ascending for
/// [`Tie::Earlier`], descending for [`Tie::Later`]); non-finite values last, by key
/// ascending whatever the tie rule, so the order is total and deterministic.
#[inline]
pub fn compare(mode: Mode, tie: Tie, a: (f64, i64), b: (f64, i64)) -> Ordering {
    match (a.0.is_finite(), b.0.is_finite()) {
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => a.1.cmp(&b.1),
        (true, true) => compare_finite(mode, a.0, b.0).then_with(|| match tie {
            Tie::Earlier => a.1.cmp(&b.1),
            Tie::Later => b.1.cmp(&a.1),
        }),
    }
}

/// One ranked checkpoint.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Entry {
    pub step: i64,
    pub value: f64,
}

/// What [`TopK::offer`] did: whether the new step was admitted and which steps were
/// evicted to make room. The caller deletes evicted files only after committing.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Offer {
    pub admitted: bool,
    pub evicted: Vec<i64>,
}

/// The `k` best `(step, value)` pairs seen so far, best first.
#[derive(Clone, Debug)]
pub struct TopK {
    k: usize,
    mode: Mode,
    tie: Tie,
    entries: Vec<Entry>,
}

impl TopK {
    /// An empty top-k; `k` must be at least 1.
    pub fn new(k: usize, mode: Mode, tie: Tie) -> Result<Self, RankingError> {
        if k == 0 {
            return invalid("keep must be >= 1".to_string());
        }
        Ok(TopK { k, mode, tie, entries: Vec::with_capacity(k.min(1024) + 1) })
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn tie(&self) -> Tie {
        self.tie
    }

    /// The admitted entries, best first.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn best(&self) -> Option<Entry> {
        self.entries.first().copied()
    }

    pub fn contains(&self, step: i64) -> bool {
        self.entries.iter().any(|e| e.step == step)
    }

    fn position(&self, step: i64, value: f64) -> usize {
        let (mode, tie) = (self.mode, self.tie);
        self.entries
            .partition_point(|e| compare(mode, tie, (e.value, e.step), (value, step)) == Ordering::Less)
    }

    /// What [`offer`](Self::offer) would do, without changing anything.
    pub fn preview(&self, step: i64, value: f64) -> Result<Offer, RankingError> {
        if self.contains(step) {
            return invalid(format!("step {step} is already ranked; steps must be unique"));
        }
        if !value.is_finite() {
            return Ok(Offer::default());
        }
        let position = self.position(step, value);
        if position >= self.k {
            return Ok(Offer::default());
        }
        let evicted = if self.entries.len() == self.k {
            vec![self.entries[self.k - 1].step]
        } else {
            Vec::new()
        };
        Ok(Offer { admitted: true, evicted })
    }

    /// Offers a step's metric value; non-finite values are never admitted.
    pub fn offer(&mut self, step: i64, value: f64) -> Result<Offer, RankingError> {
        let offer = self.preview(step, value)?;
        if offer.admitted {
            let position = self.position(step, value);
            self.entries.insert(position, Entry { step, value });
            self.entries.truncate(self.k);
        }
        Ok(offer)
    }

    /// Changes `k`; returns the steps evicted when it shrinks.
    pub fn resize(&mut self, k: usize) -> Result<Vec<i64>, RankingError> {
        if k == 0 {
            return invalid("keep must be >= 1".to_string());
        }
        self.k = k;
        let evicted = self.entries.iter().skip(k).map(|e| e.step).collect();
        self.entries.truncate(k);
        Ok(evicted)
    }
}

fn check_offsets(n_values: usize, offsets: &[usize]) -> Result<(), RankingError> {
    if offsets.is_empty() || offsets[0] != 0 {
        return invalid("offsets must start at 0 and have one entry per trial plus one".into());
    }
    if offsets.windows(2).any(|w| w[1] < w[0]) {
        return invalid("offsets must be non-decreasing".into());
    }
    if *offsets.last().unwrap() != n_values {
        return invalid(format!(
            "offsets must end at the number of values ({n_values}), got {}",
            offsets.last().unwrap()
        ));
    }
    Ok(())
}

/// Splits `0..n` into contiguous chunks for `std::thread::scope` workers.
fn chunks(n: usize, work: usize) -> Vec<(usize, usize)> {
    let threads = if work < (1 << 20) {
        1
    } else {
        std::thread::available_parallelism().map(|t| t.get()).unwrap_or(1).min(16)
    };
    let size = n.div_ceil(threads.max(1)).max(1);
    (0..n).step_by(size).map(|start| (start, (start + size).min(n))).collect()
}

/// Best of one row when positions are the steps.
///
/// Two passes that vectorise: the best finite value, reduced over 8 independent lanes
/// with selects (no loop-carried branch), then the first (or, for `Tie::Later`, the
/// last) position holding it.
fn row_best_by_position(row: &[f64], mode: Mode, tie: Tie) -> (i64, f64) {
    #[inline(always)]
    fn reduce(row: &[f64], init: f64, take: impl Fn(f64, f64) -> bool) -> f64 {
        let mut lanes = [init; 8];
        let chunks = row.chunks_exact(8);
        let tail = chunks.remainder();
        for chunk in chunks {
            for (lane, &v) in lanes.iter_mut().zip(chunk) {
                *lane = if take(v, *lane) { v } else { *lane };
            }
        }
        let mut best = init;
        for &v in lanes.iter().chain(tail) {
            best = if take(v, best) { v } else { best };
        }
        best
    }
    // Comparisons with NaN are false and the guards keep out the infinities, so only
    // finite values are taken; `init` survives only when the row has none.
    let best = match mode {
        Mode::Min => reduce(row, f64::INFINITY, |v, b| (v < b) & (v > f64::NEG_INFINITY)),
        Mode::Max => reduce(row, f64::NEG_INFINITY, |v, b| (v > b) & (v < f64::INFINITY)),
    };
    if !best.is_finite() {
        return (-1, f64::NAN);
    }
    let position = match tie {
        Tie::Earlier => row.iter().position(|&v| v == best),
        Tie::Later => row.iter().rposition(|&v| v == best),
    };
    (position.map_or(-1, |p| p as i64), best)
}

/// Best of one row with explicit steps (ties by step, whatever the order of the row).
fn row_best_by_step(row: &[f64], steps: &[i64], mode: Mode, tie: Tie) -> (i64, f64) {
    let mut best: Option<(usize, f64, i64)> = None;
    for (i, (&v, &s)) in row.iter().zip(steps).enumerate() {
        if !v.is_finite() {
            continue;
        }
        let better = match best {
            None => true,
            Some((_, bv, bs)) => compare(mode, tie, (v, s), (bv, bs)) == Ordering::Less,
        };
        if better {
            best = Some((i, v, s));
        }
    }
    best.map_or((-1, f64::NAN), |(i, v, _)| (i as i64, v))
}

/// Best value of each trial's history (rows of a CSR matrix).
///
/// Trial `t` owns `values[offsets[t]..offsets[t+1]]`; `steps`, if given, holds the step
/// of each value (same layout), otherwise a value's step is its position in the row.
/// Returns, per trial, the position of its best value within its row (-1 when the row
/// has no finite value) and the value (NaN when none). Ties go by the tie rule on
/// steps. Rows are processed in parallel for large inputs.
pub fn best_per_row(
    values: &[f64],
    steps: Option<&[i64]>,
    offsets: &[usize],
    mode: Mode,
    tie: Tie,
) -> Result<(Vec<i64>, Vec<f64>), RankingError> {
    check_offsets(values.len(), offsets)?;
    if let Some(s) = steps {
        if s.len() != values.len() {
            return invalid(format!("steps has {} entries but values has {}", s.len(), values.len()));
        }
    }
    let n_rows = offsets.len() - 1;
    let mut positions = vec![-1i64; n_rows];
    let mut bests = vec![f64::NAN; n_rows];
    let row = |r: usize| -> (i64, f64) {
        let (lo, hi) = (offsets[r], offsets[r + 1]);
        match steps {
            None => row_best_by_position(&values[lo..hi], mode, tie),
            Some(steps) => row_best_by_step(&values[lo..hi], &steps[lo..hi], mode, tie),
        }
    };
    let parts = chunks(n_rows, values.len());
    std::thread::scope(|scope| {
        let mut pos_rest: &mut [i64] = &mut positions;
        let mut best_rest: &mut [f64] = &mut bests;
        for &(start, end) in &parts {
            let (pos_chunk, p) = std::mem::take(&mut pos_rest).split_at_mut(end - start);
            let (best_chunk, b) = std::mem::take(&mut best_rest).split_at_mut(end - start);
            pos_rest = p;
            best_rest = b;
            let row = &row;
            let mut job = move || {
                for (j, r) in (start..end).enumerate() {
                    let (p, v) = row(r);
                    pos_chunk[j] = p;
                    best_chunk[j] = v;
                }
            };
            if parts.len() == 1 {
                job();
            } else {
                scope.spawn(job);
            }
        }
    });
    Ok((positions, bests))
}

/// Trial indices ordered best first: finite values by `mode` (ties by lower index),
/// then non-finite values in index order.
pub fn rank(values: &[f64], mode: Mode) -> Vec<usize> {
    let sign = if mode == Mode::Min { 1.0 } else { -1.0 };
    let mut finite: Vec<(f64, usize)> =
        values.iter().enumerate().filter(|(_, v)| v.is_finite()).map(|(i, &v)| (sign * v, i)).collect();
    // Keys are finite, so partial_cmp never fails; -0.0 and 0.0 tie and go by index.
    finite.sort_unstable_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(Ordering::Equal).then(a.1.cmp(&b.1)));
    let mut order: Vec<usize> = finite.into_iter().map(|(_, i)| i).collect();
    order.extend(values.iter().enumerate().filter(|(_, v)| !v.is_finite()).map(|(i, _)| i));
    order
}

/// `bins + 1` equally spaced edges (log-spaced when `log`) spanning the finite `x`
/// (positive `x` only when `log`).
pub fn bucket_edges(x: &[f64], bins: usize, log: bool) -> Result<Vec<f64>, RankingError> {
    if bins == 0 {
        return invalid("bins must be >= 1".into());
    }
    let usable = x.iter().copied().filter(|v| v.is_finite() && (!log || *v > 0.0));
    let (lo, hi) = usable.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return invalid(if log {
            "x has no finite positive value to bucket on a log scale".into()
        } else {
            "x has no finite value to bucket".into()
        });
    }
    let (a, b) = if log { (lo.ln(), hi.ln()) } else { (lo, hi) };
    // A single distinct value still gets a bucket of non-zero width around it.
    let (a, b) = if a == b { (a - 0.5, b + 0.5) } else { (a, b) };
    let mut edges: Vec<f64> = (0..=bins)
        .map(|i| {
            let t = a + (b - a) * (i as f64) / (bins as f64);
            if log { t.exp() } else { t }
        })
        .collect();
    // Exact ends, so the extreme points fall inside despite exp/ln rounding.
    if lo < hi {
        edges[0] = lo;
        edges[bins] = hi;
    }
    Ok(edges)
}

/// Which bucket of `edges` holds `v`: `[e_i, e_{i+1})`, the last bucket closed on the
/// right (as `numpy.histogram`); `None` outside or non-finite.
#[inline]
pub fn bucket_of(edges: &[f64], v: f64) -> Option<usize> {
    let n = edges.len() - 1;
    if !v.is_finite() || v < edges[0] || v > edges[n] {
        return None;
    }
    if v == edges[n] {
        return Some(n - 1);
    }
    Some(edges.partition_point(|&e| e <= v) - 1)
}

/// The best trial in each bucket of `x` (a hyperparameter), judged by `y` (each trial's
/// best metric): the playbook's isolation plot, which optimises away the other
/// hyperparameters by keeping only the best trial per bin.
///
/// Returns per bucket the trial index (-1 when the bucket holds no trial with finite
/// `x` and finite `y`) and its `y` (NaN when empty). Ties go to the lower index.
pub fn best_per_bucket(
    x: &[f64],
    y: &[f64],
    edges: &[f64],
    mode: Mode,
) -> Result<(Vec<i64>, Vec<f64>), RankingError> {
    if x.len() != y.len() {
        return invalid(format!("x has {} values but y has {}", x.len(), y.len()));
    }
    if edges.len() < 2 {
        return invalid("edges must hold at least 2 values".into());
    }
    if edges.iter().any(|e| !e.is_finite()) || edges.windows(2).any(|w| w[1] <= w[0]) {
        return invalid("edges must be finite and strictly increasing".into());
    }
    let n = edges.len() - 1;
    let mut index = vec![-1i64; n];
    let mut best = vec![f64::NAN; n];
    for (i, (&xv, &yv)) in x.iter().zip(y).enumerate() {
        if !yv.is_finite() {
            continue;
        }
        if let Some(b) = bucket_of(edges, xv) {
            if index[b] < 0 || compare_finite(mode, yv, best[b]) == Ordering::Less {
                index[b] = i as i64;
                best[b] = yv;
            }
        }
    }
    Ok((index, best))
}

/// SplitMix64: small, fast, and good enough to drive uniform draws.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform on (0, 1], never 0 so its logarithm is finite.
    fn uniform_open0(&mut self) -> f64 {
        ((self.next() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Samples of the best of `k` trials drawn with replacement from `best`, for each
/// budget `k` in `budgets`: a `budgets.len() × n_boot` row-major matrix.
///
/// The best of `k` draws with replacement from `n` ranked values is the value at rank
/// `J = min(U_1..U_k)` with `U_i` uniform on `0..n`, and `P(J >= j) = (1 - j/n)^k`.
/// Drawing `J` by inverting that law, `J = floor(-n · expm1(ln(u) / k))`, gives exactly
/// the bootstrap distribution in O(1) per sample instead of O(k), so 100k trials and
/// budgets up to 100k cost the same as small ones.
///
/// Non-finite `best` values (infeasible trials) count as draws but rank last; a sample
/// whose `k` draws are all infeasible is `+inf` in `Min` mode and `-inf` in `Max` mode.
/// Each budget's stream depends only on `(seed, k)`.
pub fn bootstrap_best_of_k(
    best: &[f64],
    budgets: &[usize],
    n_boot: usize,
    seed: u64,
    mode: Mode,
) -> Result<Vec<f64>, RankingError> {
    if best.is_empty() {
        return invalid("best_values must hold at least one trial".into());
    }
    if n_boot == 0 {
        return invalid("n_boot must be >= 1".into());
    }
    if let Some(k) = budgets.iter().find(|&&k| k == 0) {
        return invalid(format!("budgets must be >= 1, got {k}"));
    }
    let worst = match mode {
        Mode::Min => f64::INFINITY,
        Mode::Max => f64::NEG_INFINITY,
    };
    let sorted: Vec<f64> = rank(best, mode)
        .into_iter()
        .map(|i| if best[i].is_finite() { best[i] } else { worst })
        .collect();
    let n = sorted.len() as f64;
    let mut out = vec![0.0; budgets.len() * n_boot];
    let parts = chunks(budgets.len(), budgets.len() * n_boot);
    std::thread::scope(|scope| {
        let mut rest: &mut [f64] = &mut out;
        for &(start, end) in &parts {
            let (chunk, r) = std::mem::take(&mut rest).split_at_mut((end - start) * n_boot);
            rest = r;
            let sorted = &sorted;
            let mut job = move || {
                for (row, &k) in budgets[start..end].iter().enumerate() {
                    let mut rng = SplitMix64(seed ^ (k as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93));
                    let inv_k = 1.0 / k as f64;
                    for slot in &mut chunk[row * n_boot..(row + 1) * n_boot] {
                        let u = rng.uniform_open0();
                        let j = (-n * (u.ln() * inv_k).exp_m1()).floor() as usize;
                        *slot = sorted[j.min(sorted.len() - 1)];
                    }
                }
            };
            if parts.len() == 1 {
                job();
            } else {
                scope.spawn(job);
            }
        }
    });
    Ok(out)
}

/// Quantile `q` of ascending-sorted `sorted` by linear interpolation between order
/// statistics (numpy's default `method="linear"`).
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * q;
    let lo = h.floor() as usize;
    let frac = h - lo as f64;
    if frac == 0.0 || lo + 1 >= sorted.len() {
        return sorted[lo];
    }
    let (a, b) = (sorted[lo], sorted[lo + 1]);
    if a == b {
        a
    } else {
        a + (b - a) * frac
    }
}

/// Quantiles of [`bootstrap_best_of_k`]'s samples: a `budgets.len() × quantiles.len()`
/// row-major matrix.
pub fn bootstrap_quantiles(
    best: &[f64],
    budgets: &[usize],
    n_boot: usize,
    quantiles: &[f64],
    seed: u64,
    mode: Mode,
) -> Result<Vec<f64>, RankingError> {
    if let Some(q) = quantiles.iter().find(|q| !(0.0..=1.0).contains(*q)) {
        return invalid(format!("quantiles must lie in [0, 1], got {q}"));
    }
    let mut samples = bootstrap_best_of_k(best, budgets, n_boot, seed, mode)?;
    let mut out = Vec::with_capacity(budgets.len() * quantiles.len());
    for row in samples.chunks_mut(n_boot) {
        row.sort_unstable_by(|a, b| a.partial_cmp(b).unwrap_or(Ordering::Equal));
        out.extend(quantiles.iter().map(|&q| quantile_sorted(row, q)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute_top_k(k: usize, mode: Mode, tie: Tie, seen: &[(i64, f64)]) -> Vec<i64> {
        let mut finite: Vec<(i64, f64)> = seen.iter().copied().filter(|(_, v)| v.is_finite()).collect();
        finite.sort_by(|a, b| compare(mode, tie, (a.1, a.0), (b.1, b.0)));
        finite.into_iter().take(k).map(|(s, _)| s).collect()
    }

    #[test]
    fn top_k_matches_sorting_everything() {
        let mut rng = SplitMix64(7);
        for &mode in &[Mode::Min, Mode::Max] {
            for &tie in &[Tie::Earlier, Tie::Later] {
                for k in 1..6 {
                    let mut top = TopK::new(k, mode, tie).unwrap();
                    let mut seen = Vec::new();
                    let mut kept: Vec<i64> = Vec::new();
                    for step in 0..200i64 {
                        // Few distinct values so ties are common; some non-finite.
                        let r = rng.next() % 12;
                        let value = match r {
                            10 => f64::NAN,
                            11 => if step % 2 == 0 { f64::INFINITY } else { f64::NEG_INFINITY },
                            _ => r as f64,
                        };
                        let offer = top.offer(step, value).unwrap();
                        seen.push((step, value));
                        if offer.admitted {
                            kept.push(step);
                        }
                        kept.retain(|s| !offer.evicted.contains(s));
                        let expected = brute_top_k(k, mode, tie, &seen);
                        let got: Vec<i64> = top.entries().iter().map(|e| e.step).collect();
                        assert_eq!(got, expected);
                        let mut kept_sorted = kept.clone();
                        kept_sorted.sort();
                        let mut expected_sorted = expected.clone();
                        expected_sorted.sort();
                        assert_eq!(kept_sorted, expected_sorted, "admitted/evicted bookkeeping");
                    }
                }
            }
        }
    }

    #[test]
    fn top_k_rules() {
        let mut top = TopK::new(2, Mode::Min, Tie::Earlier).unwrap();
        assert!(!top.offer(0, f64::NAN).unwrap().admitted);
        assert!(!top.offer(1, f64::NEG_INFINITY).unwrap().admitted);
        assert!(top.offer(2, 1.0).unwrap().admitted);
        assert!(top.offer(3, 1.0).unwrap().admitted);
        // A tie with the worst kept value does not displace the earlier step.
        assert_eq!(top.offer(4, 1.0).unwrap(), Offer::default());
        assert_eq!(top.offer(5, 0.5).unwrap(), Offer { admitted: true, evicted: vec![3] });
        assert!(top.offer(5, 0.1).is_err(), "duplicate step");
        let mut later = TopK::new(1, Mode::Max, Tie::Later).unwrap();
        later.offer(0, 3.0).unwrap();
        assert_eq!(later.offer(1, 3.0).unwrap(), Offer { admitted: true, evicted: vec![0] });
        assert!(TopK::new(0, Mode::Min, Tie::Earlier).is_err());
        let mut shrink = TopK::new(3, Mode::Min, Tie::Earlier).unwrap();
        for (s, v) in [(0, 3.0), (1, 1.0), (2, 2.0)] {
            shrink.offer(s, v).unwrap();
        }
        assert_eq!(shrink.resize(1).unwrap(), vec![2, 0]);
        assert_eq!(shrink.best(), Some(Entry { step: 1, value: 1.0 }));
    }

    #[test]
    fn best_per_row_rules() {
        let values = [3.0, 1.0, 1.0, f64::NAN, f64::NAN, f64::INFINITY, 2.0, 5.0];
        let offsets = [0, 4, 6, 6, 8];
        let (pos, best) = best_per_row(&values, None, &offsets, Mode::Min, Tie::Earlier).unwrap();
        assert_eq!(pos, vec![1, -1, -1, 0]);
        assert_eq!(best[0], 1.0);
        assert!(best[1].is_nan() && best[2].is_nan());
        let (pos, _) = best_per_row(&values, None, &offsets, Mode::Min, Tie::Later).unwrap();
        assert_eq!(pos[0], 2);
        let (pos, best) = best_per_row(&values, None, &offsets, Mode::Max, Tie::Earlier).unwrap();
        assert_eq!((pos[0], best[0]), (0, 3.0));
        // With explicit steps, "earlier" means the smaller step, not the earlier slot.
        let steps = [40, 30, 20, 10, 0, 1, 0, 1];
        let (pos, _) = best_per_row(&values, Some(&steps), &offsets, Mode::Min, Tie::Earlier).unwrap();
        assert_eq!(pos[0], 2);
        assert!(best_per_row(&values, None, &[0, 4], Mode::Min, Tie::Earlier).is_err());
    }

    #[test]
    fn best_per_row_parallel_matches_serial() {
        let (rows, cols) = (3000, 400);
        let mut rng = SplitMix64(3);
        let values: Vec<f64> = (0..rows * cols).map(|_| (rng.next() % 1000) as f64).collect();
        let offsets: Vec<usize> = (0..=rows).map(|r| r * cols).collect();
        let (pos, best) = best_per_row(&values, None, &offsets, Mode::Max, Tie::Earlier).unwrap();
        for r in 0..rows {
            let row = &values[r * cols..(r + 1) * cols];
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            assert_eq!(best[r], m);
            assert_eq!(pos[r] as usize, row.iter().position(|&v| v == m).unwrap());
        }
    }

    #[test]
    fn rank_puts_non_finite_last() {
        let v = [2.0, f64::NAN, 1.0, 2.0, f64::INFINITY, 0.5];
        assert_eq!(rank(&v, Mode::Min), vec![5, 2, 0, 3, 1, 4]);
        assert_eq!(rank(&v, Mode::Max), vec![0, 3, 2, 5, 1, 4]);
    }

    #[test]
    fn buckets() {
        let edges = bucket_edges(&[1.0, 10.0, 100.0, f64::NAN, -1.0], 2, true).unwrap();
        assert_eq!(edges.len(), 3);
        assert!((edges[1] - 10.0).abs() < 1e-9);
        assert_eq!((edges[0], edges[2]), (1.0, 100.0));
        let x = [1.0, 5.0, 20.0, 100.0, 1000.0, f64::NAN];
        let y = [5.0, 1.0, 7.0, f64::NAN, 0.0, 0.0];
        let (idx, best) = best_per_bucket(&x, &y, &edges, Mode::Min).unwrap();
        assert_eq!(idx, vec![1, 2]);
        assert_eq!(best, vec![1.0, 7.0]);
        assert!(best_per_bucket(&x, &y, &[1.0, 1.0], Mode::Min).is_err());
        assert!(bucket_edges(&[-1.0], 3, true).is_err());
        let one = bucket_edges(&[2.0, 2.0], 1, false).unwrap();
        assert_eq!(bucket_of(&one, 2.0), Some(0));
    }

    #[test]
    fn bootstrap_matches_the_exact_law() {
        // Best of k from n ranked values: P(J >= j) = (1 - j/n)^k.
        let n = 20usize;
        let best: Vec<f64> = (0..n).map(|i| i as f64).collect();
        let n_boot = 200_000;
        for &k in &[1usize, 3, 10] {
            let samples = bootstrap_best_of_k(&best, &[k], n_boot, 11, Mode::Min).unwrap();
            for j in 0..n {
                let got = samples.iter().filter(|&&s| s >= j as f64).count() as f64 / n_boot as f64;
                let exact = (1.0 - j as f64 / n as f64).powi(k as i32);
                assert!((got - exact).abs() < 0.005, "k={k} j={j}: {got} vs {exact}");
            }
        }
        // Max mode mirrors; infeasible draws rank last.
        let s = bootstrap_best_of_k(&[f64::NAN, 1.0], &[1], 10_000, 1, Mode::Max).unwrap();
        let infeasible = s.iter().filter(|v| **v == f64::NEG_INFINITY).count();
        assert!(infeasible > 4500 && infeasible < 5500);
        assert!(bootstrap_best_of_k(&[], &[1], 10, 0, Mode::Min).is_err());
        assert!(bootstrap_best_of_k(&[1.0], &[0], 10, 0, Mode::Min).is_err());
    }

    #[test]
    fn quantiles_interpolate_like_numpy() {
        let s = [1.0, 2.0, 4.0, 8.0];
        assert_eq!(quantile_sorted(&s, 0.0), 1.0);
        assert_eq!(quantile_sorted(&s, 1.0), 8.0);
        assert!((quantile_sorted(&s, 0.5) - 3.0).abs() < 1e-12);
        assert_eq!(quantile_sorted(&[1.0, f64::INFINITY], 0.0), 1.0);
        let q = bootstrap_quantiles(&[1.0, 2.0], &[1, 50], 1000, &[0.0, 1.0], 0, Mode::Min).unwrap();
        assert_eq!(q.len(), 4);
        assert!(bootstrap_quantiles(&[1.0], &[1], 10, &[1.5], 0, Mode::Min).is_err());
    }
}

//! tunebook's Rust core.
//!
//! The algorithm modules ([`halton`], [`ranking`]) are plain Rust on slices and know
//! nothing about Python, so `cargo test` needs no interpreter. The PyO3 bindings live
//! in one module, [`bindings`], compiled only with the `python` feature (maturin
//! turns it on).

pub mod halton;
pub mod ranking;

#[cfg(feature = "python")]
mod bindings;

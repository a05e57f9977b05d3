//! Fuzz properties of the ssetally core, shared by the cargo-fuzz targets in
//! `fuzz_targets/` and the repository's `tests/rust_fuzz_smoke.rs`.

pub mod props;

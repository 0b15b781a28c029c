//! Criterion micro-benchmarks of Ferrite's hot paths; the benchmarks live in `benches/`.
//! Run them with `cargo bench --manifest-path bench/micro/Cargo.toml` (see `../README.md`).

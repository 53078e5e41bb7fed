//! unimask-core: the pure-Rust engine of unimask.
//!
//! The modules mirror the stages of the data path: text is cleaned and normalized
//! (`normalize`), split into words (`pretokenize`), cut into WordPiece ids (`wordpiece`,
//! `vocab`), then corrupted for pretraining (`masking`, `spans`, ...) and stored in
//! corpus shards (`shards`). No PyO3 here: the `unimask-py` crate is the only binding layer.

pub mod block_cache;
pub mod error;
pub mod pool;

// tokenizer stages
pub mod byteclass;
pub mod normalize;
pub mod padding;
pub mod pretokenize;
pub mod segment;
pub mod shards;
pub mod tokenizer;
pub mod train;
pub mod vocab;
pub mod wordpiece;

// pretraining data path
pub mod causal;
pub mod masking;
pub mod nsp;
pub mod rng;
pub mod spans;
pub mod unilm;

pub use error::{Error, Result};

/// Version of this crate, reported by `unimask info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Facts about this build, reported by `unimask info`.
pub fn build_info() -> Vec<(&'static str, String)> {
    vec![
        ("core_version", VERSION.to_string()),
        ("debug_assertions", cfg!(debug_assertions).to_string()),
        ("target_arch", std::env::consts::ARCH.to_string()),
        ("target_os", std::env::consts::OS.to_string()),
        (
            "available_parallelism",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .to_string(),
        ),
    ]
}

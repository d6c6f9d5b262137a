//! The subcommands, one module each: its arguments (a `clap::Args` struct, or a
//! `clap::Subcommand` enum for `analyze`, `data` and `bench`) and `run_cmd`, which builds a
//! library config from them, calls the library and prints.

pub mod analyze;
pub mod bench;
pub mod convert;
pub mod data;
pub mod distill;
pub mod embed;
pub mod eval;
pub mod finetune;
pub mod generate;
pub mod mad;
pub mod merge;
pub mod score;
pub mod train;
pub mod vep;

//! Applications over the models: the file pipelines behind `hyena embed` and `hyena score`
//! ([`dna`]), variant-effect scoring behind `hyena vep` ([`vep`]), sharded resumable jobs and their merge
//! ([`shard`], [`sharded`]), and the benchmarks behind
//! `hyena bench` ([`mod@bench`]).

pub mod bench;
pub mod dna;
pub mod shard;
pub mod sharded;
pub mod vep;

//! Applications over the models: the file pipelines behind `hyena embed` and `hyena score`
//! ([`dna`]), and the benchmarks behind `hyena bench` ([`mod@bench`]).

pub mod bench;
pub mod dna;

//! Datasets and task builders: what a model is trained and evaluated on.
//!
//! - [`tokens`]: token streams of FASTA/FASTQ or text files, split into training and validation.
//! - [`seqcls`]: sequence-classification datasets (GenomicBenchmarks layout or CSV).
//! - [`species`]: the species-of-origin task, built from real bacterial genomes.
//! - [`mad`]: the six MAD synthetic token-manipulation tasks (Poli et al., "Mechanistic Design
//!   and Scaling of Hybrid Architectures", arXiv 2403.17844; reference code athms/mad-lab),
//!   with their baseline settings, difficulty sweeps, generators and accuracy metric.

pub mod mad;
pub mod seqcls;
pub mod species;
pub mod tokens;

//! Count-based baselines that a model has to beat.
//!
//! - [`markov`]: order-k Markov language models (KT smoothing) scored in bits per token.
//! - [`kmer`]: an order-k Markov classifier for sequence classification, with the per-class
//!   accuracy and confusion matrix that fine-tuning reports too.

pub mod kmer;
pub mod markov;

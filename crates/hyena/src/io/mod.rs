//! Reading and writing tensors: safetensors files with atomic writes.

pub mod fasta;
pub mod hf;
pub mod npy;
pub mod pickle;
pub mod safetensors;
pub mod seqcls;
pub mod text;
pub mod tokenizer;
pub mod torch;

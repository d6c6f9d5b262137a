//! File formats, and nothing above them: safetensors (atomic writes; memory-mapped for large
//! bf16 models), `.npy`, FASTA/FASTQ, compressed text, tokenizers, a safe reader of PyTorch
//! checkpoints, a minimal YAML reader for flat model configs, and variant files (VCF/TSV). No model type is known here;
//! the model families turn these into models.

pub mod fasta;
pub mod mapped;
pub mod npy;
pub mod safetensors;
pub mod text;
pub mod tokenizer;
pub mod torch;
pub mod variants;
pub mod yaml;

//! Reading and writing tensors: safetensors files with atomic writes.

pub mod safetensors;

//! Fuzz target `stripedhyena_config`: bytes as a StripedHyena 1 Hugging Face `config.json`
//! (JSON, then the config reader with its defaults and checks), and the same value as a vortex
//! config. Neither may panic; a config either builds a valid architecture or is an error.
#![no_main]
use std::path::Path;

use hyena::models::striped::Evo2Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(c) = Evo2Config::from_hf_stripedhyena(&v, Path::new("config.json")) {
        assert!(c.validate().is_ok());
        assert!(c.qkv_rows() <= 3 * c.hidden_size);
    }
    if let Ok(c) = Evo2Config::from_vortex(&v, Path::new("config.yml")) {
        assert!(c.validate().is_ok());
    }
});

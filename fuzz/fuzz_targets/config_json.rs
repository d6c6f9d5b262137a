//! Fuzz target `config_json`: bytes as a model directory's `config.json`, through everything
//! that reads one before a model is built: the JSON parser, the family detection of the
//! run-directory module, the `model` section as a HyenaDNA run config (validated), as a zoo
//! architecture (layer names checked), a released HyenaDNA config (HF or Lightning layout,
//! validated), a classifier's `classes`, and the whole text as a training run config.
//! Models are not built: a valid config may ask for any size, and building it is not parsing.
#![no_main]
use std::path::Path;

use hyena::checkpoint::{parse_json, FAMILIES};
use hyena::models::config_section;
use hyena::models::hyenadna::config::LmConfig;
use hyena::models::hyenadna::hf::{kind_of, lm_config_from_reference};
use hyena::models::zoo::{parse_layers, ArchConfig};
use hyena::models::Pool;
use hyena::train::run::RunConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("config.json");
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(run) = RunConfig::parse(text, path) {
            let _ = run.model.validate();
        }
    }
    let Ok(cfg) = parse_json(data, path) else {
        return;
    };
    for family in FAMILIES {
        let _ = family.detect(&cfg);
    }
    let _ = kind_of(&cfg);
    if let Ok(Some(lm)) = config_section::<LmConfig>(&cfg, "model", path) {
        let _ = lm.validate();
    }
    if let Ok(Some(arch)) = config_section::<ArchConfig>(&cfg, "model", path) {
        let _ = parse_layers(&arch.layers.join(","));
    }
    let _ = config_section::<Vec<String>>(&cfg, "classes", path);
    if let Some(pool) = cfg.get("finetune").and_then(|f| f.get("pool")) {
        let _ = serde_json::from_value::<Pool>(pool.clone());
    }
    let _ = lm_config_from_reference(&cfg, path);
});

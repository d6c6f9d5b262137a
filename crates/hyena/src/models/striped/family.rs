//! StripedHyena 2 as a loadable family: the model directories it is read from, and what the
//! commands do with it ([`LanguageModel`]).
//!
//! A directory is a StripedHyena 2 model when it holds
//! - a hyena model directory: `config.json` with an `evo2` section (an [`Evo2Config`]) and
//!   `model.safetensors` (what `hyena convert` writes); or
//! - released files as downloaded: a vortex YAML config (`*.yml`) beside the checkpoint
//!   (`NAME.pt`, or byte-split shards `NAME.pt.part0`, `NAME.pt.part1`, …, read as one stream);
//!   without a YAML file, the checkpoint's name must be a released model's (`evo2_7b.pt` →
//!   the `evo2_7b` preset).

use std::any::Any;
use std::collections::BTreeMap;
use std::path::Path;

use super::config::Evo2Config;
use super::model::{Evo2, Taps, Workspace};
use crate::error::{Error, Result};
use crate::io::safetensors::{Tensor, TensorFile};
use crate::layers::layer::Slot;
use crate::layers::lean::InferWorkspace;
use crate::models::generate::{DecodeMode, Decoder};
use crate::models::{model_section, Family, LanguageModel};
use crate::ops::loss::LossSum;
use crate::params::DType;

/// Registry name.
pub const FAMILY: &str = "evo2";

/// A loaded StripedHyena 2 model, as the commands see it.
#[derive(Debug)]
pub struct Evo2Lm {
    pub net: Evo2,
}

/// Buffers kept in an [`InferWorkspace`] between calls.
#[derive(Default)]
struct Buffers {
    ws: Workspace,
    out: Vec<f32>,
}

impl Evo2Lm {
    /// The named output `name` (a reference module name, see [`Evo2::tap_names`]) of `tokens`,
    /// `[L, width]` rows, and its width.
    pub fn named_output(
        &self,
        tokens: &[u32],
        name: &str,
        ws: &mut Workspace,
    ) -> Result<(Vec<f32>, usize)> {
        let Some((blocks, _)) = self.net.tap_info(name) else {
            return Err(Error::config(
                "layer",
                name,
                format!(
                    "not an output of this model; names are those of the reference's modules, \
                     e.g. embedding_layer, blocks.0 … blocks.{}, blocks.N.mlp.l3, \
                     blocks.N.pre_norm, blocks.N.filter (Hyena blocks), blocks.N.inner_mha_cls \
                     (attention blocks), norm",
                    self.net.n_layer().saturating_sub(1)
                ),
            ));
        };
        let mut taps = Taps::of(&[name]);
        self.net
            .forward(tokens, blocks, false, &mut taps, ws, None)?;
        taps.got
            .remove(name)
            .ok_or_else(|| Error::config("layer", name, "was not produced by the forward"))
    }
}

impl LanguageModel for Evo2Lm {
    fn family(&self) -> &'static str {
        FAMILY
    }
    fn config_json(&self) -> serde_json::Value {
        serde_json::json!({ FAMILY: self.net.cfg })
    }
    fn vocab_size(&self) -> usize {
        self.net.cfg.vocab_size
    }
    fn max_len(&self) -> usize {
        self.net.cfg.max_seqlen
    }
    fn d_model(&self) -> usize {
        self.net.d_model()
    }
    fn n_layer(&self) -> usize {
        self.net.n_layer()
    }
    fn loss(&self, x: &[u32], y: &[u32], b: usize, l: usize, ws: &mut Slot) -> Result<LossSum> {
        let buf = ws.get_or_default::<Buffers>();
        let v = self.net.cfg.vocab_size;
        let mut total = LossSum::default();
        for r in 0..b {
            let logits = self.net.logits(&x[r * l..(r + 1) * l], &mut buf.ws)?;
            for t in 0..l {
                let target = y[r * l + t] as usize;
                if target >= v {
                    continue;
                }
                let row = &logits[t * v..(t + 1) * v];
                total.loss_sum -= crate::ops::loss::log_prob(row, target);
                total.count += 1;
                if crate::ops::loss::argmax(row).0 == target {
                    total.correct += 1;
                }
            }
        }
        Ok(total)
    }
    fn hidden_states<'w>(
        &self,
        tokens: &[u32],
        layer: usize,
        ws: &'w mut InferWorkspace,
    ) -> Result<&'w [f32]> {
        let nl = self.net.n_layer();
        if layer > nl {
            return Err(Error::config(
                "layer",
                layer,
                format!("the model has {nl} blocks (0: the embeddings, {nl}: the final, normalised states)"),
            ));
        }
        let mut progress = ws.on_block.take();
        let buf = ws.other.get_or_default::<Buffers>();
        let name = if layer == 0 {
            "embedding_layer".to_string()
        } else if layer == nl && self.net.cfg.final_norm {
            "norm".to_string()
        } else {
            format!("blocks.{}", layer - 1)
        };
        let mut taps = Taps::of(&[name.as_str()]);
        let r = self.net.forward(
            tokens,
            layer,
            false,
            &mut taps,
            &mut buf.ws,
            progress
                .as_deref_mut()
                .map(|f| f as &mut (dyn FnMut(usize, usize) + Send)),
        );
        ws.on_block = progress;
        r?;
        let buf = ws.other.get_or_default::<Buffers>();
        buf.out = taps.got.remove(&name).map(|x| x.0).unwrap_or_default();
        Ok(&buf.out)
    }
    fn log_likelihood(
        &self,
        tokens: &[u32],
        ws: &mut InferWorkspace,
        out: &mut Vec<f32>,
    ) -> Result<f64> {
        let buf = ws.other.get_or_default::<Buffers>();
        self.net.log_likelihood(tokens, &mut buf.ws, out)
    }
    fn decoder(&self, _mode: DecodeMode) -> Result<Box<dyn Decoder + '_>> {
        Err(Error::config(
            "model",
            FAMILY,
            "generation with StripedHyena 2 models is not available yet (scoring and embedding \
             are)",
        ))
    }
    fn checkpoint_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for store in [&self.net.params, &self.net.exact] {
            for (name, shape, data) in store.tensors() {
                out.insert(
                    name.to_string(),
                    Tensor {
                        shape: shape.to_vec(),
                        data,
                    },
                );
            }
        }
        out
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Model directories with `config.json` holding an `evo2` section.
pub struct StripedFamily;

impl Family for StripedFamily {
    fn name(&self) -> &'static str {
        FAMILY
    }
    fn detect(&self, config: &serde_json::Value) -> bool {
        config.get(FAMILY).is_some_and(|v| !v.is_null())
    }
    fn load(
        &self,
        config: &serde_json::Value,
        weights: &TensorFile,
        dir: &Path,
    ) -> Result<Box<dyn LanguageModel>> {
        let file = dir.join("config.json");
        let cfg: Evo2Config = model_section(config, FAMILY, &file, &[])?
            .ok_or_else(|| Error::format(&file, "no `evo2` section"))?;
        let net = Evo2::load(cfg, weights, DType::F32)?;
        Ok(Box::new(Evo2Lm { net }))
    }
}

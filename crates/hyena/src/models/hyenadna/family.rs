//! HyenaDNA as a loadable family: hyena run directories (`config.json` with a `model`
//! section; a `distill` section adds the modal filters of a distilled model), what the commands
//! do with the model ([`LanguageModel`]), and its decoders for generation.
//!
//! A distilled checkpoint holds, beside the usual tensors, per block
//! `hyena.backbone.layers.{i}.mixer.filter_fn.{poles,residues}` `[(N−1)·D, M, 1, 2]` (re, im:
//! StripedHyena's modal layout) and `filter_fn.h0` `[(N−1)·D]`.

use std::any::Any;
use std::collections::BTreeMap;
use std::path::Path;

use faer::c64;

use super::config::LmConfig;
use super::model::{HyenaLm, LmCache, LmWorkspace};
use super::recurrent::RecurrentState;
use crate::error::{Error, Result};
use crate::io::safetensors::{Tensor, TensorFile};
use crate::layers::hyena::modal::{ModalBank, ModalFilter, Mode};
use crate::layers::layer::Slot;
use crate::layers::lean::InferWorkspace;
use crate::models::generate::{ConvDecoder, DecodeMode, Decoder, WindowForward};
use crate::models::{model_section, tensor_map, Family, LanguageModel, Model};
use crate::ops::loss::LossSum;
use crate::params::{IgnoredKey, TensorSource, Tracked};

/// Keys of a run directory's `model` section (an [`LmConfig`]) that may be absent, each with
/// why; every other key is required ([`model_section`]).
/// - `operator.filter.learn_pos_emb`: added after the first run directories were written;
///   absent, the positional embedding `z` is a buffer, which is what every earlier run did.
pub const LM_OPTIONAL_KEYS: &[&str] = &["operator.filter.learn_pos_emb"];

/// The tensors a fine-tuned classifier's directory holds beside its backbone, which
/// [`load_run`] leaves unread when it loads the backbone as a language model.
const CLASSIFIER_HEAD: &[IgnoredKey] = &[IgnoredKey {
    pattern: "head.output_transform.*",
    reason: "the classification head of a `hyena finetune` directory (a config with `classes`); \
             the language model is its backbone",
}];

/// The registry entry of hyena's own HyenaDNA run directories (plain or distilled).
pub struct HyenaDnaRuns;

impl Family for HyenaDnaRuns {
    fn name(&self) -> &'static str {
        "hyenadna"
    }
    fn detect(&self, config: &serde_json::Value) -> bool {
        config
            .get("model")
            .is_some_and(|m| m.get("operator").is_some())
    }
    fn load(
        &self,
        config: &serde_json::Value,
        weights: &TensorFile,
        dir: &Path,
    ) -> Result<Box<dyn LanguageModel>> {
        Ok(Box::new(load_run(config, weights, dir)?))
    }
}

/// The HyenaDNA model of a hyena run directory's `config.json` and weights: every key of the
/// `model` section required (but [`LM_OPTIONAL_KEYS`]), every tensor of the weights used,
/// every value finite.
pub fn load_run(
    config: &serde_json::Value,
    weights: &TensorFile,
    dir: &Path,
) -> Result<Model<HyenaLm>> {
    let cfg_path = dir.join("config.json");
    let cfg: LmConfig =
        model_section(config, "model", &cfg_path, LM_OPTIONAL_KEYS)?.ok_or_else(|| {
            Error::format(
            &cfg_path,
            "no `model` section (hyena run) and no `d_model` key (HyenaDNA checkpoint): is this \
             a model directory?",
        )
        })?;
    // Every tensor of the file must be read: parameters, filter buffers and (distilled) modal
    // filters; nothing in a hyena run's weights is left out.
    let src = Tracked::new(weights);
    let (mut net, params) = HyenaLm::load(&cfg, &src, true)?;
    if config.get("distill").is_some_and(|x| !x.is_null()) {
        net.set_modal_banks(read_banks(&src, &net)?)?;
    }
    let ignored = if config.get("classes").is_some() {
        CLASSIFIER_HEAD
    } else {
        &[]
    };
    src.check_all_read(ignored, Some(("n_layer", cfg.n_layer)))?;
    Ok(Model { net, params })
}

/// Name prefix of block `i`'s modal tensors.
fn modal_prefix(i: usize) -> String {
    format!("hyena.backbone.layers.{i}.mixer.filter_fn.")
}

/// The modal banks stored in a distilled checkpoint, one per block of `lm`.
pub fn read_banks(src: &dyn TensorSource, lm: &HyenaLm) -> Result<Vec<ModalBank>> {
    let (s, d) = (lm.cfg.operator.order - 1, lm.cfg.d_model());
    let read = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
        match src.shape_of(name) {
            None => Err(Error::MissingTensor {
                file: src.origin(),
                name: name.to_string(),
                available: src.names().len(),
            }),
            Some(sh) if sh != shape => Err(Error::format(
                src.origin(),
                format!("tensor `{name}` has shape {sh:?}, expected {shape:?} (config mismatch?)"),
            )),
            Some(_) => {
                let mut v = vec![0.0; shape.iter().product()];
                src.read_f32(name, &mut v)?;
                Ok(v)
            }
        }
    };
    let mut banks = Vec::with_capacity(lm.cfg.n_layer);
    for i in 0..lm.cfg.n_layer {
        let p = modal_prefix(i);
        let m = src
            .shape_of(&format!("{p}poles"))
            .and_then(|s| s.get(1).copied())
            .unwrap_or(0);
        let shape = [s * d, m, 1, 2];
        let poles = read(&format!("{p}poles"), &shape)?;
        let res = read(&format!("{p}residues"), &shape)?;
        let h0 = read(&format!("{p}h0"), &[s * d])?;
        let filters: Vec<ModalFilter> = (0..s * d)
            .map(|k| ModalFilter {
                h0: h0[k] as f64,
                modes: (0..m)
                    .map(|j| {
                        let o = (k * m + j) * 2;
                        Mode {
                            pole: c64::new(poles[o] as f64, poles[o + 1] as f64),
                            residue: c64::new(res[o] as f64, res[o + 1] as f64),
                        }
                    })
                    .collect(),
            })
            .collect();
        banks.push(ModalBank::from_filters(s, d, &filters)?);
    }
    Ok(banks)
}

impl Model<HyenaLm> {
    /// The checkpoint tensors: parameters, filter buffers and, for a distilled model, the modal
    /// filters.
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        let mut t = tensor_map(&self.params, self.net.buffer_tensors());
        for i in 0..self.net.blocks.len() {
            let Some(b) = self.net.bank(i) else { continue };
            let p = modal_prefix(i);
            let flat = |v: &[c64]| v.iter().flat_map(|z| [z.re as f32, z.im as f32]).collect();
            let shape = vec![b.stages * b.d, b.m, 1, 2];
            t.insert(
                format!("{p}poles"),
                Tensor {
                    shape: shape.clone(),
                    data: flat(&b.poles),
                },
            );
            t.insert(
                format!("{p}residues"),
                Tensor {
                    shape,
                    data: flat(&b.residues),
                },
            );
            t.insert(
                format!("{p}h0"),
                Tensor {
                    shape: vec![b.stages * b.d],
                    data: b.h0.iter().map(|&v| v as f32).collect(),
                },
            );
        }
        t
    }
}

impl LanguageModel for Model<HyenaLm> {
    fn family(&self) -> &'static str {
        "hyenadna"
    }
    fn config_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.net.cfg).unwrap_or_default()
    }
    fn vocab_size(&self) -> usize {
        self.net.cfg.vocab_size
    }
    fn max_len(&self) -> usize {
        self.net.cfg.operator.l_max
    }
    fn d_model(&self) -> usize {
        self.net.cfg.d_model()
    }
    fn n_layer(&self) -> usize {
        self.net.cfg.n_layer
    }
    fn loss(&self, x: &[u32], y: &[u32], b: usize, l: usize, ws: &mut Slot) -> Result<LossSum> {
        self.net
            .loss(self.p(), x, y, b, l, ws.get_or_default::<LmWorkspace>())
    }
    fn hidden_states<'w>(
        &self,
        tokens: &[u32],
        layer: usize,
        ws: &'w mut InferWorkspace,
    ) -> Result<&'w [f32]> {
        self.net.hidden_states(self.p(), tokens, layer, ws)
    }
    fn hidden_states_owned(
        &self,
        tokens: &[u32],
        layer: usize,
        ws: &mut InferWorkspace,
    ) -> Result<Vec<f32>> {
        self.net.hidden_states(self.p(), tokens, layer, ws)?;
        Ok(ws.take_hidden_states())
    }
    fn log_likelihood(
        &self,
        tokens: &[u32],
        ws: &mut InferWorkspace,
        out: &mut Vec<f32>,
    ) -> Result<f64> {
        self.net.log_likelihood(self.p(), tokens, ws, out)
    }
    fn logits(&self, tokens: &[u32], ws: &mut InferWorkspace, out: &mut Vec<f32>) -> Result<usize> {
        self.net.logits(self.p(), tokens, ws, out)
    }
    fn decoder(&self, mode: DecodeMode) -> Result<Box<dyn Decoder + '_>> {
        Ok(match mode {
            DecodeMode::Conv => Box::new(ConvDecoder::new(self)),
            DecodeMode::Recurrent => Box::new(RecurrentDecoder::new(self)?),
        })
    }
    fn checkpoint_tensors(&self) -> BTreeMap<String, Tensor> {
        self.tensors()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl WindowForward for Model<HyenaLm> {
    type Cache = LmCache;
    fn window(&self) -> usize {
        self.net.cfg.operator.l_max
    }
    fn forward_window(&self, tokens: &[u32], cache: &mut LmCache) -> Result<()> {
        self.net.forward(self.p(), tokens, 1, tokens.len(), cache)
    }
    fn logits_at<'c>(&self, cache: &'c LmCache, t: usize) -> &'c [f32] {
        let (v_real, v_pad) = (self.net.cfg.vocab_size, self.net.cfg.padded_vocab());
        &cache.logits[t * v_pad..t * v_pad + v_real]
    }
}

/// Generation by recurrence (distilled models): the prompt's first `l_max` tokens prefilled by
/// the parallel forward, any rest and every new token by O(1) steps. Context beyond `l_max` is
/// not cut off: the state carries the whole past.
pub struct RecurrentDecoder<'a> {
    m: &'a Model<HyenaLm>,
    state: RecurrentState,
}

impl<'a> RecurrentDecoder<'a> {
    pub fn new(m: &'a Model<HyenaLm>) -> Result<Self> {
        if !m.net.is_recurrent() {
            return Err(Error::config(
                "mode",
                "recurrent",
                "not a distilled model: recurrent generation needs modal long filters (make \
                 them with `hyena distill --model DIR --out DIR2`), or use --mode conv",
            ));
        }
        Ok(RecurrentDecoder {
            m,
            state: RecurrentState::default(),
        })
    }
}

impl Decoder for RecurrentDecoder<'_> {
    fn prefill(&mut self, prompt: &[u32]) -> Result<()> {
        let head = prompt.len().min(self.m.net.cfg.operator.l_max);
        self.state = self
            .m
            .net
            .prefill(self.m.p(), &prompt[..head], &mut LmCache::default())?;
        for &t in &prompt[head..] {
            self.step(t)?;
        }
        Ok(())
    }
    fn step(&mut self, token: u32) -> Result<()> {
        self.m.net.step(self.m.p(), token, &mut self.state)
    }
    fn logits(&self) -> &[f32] {
        &self.state.logits[..self.m.net.cfg.vocab_size]
    }
}

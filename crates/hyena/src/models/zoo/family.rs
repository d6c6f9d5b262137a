//! Zoo language models as a loadable family: a model directory whose `config.json` has a
//! `model` section with a `layers` list (an [`ArchConfig`]) and whose `model.safetensors`
//! holds the tensors under the zoo's names (`embedding.weight`, `layers.{i}.norm.*`,
//! `layers.{i}.mixer.*`, `norm_f.*`, `unembed.*`). What the commands do with such a model
//! ([`LanguageModel`]: eval, score, embed, generate) runs its training forward; generation
//! steps token by token when every sequence mixer of the architecture has a recurrent form.
//!
//! A model with MAD's encoder-decoder head (the compression task) reads the whole sequence
//! before it predicts any position, so it is not a causal language model and is refused.

use std::any::Any;
use std::collections::BTreeMap;
use std::path::Path;

use super::{ArchConfig, ZooCache, ZooModel};
use crate::error::{Error, Result};
use crate::io::safetensors::{Tensor, TensorFile};
use crate::layers::layer::Slot;
use crate::layers::lean::InferWorkspace;
use crate::models::generate::{ConvDecoder, DecodeMode, Decoder, WindowForward};
use crate::models::{model_section, tensor_map, Family, LanguageModel, Model};
use crate::ops::linear::linear_forward;
use crate::ops::loss::{log_prob, LossSum};
use crate::params::{DType, Init, ParamStore, Tracked};

/// Keys of a zoo model directory's `model` section (an [`ArchConfig`]) that may be absent, each
/// with why; every other key is required ([`model_section`]).
/// - `decoder`: added with MAD's compression head, after zoo models were first saved; absent,
///   the model has no encoder-decoder head, as every earlier one.
pub const ZOO_OPTIONAL_KEYS: &[&str] = &["decoder"];

/// The registry entry of zoo language-model directories.
pub struct ZooRuns;

impl Family for ZooRuns {
    fn name(&self) -> &'static str {
        "zoo"
    }
    fn detect(&self, config: &serde_json::Value) -> bool {
        config
            .get("model")
            .and_then(|m| m.get("layers"))
            .is_some_and(|l| l.is_array())
    }
    fn load(
        &self,
        config: &serde_json::Value,
        weights: &TensorFile,
        dir: &Path,
    ) -> Result<Box<dyn LanguageModel>> {
        let cfg_path = dir.join("config.json");
        let cfg: ArchConfig = model_section(config, "model", &cfg_path, ZOO_OPTIONAL_KEYS)?
            .ok_or_else(|| Error::format(&cfg_path, "no `model` section"))?;
        if cfg.decoder {
            return Err(Error::format(
                &cfg_path,
                "this zoo model has MAD's encoder-decoder head (the compression task): it reads \
                 the whole sequence before predicting, so it is not a language model the \
                 commands can score or sample",
            ));
        }
        let src = Tracked::new(weights);
        let (net, params) =
            ParamStore::build(Init::From(&src), DType::F32, |vb| ZooModel::new(&cfg, vb))?;
        src.check_all_read(&[], Some(("layers", cfg.layers.len())))?;
        Ok(Box::new(Model { net, params }))
    }
}

/// Buffers of [`LanguageModel::loss`] on a zoo model.
#[derive(Default)]
struct LossScratch {
    cache: ZooCache,
    targets: Vec<i32>,
    dlogits: Vec<f32>,
}

impl Model<ZooModel> {
    /// Logits `[L, V]` of one sequence by the training forward (in `ws`'s zoo cache).
    fn logit_rows<'w>(&self, tokens: &[u32], ws: &'w mut InferWorkspace) -> Result<&'w [f32]> {
        let cache = ws.other.get_or_default::<ZooCache>();
        self.net.forward(self.p(), tokens, 1, tokens.len(), cache)?;
        Ok(&cache.logits[..tokens.len() * self.net.cfg.vocab_size])
    }
}

impl LanguageModel for Model<ZooModel> {
    fn family(&self) -> &'static str {
        "zoo"
    }
    fn config_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.net.cfg).unwrap_or_default()
    }
    fn vocab_size(&self) -> usize {
        self.net.cfg.vocab_size
    }
    fn max_len(&self) -> usize {
        self.net.cfg.max_len
    }
    fn d_model(&self) -> usize {
        self.net.cfg.d_model
    }
    fn n_layer(&self) -> usize {
        self.net.layers.len()
    }
    fn loss(&self, x: &[u32], y: &[u32], b: usize, l: usize, ws: &mut Slot) -> Result<LossSum> {
        let s = ws.get_or_default::<LossScratch>();
        self.net.forward(self.p(), x, b, l, &mut s.cache)?;
        s.targets.clear();
        s.targets.extend(y.iter().map(|&t| t as i32));
        self.net.loss(&s.cache, &s.targets, None, &mut s.dlogits)
    }
    fn hidden_states<'w>(
        &self,
        tokens: &[u32],
        layer: usize,
        ws: &'w mut InferWorkspace,
    ) -> Result<&'w [f32]> {
        let nl = self.net.layers.len();
        if layer > nl {
            return Err(Error::config(
                "layer",
                layer,
                format!("the model has {nl} layers (0: the embeddings, {nl}: the final ones)"),
            ));
        }
        let cache = ws.other.get_or_default::<ZooCache>();
        // No rows for the head: only the hidden states are wanted.
        self.net
            .forward_rows(self.p(), tokens, 1, tokens.len(), Some(Vec::new()), cache)?;
        Ok(if layer < nl {
            &cache.xs[layer]
        } else {
            &cache.hs[nl]
        })
    }
    fn log_likelihood(
        &self,
        tokens: &[u32],
        ws: &mut InferWorkspace,
        out: &mut Vec<f32>,
    ) -> Result<f64> {
        let v = self.net.cfg.vocab_size;
        let logits = self.logit_rows(tokens, ws)?;
        out.clear();
        let mut total = 0.0;
        for (row, &next) in logits.chunks_exact(v).zip(&tokens[1..]) {
            let lp = log_prob(row, next as usize);
            out.push(lp as f32);
            total += lp;
        }
        Ok(total)
    }
    fn logits(&self, tokens: &[u32], ws: &mut InferWorkspace, out: &mut Vec<f32>) -> Result<usize> {
        out.clear();
        out.extend_from_slice(self.logit_rows(tokens, ws)?);
        Ok(self.net.cfg.vocab_size)
    }
    fn decoder(&self, mode: DecodeMode) -> Result<Box<dyn Decoder + '_>> {
        Ok(match mode {
            DecodeMode::Conv => Box::new(ConvDecoder::new(self)),
            DecodeMode::Recurrent => Box::new(ZooRecurrentDecoder {
                state: self.net.start(self.p())?,
                m: self,
            }),
        })
    }
    fn checkpoint_tensors(&self) -> BTreeMap<String, Tensor> {
        tensor_map(&self.params, std::iter::empty())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The state of one sequence stepped through a zoo model: each layer's state (a sequence
/// mixer's recurrent state, or a channel mixer's forward cache) and the row buffers.
pub struct ZooState {
    layers: Vec<Slot>,
    x: Vec<f32>,
    h: Vec<f32>,
    y: Vec<f32>,
    mean: Vec<f32>,
    rstd: Vec<f32>,
    /// Logits `[V]` of the next token, after a step.
    pub logits: Vec<f32>,
}

impl ZooModel {
    /// The first layer name of the architecture that mixes positions but has no token-by-token
    /// form (attention, the Hyena operators, RTF), if any.
    pub fn not_recurrent(&self) -> Option<&str> {
        self.layers
            .iter()
            .zip(&self.cfg.layers)
            .find(|((_, l), _)| l.mixes_positions() && l.recurrent().is_none())
            .map(|(_, n)| n.as_str())
    }

    /// The state before a sequence's first token.
    pub fn start(&self, p: &[f32]) -> Result<ZooState> {
        if let Some(name) = self.not_recurrent() {
            return Err(Error::config(
                "mode",
                "recurrent",
                format!(
                    "the `{name}` layer has no token-by-token form (the recurrent layers are \
                     se, mr, li and ssm); use --mode conv"
                ),
            ));
        }
        if self.decoder.is_some() {
            return Err(Error::config(
                "mode",
                "recurrent",
                "a model with the encoder-decoder head is not causal",
            ));
        }
        let layers = self
            .layers
            .iter()
            .map(|(_, l)| match l.recurrent() {
                Some(r) if l.mixes_positions() => r.start(p),
                _ => Ok(Slot::default()),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ZooState {
            layers,
            x: Vec::new(),
            h: Vec::new(),
            y: Vec::new(),
            mean: Vec::new(),
            rstd: Vec::new(),
            logits: Vec::new(),
        })
    }

    /// Consume `token`: the layers' states advance one position and `state.logits` holds the
    /// next token's logits. Equals the last row of [`ZooModel::forward`] over the sequence so
    /// far.
    pub fn step(&self, p: &[f32], token: u32, st: &mut ZooState) -> Result<()> {
        let (d, v) = (self.cfg.d_model, self.cfg.vocab_size);
        if token as usize >= v {
            return Err(Error::config(
                "token id",
                token,
                format!("must be < vocab {v}"),
            ));
        }
        let t = token as usize;
        st.x.clear();
        st.x.extend_from_slice(&self.embedding.of(p)[t * d..(t + 1) * d]);
        st.y.resize(d, 0.0);
        for ((norm, layer), state) in self.layers.iter().zip(&mut st.layers) {
            norm.forward(p, &st.x, &mut st.h, &mut st.mean, &mut st.rstd)?;
            match layer.recurrent() {
                Some(r) if layer.mixes_positions() => r.step(p, state, &st.h, &mut st.y)?,
                // A channel mixer: its forward on one position.
                _ => layer.forward(p, &st.h, 1, 1, &mut st.y, state)?,
            }
            for (x, y) in st.x.iter_mut().zip(&st.y) {
                *x += y;
            }
        }
        self.norm_f
            .forward(p, &st.x, &mut st.h, &mut st.mean, &mut st.rstd)?;
        st.logits.resize(v, 0.0);
        linear_forward(
            &st.h,
            self.unembed_w.of(p),
            Some(self.unembed_b.of(p)),
            1,
            d,
            v,
            &mut st.logits,
        )
    }
}

impl WindowForward for Model<ZooModel> {
    type Cache = ZooCache;
    fn window(&self) -> usize {
        self.net.cfg.max_len
    }
    fn forward_window(&self, tokens: &[u32], cache: &mut ZooCache) -> Result<()> {
        self.net.forward(self.p(), tokens, 1, tokens.len(), cache)
    }
    fn logits_at<'c>(&self, cache: &'c ZooCache, t: usize) -> &'c [f32] {
        let v = self.net.cfg.vocab_size;
        &cache.logits[t * v..(t + 1) * v]
    }
}

/// Generation by recurrence: every token, the prompt's included, is one step, and the
/// context is not cut at `max_len` (the states carry the whole past).
struct ZooRecurrentDecoder<'a> {
    m: &'a Model<ZooModel>,
    state: ZooState,
}

impl Decoder for ZooRecurrentDecoder<'_> {
    fn prefill(&mut self, prompt: &[u32]) -> Result<()> {
        self.state = self.m.net.start(self.m.p())?;
        for &t in prompt {
            self.step(t)?;
        }
        Ok(())
    }
    fn step(&mut self, token: u32) -> Result<()> {
        self.m.net.step(self.m.p(), token, &mut self.state)
    }
    fn logits(&self) -> &[f32] {
        &self.state.logits
    }
}

//! The StripedHyena models as a loadable family: the model directories they are read from,
//! and what the commands do with them ([`LanguageModel`]).
//!
//! A directory is a StripedHyena model when it holds
//! - a hyena model directory: `config.json` with an `evo2` section (an [`Evo2Config`]) and
//!   `model.safetensors` (what `hyena convert` writes); or
//! - released files as downloaded: a vortex YAML config (`*.yml`) beside the checkpoint
//!   (`NAME.pt`, or byte-split shards `NAME.pt.part0`, `NAME.pt.part1`, …, read as one stream);
//!   without a YAML file, the checkpoint's name must be a released model's (`evo2_7b.pt` →
//!   the `evo2_7b` preset);
//! - a StripedHyena 1 model as published on the Hugging Face hub (`togethercomputer/evo-1-*`,
//!   `StripedHyena-Hessian-7B`): `config.json` with `model_type: "stripedhyena"` and the
//!   weights as `model.safetensors`, `pytorch_model.bin`, or shards of either
//!   (`model-00001-of-00003.safetensors`, `pytorch_model-00001-of-00002.bin`), keys
//!   `backbone.…` (the prefix is removed) or bare.

use std::any::Any;
use std::collections::BTreeMap;
use std::path::Path;

use super::config::Evo2Config;
use super::model::{Evo2, Stream, StreamMark, Taps, Workspace};
use crate::error::{Error, Result};
use crate::io::mapped::MappedSafetensors;
use crate::io::safetensors::{Tensor, TensorFile};
use crate::layers::layer::Slot;
use crate::layers::lean::InferWorkspace;
use crate::models::generate::{check_prompt, ConvDecoder, DecodeMode, Decoder, WindowForward};
use crate::models::score::PrefixScorer;
use crate::models::{model_section, Family, LanguageModel};
use crate::ops::loss::{log_prob, LossSum};
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

impl Buffers {
    /// The model's buffers kept in the lean workspace `ws`, with its chunk size.
    fn of(ws: &mut InferWorkspace) -> &mut Buffers {
        let chunk = ws.chunk;
        let buf = ws.other.get_or_default::<Buffers>();
        buf.ws.chunk = chunk;
        buf
    }
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
        let buf = Buffers::of(ws);
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
    fn hidden_states_owned(
        &self,
        tokens: &[u32],
        layer: usize,
        ws: &mut InferWorkspace,
    ) -> Result<Vec<f32>> {
        self.hidden_states(tokens, layer, ws)?;
        let buf = ws.other.get_or_default::<Buffers>();
        Ok(std::mem::take(&mut buf.out))
    }
    fn log_likelihood(
        &self,
        tokens: &[u32],
        ws: &mut InferWorkspace,
        out: &mut Vec<f32>,
    ) -> Result<f64> {
        let buf = Buffers::of(ws);
        self.net.log_likelihood(tokens, &mut buf.ws, out)
    }
    fn logits(&self, tokens: &[u32], ws: &mut InferWorkspace, out: &mut Vec<f32>) -> Result<usize> {
        let buf = Buffers::of(ws);
        let v = self.net.cfg.vocab_size;
        out.clear();
        out.extend_from_slice(self.net.logits(tokens, &mut buf.ws)?);
        Ok(v)
    }
    fn forward_bytes(&self, tokens: usize, chunk: usize) -> Option<u64> {
        Some(self.net.forward_bytes(tokens, chunk))
    }
    fn set_kv_cache(&mut self, kv: Option<super::KvPrecision>) -> Result<()> {
        self.net.kv = kv;
        Ok(())
    }
    fn stream_scorer(&self, chunk: usize) -> Option<Box<dyn PrefixScorer + '_>> {
        Some(Box::new(StreamScorer::new(&self.net, chunk)))
    }
    fn decoder(&self, mode: DecodeMode) -> Result<Box<dyn Decoder + '_>> {
        Ok(match mode {
            DecodeMode::Conv => Box::new(ConvDecoder::new(self)),
            DecodeMode::Recurrent => Box::new(StripedDecoder::new(&self.net)),
        })
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
    fn default_chunk(&self) -> Option<usize> {
        Some(super::model::DEFAULT_CHUNK)
    }
    fn set_precision(&mut self, p: crate::models::Precision) -> Result<()> {
        self.net.precision = p;
        Ok(())
    }
    fn tokenizer(&self) -> crate::models::TokenizerKind {
        crate::models::TokenizerKind::Bytes
    }
    fn named_width(&self, name: &str) -> Option<usize> {
        self.net.tap_info(name).map(|x| x.1)
    }
    fn named_output(
        &self,
        tokens: &[u32],
        name: &str,
        ws: &mut InferWorkspace,
    ) -> Result<Vec<f32>> {
        let buf = Buffers::of(ws);
        Ok(Evo2Lm::named_output(self, tokens, name, &mut buf.ws)?.0)
    }
}

/// Generation by the full forward over the context per token (`--mode conv`): the check that
/// recurrent decoding gives the same tokens.
impl WindowForward for Evo2Lm {
    type Cache = Workspace;
    fn window(&self) -> usize {
        self.net.cfg.max_seqlen
    }
    fn forward_window(&self, tokens: &[u32], cache: &mut Workspace) -> Result<()> {
        self.net.logits(tokens, cache).map(|_| ())
    }
    fn logits_at<'c>(&self, cache: &'c Workspace, t: usize) -> &'c [f32] {
        let v = self.net.cfg.vocab_size;
        &cache.logits[t * v..(t + 1) * v]
    }
}

/// Recurrent generation (`hyena-family.md` sections 7.4 and 8.3): the prompt prefilled by the
/// chunked parallel forward of a [`Stream`], then one step per token through the same stream:
/// the FIR caches, the modal states and the key/value caches advance by one position, so a
/// step costs one pass over the weights plus attention over the cached positions.
pub struct StripedDecoder<'a> {
    net: &'a Evo2,
    stream: Option<Stream>,
    ws: Workspace,
    last: Vec<f32>,
}

impl<'a> StripedDecoder<'a> {
    pub fn new(net: &'a Evo2) -> Self {
        StripedDecoder {
            net,
            stream: None,
            ws: Workspace::default(),
            last: Vec::new(),
        }
    }

    /// The stream after the tokens so far (none before the prefill).
    pub fn stream(&self) -> Option<&Stream> {
        self.stream.as_ref()
    }

    fn feed(&mut self, tokens: &[u32], logits: bool) -> Result<()> {
        let s = self.stream.as_mut().ok_or_else(|| {
            Error::config("generation", "step", "prefill a prompt before stepping")
        })?;
        self.net.stream_forward(tokens, s, logits, &mut self.ws)?;
        if logits {
            let v = self.net.cfg.vocab_size;
            let n = tokens.len();
            self.last.clear();
            self.last
                .extend_from_slice(&self.ws.logits[(n - 1) * v..n * v]);
        }
        Ok(())
    }
}

impl Decoder for StripedDecoder<'_> {
    fn prefill(&mut self, prompt: &[u32]) -> Result<()> {
        check_prompt(prompt)?;
        // Room for the prompt and a few thousand new tokens before the caches first grow.
        self.stream = Some(self.net.stream(prompt.len() + 4096)?);
        let n = prompt.len();
        if n > 1 {
            // Only the last position's logits are needed.
            self.feed(&prompt[..n - 1], false)?;
        }
        self.feed(&prompt[n - 1..], true)
    }
    fn step(&mut self, token: u32) -> Result<()> {
        self.feed(&[token], true)
    }
    fn logits(&self) -> &[f32] {
        &self.last
    }
}

/// [`PrefixScorer`] on a [`Stream`]: the state at the mark is saved (FIR tails, modal states;
/// the key/value rows before it stay in the caches), so the work before it is done once for
/// every continuation.
pub struct StreamScorer<'a> {
    net: &'a Evo2,
    stream: Option<Stream>,
    ws: Workspace,
    /// The logits of the last position fed (they score the next piece's first token).
    last: Vec<f32>,
    marked: Option<(StreamMark, Vec<f32>)>,
}

impl<'a> StreamScorer<'a> {
    pub fn new(net: &'a Evo2, chunk: usize) -> Self {
        StreamScorer {
            net,
            stream: None,
            ws: Workspace::with_chunk(chunk),
            last: Vec::new(),
            marked: None,
        }
    }

    /// Feed `tokens` piece by piece (a chunk each, so the logits stay `O(chunk)`), scoring each
    /// token against the logits before it (`first` scores the first token: false at a
    /// sequence start).
    fn feed(&mut self, tokens: &[u32], first: bool, out: &mut Vec<f32>) -> Result<()> {
        let v = self.net.cfg.vocab_size;
        let s = self
            .stream
            .as_mut()
            .ok_or_else(|| Error::config("scorer", "extend", "start a sequence first"))?;
        out.clear();
        if first && !tokens.is_empty() {
            out.push(log_prob(&self.last, tokens[0] as usize) as f32);
        }
        let p = self.ws.chunk.max(1);
        for (i, piece) in tokens.chunks(p).enumerate() {
            self.net.stream_forward(piece, s, true, &mut self.ws)?;
            let lg = &self.ws.logits[..piece.len() * v];
            // Row j (token g of `tokens`) scores token g + 1; the last row is kept for the
            // next piece.
            for (j, row) in lg.chunks_exact(v).enumerate() {
                match tokens.get(i * p + j + 1) {
                    Some(&t) => out.push(log_prob(row, t as usize) as f32),
                    None => {
                        self.last.clear();
                        self.last.extend_from_slice(row);
                    }
                }
            }
        }
        Ok(())
    }
}

impl PrefixScorer for StreamScorer<'_> {
    fn start(&mut self, tokens: &[u32], out: &mut Vec<f32>) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::config(
                "tokens",
                0,
                "a scored sequence needs at least one token",
            ));
        }
        // One stream reused for every sequence: its key/value buffers are kept.
        match &mut self.stream {
            Some(s) => s.reset(),
            None => self.stream = Some(self.net.stream(tokens.len())?),
        }
        self.marked = None;
        self.feed(tokens, false, out)
    }
    fn extend(&mut self, tokens: &[u32], out: &mut Vec<f32>) -> Result<()> {
        self.feed(tokens, true, out)
    }
    fn mark(&mut self) {
        if let Some(s) = &self.stream {
            self.marked = Some((s.mark(), self.last.clone()));
        }
    }
    fn rewind(&mut self) -> Result<()> {
        let (Some(s), Some((m, last))) = (&mut self.stream, &self.marked) else {
            return Err(Error::config("scorer", "rewind", "no position was marked"));
        };
        s.rewind(m)?;
        self.last.clone_from(last);
        Ok(())
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
    fn load_dir(&self, dir: &Path) -> Option<Result<crate::models::DirModel>> {
        let boxed = |r: Result<(Evo2Lm, LoadNotes)>| {
            r.map(|(lm, n)| (Box::new(lm) as Box<dyn LanguageModel>, n.notes))
        };
        if is_vortex_dir(dir) {
            return Some(boxed(load_vortex_dir(dir)));
        }
        let cfg = dir.join("config.json");
        if !cfg.is_file() {
            return None;
        }
        let config: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).ok()?).ok()?;
        if is_sh1_config(&config) {
            return Some(boxed(load_hf_dir(dir, &config)));
        }
        // Only a config with an `evo2` section is ours; any other goes the usual way.
        if !self.detect(&config) || !dir.join("model.safetensors").is_file() {
            return None;
        }
        Some(boxed(load_converted(dir, &config)))
    }
}

/// Load a converted directory (`config.json` with an `evo2` section, `model.safetensors`):
/// bf16 weights memory-mapped and used in place, f32 ones copied.
pub fn load_converted(dir: &Path, config: &serde_json::Value) -> Result<(Evo2Lm, LoadNotes)> {
    let file = dir.join("config.json");
    let cfg: Evo2Config = model_section(config, FAMILY, &file, &[])?
        .ok_or_else(|| Error::format(&file, "no `evo2` section"))?;
    let map = std::sync::Arc::new(MappedSafetensors::open(dir.join("model.safetensors"))?);
    let net = match stored_dtype(map.dtype_name("embedding_layer.weight")) {
        DType::Bf16 => Evo2::load_mapped(cfg, map)?,
        DType::F32 => Evo2::load(cfg, map.as_ref(), DType::F32)?,
    };
    let mut notes = LoadNotes::default();
    fp8_warning(&net, &mut notes);
    Ok((Evo2Lm { net }, notes))
}

/// Write `lm` as a hyena model directory `out` (which must exist): `model.safetensors` with the
/// weights in their stored precision (bf16 as BF16, the f32 tensors as F32; written tensor by
/// tensor, atomically) and `config.json` with the `evo2` section. Loading it later maps the
/// file instead of reading it.
pub fn convert(lm: &Evo2Lm, out: &Path) -> Result<()> {
    use crate::io::mapped::{write_streaming, MapDtype, OutData, OutTensor};
    let net = &lm.net;
    let mut tensors = Vec::new();
    for (store, exact) in [(&net.params, false), (&net.exact, true)] {
        for s in store.specs() {
            let (dtype, data) = match store.bf16() {
                Some(b) if !exact => (MapDtype::Bf16, OutData::Bf16(&b[s.handle.range()])),
                _ => (MapDtype::F32, OutData::F32(s.handle.of(store.data()))),
            };
            tensors.push(OutTensor {
                name: s.name.clone(),
                dtype,
                shape: s.shape.clone(),
                data,
            });
        }
    }
    // The metadata every hyena weights file carries (what `checkpoint::weights_metadata` writes).
    let metadata: BTreeMap<String, String> = [
        ("format".to_string(), FAMILY.to_string()),
        ("version".to_string(), "1".to_string()),
    ]
    .into();
    write_streaming(&out.join("model.safetensors"), &tensors, &metadata)?;
    let cfg_path = out.join("config.json");
    let json = serde_json::to_string_pretty(&lm.config_json())
        .map_err(|e| Error::format(&cfg_path, e.to_string()))?;
    crate::io::safetensors::write_bytes_atomic(&cfg_path, json.as_bytes())
}

/// Whether a `config.json` is a StripedHyena 1 Hugging Face config.
pub fn is_sh1_config(config: &serde_json::Value) -> bool {
    config.get("model_type").and_then(|v| v.as_str()) == Some("stripedhyena")
        || config
            .get("architectures")
            .and_then(|v| v.as_array())
            .is_some_and(|a| {
                a.iter()
                    .any(|x| x.as_str() == Some("StripedHyenaModelForCausalLM"))
            })
}

/// The weights files of a Hugging Face directory: `model.safetensors` or its shards, else
/// `pytorch_model.bin` or its shards (`NAME-00001-of-00003.EXT`, every shard required).
fn hf_weight_files(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(Error::io(dir))?
        .filter_map(|e| e.ok())
        .filter(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.is_file()))
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    for (stem, ext) in [("model", "safetensors"), ("pytorch_model", "bin")] {
        let single = format!("{stem}.{ext}");
        if names.contains(&single) {
            return Ok(vec![dir.join(single)]);
        }
        // NAME-00001-of-00003.EXT
        let mut shards: Vec<(usize, usize, &String)> = names
            .iter()
            .filter_map(|n| {
                let rest = n.strip_prefix(stem)?.strip_prefix('-')?;
                let rest = rest.strip_suffix(ext)?.strip_suffix('.')?;
                let (i, total) = rest.split_once("-of-")?;
                Some((i.parse().ok()?, total.parse().ok()?, n))
            })
            .collect();
        if shards.is_empty() {
            continue;
        }
        shards.sort();
        let total = shards[0].1;
        let wanted: Vec<usize> = (1..=total).collect();
        let have: Vec<usize> = shards.iter().map(|s| s.0).collect();
        if have != wanted || shards.iter().any(|s| s.1 != total) {
            let missing: Vec<String> = wanted
                .iter()
                .filter(|i| !have.contains(i))
                .map(|i| format!("{stem}-{i:05}-of-{total:05}.{ext}"))
                .collect();
            return Err(Error::format(
                dir,
                format!(
                    "incomplete shards of `{stem}.{ext}`: found {}, missing {}; download every \
                     shard",
                    shards
                        .iter()
                        .map(|s| s.2.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    if missing.is_empty() {
                        "none, but the shard counts disagree".to_string()
                    } else {
                        missing.join(", ")
                    }
                ),
            ));
        }
        return Ok(shards.iter().map(|s| dir.join(s.2)).collect());
    }
    Err(Error::format(
        dir,
        "no weights beside config.json: expected model.safetensors, pytorch_model.bin, or \
         their shards (model-00001-of-00002.safetensors, …)",
    ))
}

/// Load a StripedHyena 1 Hugging Face directory (see the module docs); bf16 weights stay bf16.
pub fn load_hf_dir(dir: &Path, config: &serde_json::Value) -> Result<(Evo2Lm, LoadNotes)> {
    use crate::io::torch::TorchCheckpoint;
    use crate::params::{JoinedSource, TensorSource};
    let cfg = Evo2Config::from_hf_stripedhyena(config, &dir.join("config.json"))?;
    let files = hf_weight_files(dir)?;
    let mut notes = LoadNotes::default();
    let mut parts: Vec<Box<dyn TensorSource>> = Vec::new();
    // The shard holding the embedding decides the precision the weights are kept in.
    let mut dtype = DType::F32;
    let embedding = ["backbone.embedding_layer.weight", "embedding_layer.weight"];
    for f in &files {
        let stored = if f.extension().is_some_and(|e| e == "safetensors") {
            let m = MappedSafetensors::open(f)?;
            let stored = embedding.iter().find_map(|n| m.dtype_name(n));
            parts.push(Box::new(m));
            stored
        } else {
            let c = TorchCheckpoint::open(f)?;
            for (name, what) in c.skipped() {
                notes.notes.push(format!("skipped {name}: {what}"));
            }
            let stored = embedding.iter().find_map(|n| c.dtype_name(n));
            parts.push(Box::new(c));
            stored
        };
        if stored.is_some() {
            dtype = stored_dtype(stored);
        }
    }
    let origin = if files.len() == 1 {
        files[0].clone()
    } else {
        dir.to_path_buf()
    };
    let src = JoinedSource::new(parts, "backbone.", origin)?;
    let net = Evo2::load(cfg, &src, dtype)?;
    for n in &net.ignored {
        notes.notes.push(format!("unused {n}"));
    }
    if net.cfg.vocab_size != 512 {
        notes.notes.push(format!(
            "warning: this model's vocabulary has {} ids; hyena tokenizes text as UTF-8 bytes \
             (ids 0-255), which is right for the byte-level models (Evo 1, Evo 2: vocabulary \
             512) only; this model's own tokenizer is not implemented, so scores of raw text \
             are not its likelihoods",
            net.cfg.vocab_size
        ));
    }
    Ok((Evo2Lm { net }, notes))
}

/// The precision to keep a checkpoint's big weights in: its embedding's (`BF16` in safetensors,
/// `bfloat16` in torch files), f32 otherwise.
fn stored_dtype(embedding: Option<&str>) -> DType {
    match embedding {
        Some("BF16" | "bfloat16") => DType::Bf16,
        _ => DType::F32,
    }
}

fn fp8_warning(net: &Evo2, notes: &mut LoadNotes) {
    if net.cfg.needs_fp8() {
        notes.notes.push(format!(
            "warning: {} was trained with FP8 input projections, and its released checkpoint is \
             known to give wrong likelihoods without FP8 numerics (bionemo-evo2: 1B base NLL \
             1.243 in bf16 vs 1.076 in FP8; 40B 1.700 vs 0.922); this engine computes in \
             f32/bf16, so use a 7B model (evo2_7b, evo2_7b_base, evo2_7b_262k) for scores you rely \
             on",
            if net.cfg.model_name.is_empty() {
                "this model"
            } else {
                &net.cfg.model_name
            }
        ));
    }
}

/// What loading a released-layout directory found besides the model: entries skipped in the
/// checkpoint, unused leftovers, warnings.
#[derive(Debug, Default)]
pub struct LoadNotes {
    pub notes: Vec<String>,
}

/// Whether `dir` holds released Evo 2 files (a vortex YAML config and/or a `.pt` checkpoint,
/// whole or in parts) and no `config.json`.
pub fn is_vortex_dir(dir: &Path) -> bool {
    if dir.join("config.json").exists() {
        return false;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return false;
    };
    rd.filter_map(|e| e.ok()).any(|e| {
        let n = e.file_name().to_string_lossy().to_string();
        n.ends_with(".yml") || n.ends_with(".yaml") || n.ends_with(".pt") || n.contains(".pt.part")
    })
}

/// The vortex YAML config of `dir`: `None` when there is none, an error when there are several.
fn yaml_config(dir: &Path) -> Result<Option<std::path::PathBuf>> {
    let mut ymls: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| Error::Io {
            file: dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    ymls.sort();
    match ymls.len() {
        0 => Ok(None),
        1 => Ok(ymls.pop()),
        _ => {
            Err(Error::format(
                dir,
                format!(
                "{} YAML configs ({}): keep the one vortex config that belongs to the checkpoint",
                ymls.len(),
                ymls.iter()
                    .map(|p| p.file_name().unwrap_or_default().to_string_lossy().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            ))
        }
    }
}

/// Load a directory of released Evo 2 files (see the module docs). The big weights stay in the
/// checkpoint's precision (bf16 for released files).
pub fn load_vortex_dir(dir: &Path) -> Result<(Evo2Lm, LoadNotes)> {
    use crate::io::torch::{find_checkpoint, TorchCheckpoint};
    let parts = find_checkpoint(dir)?.ok_or_else(|| {
        Error::format(
            dir,
            "no checkpoint: expected NAME.pt or NAME.pt.part0, NAME.pt.part1, … beside the \
             vortex YAML config",
        )
    })?;
    let mut notes = LoadNotes::default();
    let cfg = match yaml_config(dir)? {
        Some(y) => {
            let text = std::fs::read_to_string(&y).map_err(|source| Error::Io {
                file: y.clone(),
                source,
            })?;
            let v = crate::io::yaml::parse(&text, &y)?;
            Evo2Config::from_vortex(&v, &y)?
        }
        None => {
            let first = &parts[0];
            let name = first
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            let stem = name.split(".pt").next().unwrap_or(&name).to_string();
            super::config::preset(&stem).map_err(|_| {
                Error::format(
                    first,
                    format!(
                        "no vortex YAML config beside the checkpoint, and `{stem}` is not a \
                         released model's name ({}); put the model's YAML config (from the evo2 \
                         package's configs/) in the directory, or name the file after its model",
                        super::config::PRESETS.join(", ")
                    ),
                )
            })?
        }
    };
    // One file, or a series of parts read as one stream.
    let ckpt = match parts.as_slice() {
        [one] => TorchCheckpoint::open(one)?,
        _ => TorchCheckpoint::open_parts(&parts)?,
    };
    for (name, what) in ckpt.skipped() {
        notes.notes.push(format!("skipped {name}: {what}"));
    }
    let dtype = stored_dtype(ckpt.dtype_name("embedding_layer.weight"));
    let net = Evo2::load(cfg, &ckpt, dtype)?;
    for n in &net.ignored {
        notes.notes.push(format!("unused {n}"));
    }
    fp8_warning(&net, &mut notes);
    Ok((Evo2Lm { net }, notes))
}

//! `hyena._hyena.Model`: a loaded model and its inference calls. The Python layer
//! (`hyena/__init__.py`) turns the user's inputs (strings, lists, paths) into either a path or
//! a list of `(name, bases)` records; here they become [`Records`] and go through the same
//! library functions as `hyena embed`, `score`, `generate` and `vep`.

use std::path::PathBuf;
use std::sync::Arc;

use hyena::apps::dna::{
    embed_records, embed_width, score_records, tokenize_as, EmbedOptions, Progress, Records,
    Reduce, ScoreOptions, TokenizeOptions,
};
use hyena::apps::vep::{format_row, place_variants, score_variants, Genome, VepOptions, VepWriter};
use hyena::checkpoint::load_model;
use hyena::io::fasta::SeqRecord;
use hyena::io::tokenizer::Tokenizer;
use hyena::io::variants::read_variants;
use hyena::layers::lean::{InferWorkspace, LeanOptions, ResidualStore};
use hyena::models::generate::{byte_text, generate, generate_bytes, DecodeMode, SampleConfig};
use hyena::models::score::prefix_scorer;
use hyena::models::striped::KvPrecision;
use hyena::models::{LanguageModel, Model as Net, Pool, Precision, TokenizerKind};
use hyena::Error;
use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray1, PyArray2};
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::errors::{new_err, to_py};
use crate::run::{blocking, model_pool, num_threads, Event, Reporter};

/// What `_score` returns: the reduced scores or the per-base arrays, and the record names.
type ScoreOut = (Option<Py<PyAny>>, Option<Py<PyAny>>, Vec<String>);

/// A model loaded from a directory or built from a preset.
#[pyclass(frozen, module = "hyena._hyena")]
pub struct Model {
    lm: Box<dyn LanguageModel>,
    /// The model's family (`hyenadna`, `evo2`, …).
    family: &'static str,
    /// The registry entry it was loaded through (e.g. `hyenadna-released`).
    registry: &'static str,
    config: serde_json::Value,
    path: Option<PathBuf>,
    precision: Precision,
    /// The tokenizer of the training data (generation of text models); DNA by default.
    tok: Tokenizer,
    notes: Vec<String>,
    pool: Option<Arc<rayon::ThreadPool>>,
}

/// The presets `load` builds a fresh model from: `(name, description)`.
#[pyfunction]
pub fn presets() -> Vec<(String, String)> {
    hyena::train::run::PRESETS
        .iter()
        .map(|(n, d)| (n.to_string(), format!("{d} (fresh initialisation)")))
        .collect()
}

/// Load a model (see the `hyena.load` docstring).
#[pyfunction]
#[pyo3(signature = (path, precision = "auto", threads = None, kv = "auto", seed = 0))]
pub fn load(
    py: Python<'_>,
    path: PathBuf,
    precision: &str,
    threads: Option<usize>,
    kv: &str,
    seed: u64,
) -> PyResult<Model> {
    let pool = model_pool(threads).map_err(to_py)?;
    let kv = match kv {
        "auto" => None,
        "f32" => Some(KvPrecision::F32),
        "bf16" => Some(KvPrecision::Bf16),
        _ => return Err(bad("kv", kv, "give \"auto\", \"f32\" or \"bf16\"")),
    };
    let want = match precision {
        "auto" | "f32" | "bf16" => precision,
        _ => {
            return Err(bad(
                "precision",
                precision,
                "give \"auto\", \"f32\" or \"bf16\"",
            ))
        }
    };
    let name = path.to_string_lossy().into_owned();
    let is_preset = !path.exists() && hyena::train::run::PRESETS.iter().any(|p| p.0 == name);
    if !path.exists() && !is_preset {
        if hyena::models::striped::PRESETS.contains(&name.as_str()) {
            return Err(new_err(
                "FileNotFoundError",
                format!(
                    "{name} is the architecture of a released Evo 2 model; its weights are not \
                     shipped: put {name}.pt (or its .partN shards) in a directory and load the \
                     directory (or what `hyena convert` made of it)"
                ),
            ));
        }
        let names: Vec<&str> = hyena::train::run::PRESETS.iter().map(|p| p.0).collect();
        return Err(new_err(
            "FileNotFoundError",
            format!(
                "{name}: no such model directory, and not a preset (the presets are {})",
                names.join(", ")
            ),
        ));
    }
    let (mut lm, registry, config, notes, tok, dir) = blocking(py, None, pool.as_ref(), |_| {
        if is_preset {
            let cfg = hyena::train::run::preset(&name)?;
            let (net, params) = hyena::models::hyenadna::HyenaLm::fresh(&cfg.model, seed)?;
            let lm: Box<dyn LanguageModel> = Box::new(Net { net, params });
            let config = serde_json::json!({ "model": lm.config_json(), "data": cfg.data });
            Ok((lm, "hyenadna", config, Vec::new(), cfg.data.tokenizer, None))
        } else {
            let l = load_model(&path)?;
            let tok = l
                .section::<hyena::data::tokens::DataConfig>("data")
                .ok()
                .flatten()
                .map(|d| d.tokenizer)
                .unwrap_or_default();
            // The model's own config under "model" (a released checkpoint's file, e.g. a
            // Hugging Face config.json, under "source"), the rest of a run's config beside it.
            let mut config = serde_json::json!({ "model": l.model.config_json() });
            match l.run.config {
                serde_json::Value::Object(m) if m.contains_key("model") => {
                    for (k, v) in m {
                        if k != "model" {
                            config[k] = v;
                        }
                    }
                }
                other => config["source"] = other,
            }
            Ok((l.model, l.family, config, l.notes, tok, Some(path.clone())))
        }
    })?;
    lm.set_kv_cache(kv).map_err(to_py)?;
    let precision = match want {
        "f32" => Precision::F32,
        "bf16" => Precision::Bf16,
        _ => {
            let p = Precision::auto();
            if p == Precision::Bf16 && lm.set_precision(p).is_ok() {
                p
            } else {
                Precision::F32
            }
        }
    };
    lm.set_precision(precision).map_err(to_py)?;
    Ok(Model {
        family: lm.family(),
        registry,
        lm,
        config,
        path: dir,
        precision,
        tok,
        notes,
        pool,
    })
}

fn bad(what: &'static str, value: impl std::fmt::Display, hint: &str) -> PyErr {
    to_py(Error::config(what, value, hint))
}

/// The records of a call: a file or `(name, bases)` pairs.
fn records(path: &Option<PathBuf>, seqs: Option<Vec<(String, Vec<u8>)>>) -> Vec<SeqRecord> {
    match (path, seqs) {
        (Some(_), _) | (None, None) => Vec::new(),
        (None, Some(s)) => s
            .into_iter()
            .map(|(id, seq)| SeqRecord { id, seq })
            .collect(),
    }
}

fn source<'a>(path: &'a Option<PathBuf>, mem: &'a [SeqRecord]) -> Records<'a> {
    match path {
        Some(p) => Records::File(p),
        None => Records::Memory(mem),
    }
}

/// A progress callback of the record loop that reports blocks of the current record.
fn record_progress(rep: &Reporter) -> Option<hyena::apps::dna::ProgressFn> {
    let rep = rep.clone();
    Some(Box::new(move |p: &Progress| {
        rep.send(Event {
            unit: "blocks",
            done: p.blocks_done as u64,
            total: p.blocks as u64,
            message: format!("record {} '{}' ({} tokens)", p.record + 1, p.name, p.tokens),
        })
    }))
}

fn json_to_py(py: Python<'_>, v: &serde_json::Value) -> PyResult<Py<PyAny>> {
    let s = serde_json::to_string(v).map_err(|e| new_err("ValueError", e.to_string()))?;
    Ok(py.import("json")?.call_method1("loads", (s,))?.unbind())
}

impl Model {
    fn lean(&self, chunk: Option<usize>, residual: &str) -> PyResult<LeanOptions> {
        let residual = match residual {
            "auto" => ResidualStore::Auto,
            "f32" => ResidualStore::F32,
            "packed24" => ResidualStore::Packed24,
            _ => {
                return Err(bad(
                    "residual",
                    residual,
                    "give \"auto\", \"f32\" or \"packed24\"",
                ))
            }
        };
        if chunk == Some(0) {
            return Err(bad("chunk", 0, "give at least 1"));
        }
        Ok(LeanOptions {
            chunk: chunk
                .or(self.lm.default_chunk())
                .unwrap_or(LeanOptions::default().chunk),
            residual,
        })
    }
}

#[pymethods]
impl Model {
    /// The model's family (`hyenadna`, `evo2`, `zoo`, `classifier`, …).
    #[getter]
    fn family(&self) -> &'static str {
        self.family
    }
    /// How its directory was read: the registry entry (`hyenadna` for a hyena run,
    /// `hyenadna-released` for a released checkpoint, …).
    #[getter]
    fn source_format(&self) -> &'static str {
        self.registry
    }
    /// The model's configuration (what `config.json` holds), as a dict.
    #[getter]
    fn config(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        json_to_py(py, &self.config)
    }
    /// The directory the model was loaded from (`None` for a preset).
    #[getter]
    fn path(&self) -> Option<PathBuf> {
        self.path.clone()
    }
    /// The arithmetic of the matrix products: `"f32"` or `"bf16"`.
    #[getter]
    fn precision(&self) -> String {
        self.precision.to_string()
    }
    #[getter]
    fn d_model(&self) -> usize {
        self.lm.d_model()
    }
    #[getter]
    fn n_layer(&self) -> usize {
        self.lm.n_layer()
    }
    #[getter]
    fn vocab_size(&self) -> usize {
        self.lm.vocab_size()
    }
    #[getter]
    fn max_len(&self) -> usize {
        self.lm.max_len()
    }
    /// `"nucleotide"` (HyenaDNA's ids) or `"bytes"` (StripedHyena / Evo 2).
    #[getter]
    fn tokenizer(&self) -> &'static str {
        match self.lm.tokenizer() {
            TokenizerKind::Nucleotide => "nucleotide",
            TokenizerKind::Bytes => "bytes",
        }
    }
    /// What loading found worth telling (skipped checkpoint entries, warnings).
    #[getter]
    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }
    /// Worker threads this model's calls run on.
    #[getter]
    fn threads(&self) -> usize {
        num_threads(self.pool.as_ref())
    }

    fn __repr__(&self) -> String {
        format!(
            "Model(family={:?}, d_model={}, n_layer={}, max_len={}, precision={:?}{})",
            self.family,
            self.lm.d_model(),
            self.lm.n_layer(),
            self.lm.max_len(),
            self.precision.to_string(),
            self.path
                .as_ref()
                .map(|p| format!(", path={:?}", p.display().to_string()))
                .unwrap_or_default()
        )
    }

    /// Hidden states (see `hyena.Model.embed`). Returns `(array [n, d], names, tokens)` when
    /// pooled, `(list of [L_i, d], names, tokens)` with `pool="none"`.
    #[pyo3(signature = (path=None, seqs=None, layer=None, pool="mean", chunk=None,
        residual="auto", uppercase=false, unknown_as_unk=false, special_tokens=false,
        progress=None))]
    #[allow(clippy::too_many_arguments)]
    fn _embed(
        &self,
        py: Python<'_>,
        path: Option<PathBuf>,
        seqs: Option<Vec<(String, Vec<u8>)>>,
        layer: Option<Bound<'_, PyAny>>,
        pool: &str,
        chunk: Option<usize>,
        residual: &str,
        uppercase: bool,
        unknown_as_unk: bool,
        special_tokens: bool,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<(Py<PyAny>, Vec<String>, Vec<usize>)> {
        let pool = match pool {
            "mean" => Pool::Mean,
            "last" => Pool::Last,
            "none" => Pool::None,
            _ => return Err(bad("pool", pool, "give \"mean\", \"last\" or None")),
        };
        let (layer, name) = match layer {
            None => (None, None),
            Some(l) => match l.extract::<usize>() {
                Ok(n) => (Some(n), None),
                Err(_) => (None, Some(l.extract::<String>()?)),
            },
        };
        let opts = EmbedOptions {
            layer,
            name,
            pool,
            tokenize: TokenizeOptions {
                uppercase,
                unknown_as_unk,
                add_sep: special_tokens,
            },
            lean: self.lean(chunk, residual)?,
        };
        let mem = records(&path, seqs);
        let lm = self.lm.as_ref();
        let (d, rows, names, tokens) = blocking(py, progress, self.pool.as_ref(), |rep| {
            let d = embed_width(lm, &opts)?;
            let (mut rows, mut names, mut tokens) = (Vec::new(), Vec::new(), Vec::new());
            let mut pooled = Vec::new();
            // Per-base rows are moved out of the workspace into the arrays (no copy).
            embed_records(
                lm,
                source(&path, &mem),
                &opts,
                true,
                record_progress(rep),
                |rec, n, h| {
                    names.push(rec.id.clone());
                    tokens.push(n);
                    if pool == Pool::None {
                        rows.push(h.into_vec());
                    } else {
                        pooled.extend_from_slice(h.as_slice());
                    }
                    Ok(())
                },
            )?;
            if pool != Pool::None {
                rows.push(pooled);
            }
            Ok((d, rows, names, tokens))
        })?;
        let out: Py<PyAny> = if pool == Pool::None {
            let list = PyList::empty(py);
            for r in rows {
                list.append(rows_array(py, r, d)?)?;
            }
            list.into_any().unbind()
        } else {
            let r = rows.into_iter().next().unwrap_or_default();
            rows_array(py, r, d)?.into_any().unbind()
        };
        Ok((out, names, tokens))
    }

    /// Log-likelihoods (see `hyena.Model.score`): `(scores [n] float64 or None, per-base
    /// arrays or None, names)`.
    #[pyo3(signature = (path=None, seqs=None, reduce="mean", rc_average=false, chunk=None,
        residual="auto", uppercase=false, unknown_as_unk=false, special_tokens=false,
        progress=None))]
    #[allow(clippy::too_many_arguments)]
    fn _score(
        &self,
        py: Python<'_>,
        path: Option<PathBuf>,
        seqs: Option<Vec<(String, Vec<u8>)>>,
        reduce: &str,
        rc_average: bool,
        chunk: Option<usize>,
        residual: &str,
        uppercase: bool,
        unknown_as_unk: bool,
        special_tokens: bool,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<ScoreOut> {
        let red = match reduce {
            "none" => None,
            "mean" => Some(Reduce::Mean),
            "sum" => Some(Reduce::Sum),
            r => return Err(bad("reduce", r, "give \"mean\", \"sum\" or None")),
        };
        if red.is_none() && rc_average {
            return Err(bad(
                "rc_average",
                true,
                "per-base scores (reduce=None) are of the forward strand; give reduce=\"mean\" \
                 or \"sum\" to average with the reverse complement",
            ));
        }
        let tokenize = TokenizeOptions {
            uppercase,
            unknown_as_unk,
            add_sep: special_tokens,
        };
        let lean = self.lean(chunk, residual)?;
        let opts = ScoreOptions {
            reduce: red.unwrap_or_default(),
            reverse_complement: rc_average,
        };
        let mem = records(&path, seqs);
        let lm = self.lm.as_ref();
        let per_base = red.is_none();
        let (scores, bases, names) = blocking(py, progress, self.pool.as_ref(), |rep| {
            let (mut scores, mut bases, mut names) = (Vec::new(), Vec::new(), Vec::new());
            let src = source(&path, &mem);
            score_records(
                lm,
                src,
                tokenize,
                lean,
                record_progress(rep),
                opts,
                |rec, _, s, lp| {
                    names.push(rec.id.clone());
                    scores.push(s.log_likelihood);
                    if per_base {
                        bases.push(lp.to_vec());
                    }
                    Ok(())
                },
            )?;
            Ok((scores, bases, names))
        })?;
        if per_base {
            let list = PyList::empty(py);
            for b in bases {
                list.append(PyArray1::from_vec(py, b))?;
            }
            Ok((None, Some(list.into_any().unbind()), names))
        } else {
            Ok((
                Some(PyArray1::from_vec(py, scores).into_any().unbind()),
                None,
                names,
            ))
        }
    }

    /// Logits `[L, V]` of one sequence (see `hyena.Model.logits`).
    #[pyo3(signature = (seq, chunk=None, uppercase=false, unknown_as_unk=false))]
    fn _logits<'py>(
        &self,
        py: Python<'py>,
        seq: Vec<u8>,
        chunk: Option<usize>,
        uppercase: bool,
        unknown_as_unk: bool,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let lean = self.lean(chunk, "f32")?;
        let lm = self.lm.as_ref();
        let tokenize = TokenizeOptions {
            uppercase,
            unknown_as_unk,
            add_sep: false,
        };
        let (v, out) = blocking(py, None, self.pool.as_ref(), |_| {
            let rec = SeqRecord {
                id: "seq".into(),
                seq,
            };
            let ids = tokenize_as(
                &rec,
                tokenize,
                std::path::Path::new("<sequence>"),
                lm.tokenizer(),
            )?;
            if ids.is_empty() {
                return Err(Error::config("seq", "\"\"", "give at least one base"));
            }
            let mut ws = InferWorkspace::with_options(lean);
            let mut out = Vec::new();
            let v = lm.logits(&ids, &mut ws, &mut out)?;
            Ok((v, out))
        })?;
        rows_array(py, out, v)
    }

    /// Sample a continuation (see `hyena.Model.generate`).
    #[pyo3(signature = (prompt, n_tokens, temperature=1.0, top_k=4, seed=None, mode="auto"))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: &str,
        n_tokens: usize,
        temperature: f32,
        top_k: usize,
        seed: Option<u64>,
        mode: &str,
    ) -> PyResult<String> {
        let lm = self.lm.as_ref();
        let bytes = lm.tokenizer() == TokenizerKind::Bytes;
        let ids: Vec<u32> = if bytes {
            prompt.bytes().map(u32::from).collect()
        } else {
            self.tok.encode_checked(prompt.as_bytes()).0
        };
        let mode = match mode {
            "auto" if self.family == "evo2" => DecodeMode::Recurrent,
            "auto" | "conv" => DecodeMode::Conv,
            "recurrent" => DecodeMode::Recurrent,
            _ => {
                return Err(bad(
                    "mode",
                    mode,
                    "give \"auto\", \"conv\" or \"recurrent\"",
                ))
            }
        };
        let vocab = lm.vocab_size();
        if top_k > vocab {
            return Err(bad(
                "top_k",
                top_k,
                &format!("at most the vocabulary size {vocab} (0 = all tokens)"),
            ));
        }
        let sc = SampleConfig {
            temperature,
            top_k,
            seed: seed.unwrap_or_else(rand_seed),
            allowed: if bytes {
                Vec::new()
            } else {
                self.tok.sampleable_ids()
            },
        };
        sc.validate(vocab).map_err(to_py)?;
        let out = blocking(py, None, self.pool.as_ref(), |_| {
            hyena::memory::check_fits(
                &format!("generating {n_tokens} tokens"),
                generate_bytes(
                    0,
                    lm.d_model(),
                    lm.n_layer(),
                    vocab,
                    lm.max_len(),
                    ids.len(),
                    n_tokens,
                ),
                "n_tokens",
            )?;
            let mut dec = lm.decoder(mode)?;
            generate(dec.as_mut(), &ids, n_tokens, &sc)
        })?;
        Ok(if bytes {
            byte_text(&out)
        } else {
            self.tok.decode(&out)
        })
    }

    /// Variant-effect scores (see `hyena.Model.vep`): one dict per variant, in input order.
    #[pyo3(signature = (reference, variants, window=8192, reduce="mean", uppercase=true,
        share=true, out=None, resume=false, chunk=None, progress=None))]
    #[allow(clippy::too_many_arguments)]
    fn _vep(
        &self,
        py: Python<'_>,
        reference: PathBuf,
        variants: PathBuf,
        window: usize,
        reduce: &str,
        uppercase: bool,
        share: bool,
        out: Option<PathBuf>,
        resume: bool,
        chunk: Option<usize>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let reduce = match reduce {
            "mean" => Reduce::Mean,
            "sum" => Reduce::Sum,
            _ => return Err(bad("reduce", reduce, "give \"mean\" or \"sum\"")),
        };
        let opts = VepOptions {
            window,
            reduce,
            uppercase,
            share,
        };
        let lean = self.lean(chunk, "auto")?;
        let lm = self.lm.as_ref();
        let settings = serde_json::json!({
            "model": self.path,
            "reference": reference,
            "variants": variants,
            "options": opts,
            "precision": self.precision.to_string(),
        })
        .to_string();
        let rows = blocking(py, progress, self.pool.as_ref(), |rep| {
            let vs = read_variants(&variants)?;
            if vs.is_empty() {
                return Err(Error::format(&variants, "no variants"));
            }
            let genome = Genome::read(&reference)?;
            let placed = place_variants(&genome, &vs, window)?;
            let mut writer = match &out {
                Some(o) => Some(VepWriter::open(o, &settings, &vs, resume)?),
                None => None,
            };
            let start = writer.as_ref().map_or(0, |w| w.done);
            let mut scorer = prefix_scorer(lm, lean.chunk, InferWorkspace::with_options(lean));
            let mut rows = Vec::new();
            let total = vs.len() as u64;
            score_variants(
                lm,
                scorer.as_mut(),
                &genome,
                &vs,
                &placed,
                &opts,
                start,
                &mut |row| {
                    if let Some(w) = writer.as_mut() {
                        w.write(&vs[row.index], row)?;
                    }
                    rows.push(format_row(&vs[row.index], row));
                    Ok(())
                },
                &mut |done, _| {
                    rep.send(Event {
                        unit: "variants",
                        done: done as u64,
                        total,
                        message: String::new(),
                    })
                },
            )?;
            let mut all = Vec::new();
            if let Some(w) = writer {
                let path = w.finish()?;
                // Rows of an earlier, resumed run come from the finished file.
                let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
                // (Lines starting with '#' are the settings and the column names.)
                all.extend(
                    text.lines()
                        .filter(|l| !l.starts_with('#'))
                        .map(|l| format!("{l}\n")),
                );
            } else {
                all = rows;
            }
            Ok(all)
        })?;
        let cols: Vec<&str> = hyena::apps::vep::COLUMNS.split('\t').collect();
        rows.iter()
            .map(|r| {
                let d = pyo3::types::PyDict::new(py);
                for (k, v) in cols.iter().zip(r.trim_end_matches('\n').split('\t')) {
                    match *k {
                        "pos" | "window_start" | "window_len" => {
                            d.set_item(k, v.parse::<u64>().unwrap_or(0))?
                        }
                        "ref_score" | "alt_score" | "delta" => {
                            d.set_item(k, v.parse::<f64>().unwrap_or(f64::NAN))?
                        }
                        _ => d.set_item(k, v)?,
                    }
                }
                Ok(d.into_any().unbind())
            })
            .collect()
    }
}

/// `v` as a `[n, d]` float32 array that owns `v`'s buffer (no copy).
fn rows_array<'py>(py: Python<'py>, v: Vec<f32>, d: usize) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let n = v.len().checked_div(d).unwrap_or(0);
    let a = Array2::from_shape_vec((n, d), v)
        .map_err(|e| new_err("ValueError", format!("rows of width {d}: {e}")))?;
    Ok(a.into_pyarray(py))
}

/// A seed for `seed=None`: the clock's nanoseconds mixed with the process id.
fn rand_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ (u64::from(std::process::id()) << 32)
}

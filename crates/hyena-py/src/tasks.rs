//! Training and analysis from Python: `train`, `finetune`, `distill` and `mad` through the
//! library calls of the CLI commands of the same names. Each writes the same files as its
//! command and returns the record the command writes last (`metrics.jsonl`'s last evaluation,
//! `eval.json`, `distill_report.json`, `results.json`), read back from disk so that Python
//! gets exactly what is on disk.

use std::path::{Path, PathBuf};

use hyena::train::finetune::{
    finetune as run_finetune, FinetuneConfig, FinetuneEvent, FinetuneRun,
};
use hyena::train::mad::{run_mad, write_results, MadEvent, MadProtocol};
use hyena::train::run::{run, Event as RunEvent, RunConfig, Start};
use hyena::Error;
use pyo3::prelude::*;

use crate::errors::{new_err, to_py};
use crate::run::{blocking, Event};

fn json_arg(py: Python<'_>, v: &Bound<'_, PyAny>) -> PyResult<String> {
    py.import("json")?.call_method1("dumps", (v,))?.extract()
}

fn to_py_json(py: Python<'_>, text: &str) -> PyResult<Py<PyAny>> {
    Ok(py.import("json")?.call_method1("loads", (text,))?.unbind())
}

fn read_text(path: &Path) -> hyena::Result<String> {
    std::fs::read_to_string(path).map_err(Error::io(path))
}

/// The run config a `train` call starts from: the quick-start run, or `preset`'s.
#[pyfunction]
#[pyo3(signature = (preset=None))]
pub fn train_config(py: Python<'_>, preset: Option<&str>) -> PyResult<Py<PyAny>> {
    let cfg = match preset {
        None => RunConfig::quickstart(),
        Some(p) => hyena::train::run::preset(p).map_err(to_py)?,
    };
    let text = serde_json::to_string(&cfg).map_err(|e| new_err("ValueError", e.to_string()))?;
    to_py_json(py, &text)
}

/// Train a language model (see `hyena.train`). `config`: a dict, a JSON file or `None`
/// (the quick-start run).
#[pyfunction]
#[pyo3(signature = (config=None, out="runs/train", resume=false, force=false, progress=None))]
pub fn train(
    py: Python<'_>,
    config: Option<Bound<'_, PyAny>>,
    out: &str,
    resume: bool,
    force: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<Py<PyAny>> {
    let cfg = match &config {
        None => RunConfig::quickstart(),
        Some(c) if c.is_instance_of::<pyo3::types::PyDict>() => {
            RunConfig::parse(&json_arg(py, c)?, Path::new("<config dict>")).map_err(to_py)?
        }
        Some(c) => RunConfig::read(&c.extract::<PathBuf>()?).map_err(to_py)?,
    };
    let start = match (resume, force) {
        (true, true) => {
            return Err(new_err(
                "ValueError",
                "resume and force exclude each other: force replaces the run that resume \
                 continues"
                    .into(),
            ))
        }
        (true, false) => Start::Resume,
        (false, true) => Start::Replace,
        (false, false) => Start::New,
    };
    let out = PathBuf::from(out);
    let steps = cfg.train.steps;
    let summary = blocking(py, progress, None, |rep| {
        let s = run(&cfg, &out, start, &mut |e| match e {
            RunEvent::Info(m) => rep.send(Event {
                unit: "info",
                message: m.clone(),
                ..Event::default()
            }),
            RunEvent::Step(s) => rep.send(Event {
                unit: "steps",
                done: s.step,
                total: steps,
                message: format!("loss {:.4} lr {:.2e}", s.loss, s.lr),
            }),
            RunEvent::Eval(v) => rep.send(Event {
                unit: "eval",
                done: v.step,
                total: steps,
                message: format!("validation {:.4} bits/token", v.bits_per_token),
            }),
        })?;
        Ok(serde_json::json!({
            "out": s.out_dir,
            "eval": s.last_eval,
            "baselines": s.baselines,
            "config": cfg,
        }))
    })?;
    to_py_json(py, &summary.to_string())
}

/// Fine-tune a classifier (see `hyena.finetune`); returns `eval.json`.
#[pyfunction]
#[pyo3(signature = (data, out="runs/finetune", model=None, preset=None, test_csv=None,
    config=None, progress=None))]
#[allow(clippy::too_many_arguments)]
pub fn finetune(
    py: Python<'_>,
    data: PathBuf,
    out: &str,
    model: Option<PathBuf>,
    preset: Option<String>,
    test_csv: Option<PathBuf>,
    config: Option<Bound<'_, PyAny>>,
    progress: Option<Py<PyAny>>,
) -> PyResult<Py<PyAny>> {
    let cfg: FinetuneConfig = match &config {
        None => FinetuneConfig::default(),
        Some(c) => serde_json::from_str(&json_arg(py, c)?)
            .map_err(|e| new_err("ValueError", format!("finetune config: {e}")))?,
    };
    let out = PathBuf::from(out);
    if model.is_some() == preset.is_some() {
        return Err(new_err(
            "ValueError",
            "give either model (a pretrained backbone directory) or preset (a fresh backbone, \
             e.g. \"hyenadna-tiny\")"
                .into(),
        ));
    }
    let eval = blocking(py, progress, None, |rep| {
        let ds = match &test_csv {
            Some(t) => hyena::data::seqcls::load_csv(&data, Some(t))?,
            None => hyena::data::seqcls::load_dataset(&data)?,
        };
        let backbone = match &preset {
            Some(p) => {
                let mut m = hyena::train::run::preset(p)?.model;
                let longest = ds.train.iter().map(|e| e.seq.len()).max().unwrap_or(1);
                m.operator.l_max = cfg.max_len.unwrap_or(longest);
                m
            }
            None => hyena::models::hyenadna::LmConfig::default(),
        };
        let run = FinetuneRun {
            data: data.clone(),
            test_csv: test_csv.clone(),
            init: model.clone(),
            model: backbone,
            finetune: cfg.clone(),
        };
        run_finetune(&run, &ds, &out, &mut |e| match e {
            FinetuneEvent::Info(m) => rep.send(Event {
                unit: "info",
                message: m.clone(),
                ..Event::default()
            }),
            FinetuneEvent::Step {
                step,
                total,
                loss,
                accuracy,
                ..
            } => rep.send(Event {
                unit: "steps",
                done: *step,
                total: *total,
                message: format!("loss {loss:.4} train acc {accuracy:.3}"),
            }),
            FinetuneEvent::Eval { .. } => {}
        })?;
        read_text(&out.join("eval.json"))
    })?;
    to_py_json(py, &eval)
}

/// Distil a trained HyenaDNA model's long convolutions (see `hyena.distill`); returns the
/// report.
#[pyfunction]
#[pyo3(signature = (model, out="runs/distill", config=None, progress=None))]
pub fn distill(
    py: Python<'_>,
    model: PathBuf,
    out: &str,
    config: Option<Bound<'_, PyAny>>,
    progress: Option<Py<PyAny>>,
) -> PyResult<Py<PyAny>> {
    use hyena::distill::model::{
        distill_lm, report_pngs, save_distilled, write_report, DistillConfig, REPORT_FILE,
    };
    let out = PathBuf::from(out);
    let cfg: DistillConfig = match &config {
        None => DistillConfig::default(),
        Some(c) => {
            // Keys left out keep their defaults.
            let mut v = serde_json::to_value(DistillConfig::default())
                .map_err(|e| new_err("ValueError", e.to_string()))?;
            let given: serde_json::Value = serde_json::from_str(&json_arg(py, c)?)
                .map_err(|e| new_err("ValueError", e.to_string()))?;
            if let (Some(m), Some(g)) = (v.as_object_mut(), given.as_object()) {
                if g.contains_key("order") && !g.contains_key("tol") {
                    m.insert("tol".into(), serde_json::Value::Null);
                }
                for (k, x) in g {
                    m.insert(k.clone(), x.clone());
                }
            }
            serde_json::from_value(v)
                .map_err(|e| new_err("ValueError", format!("distill config: {e}")))?
        }
    };
    if out.exists()
        && std::fs::read_dir(&out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(new_err(
            "FileExistsError",
            format!(
                "{}: exists and is not empty; choose another out",
                out.display()
            ),
        ));
    }
    let report = blocking(py, progress, None, |rep| {
        let loaded = hyena::checkpoint::load_model(&model)?;
        let lm =
            loaded.downcast::<hyena::models::Model<hyena::models::hyenadna::HyenaLm>>("distill")?;
        let (rlm, fits) = distill_lm(lm, &cfg, &|done, total| {
            rep.send(Event {
                unit: "filters",
                done: done as u64,
                total: total as u64,
                message: String::new(),
            })
        })?;
        std::fs::create_dir_all(&out).map_err(Error::io(&out))?;
        save_distilled(&rlm, &cfg, &loaded.run.config, &out)?;
        write_report(&out, &model, &cfg, &fits)?;
        report_pngs(lm, &rlm, &fits, &cfg, &out)?;
        read_text(&out.join(REPORT_FILE))
    })?;
    to_py_json(py, &report)
}

/// MAD synthetic tasks for one architecture (see `hyena.mad`); returns its report (what
/// `results.json` holds for it).
#[pyfunction]
#[pyo3(signature = (arch, tasks=None, quick=true, out=None, epochs=None, seed=0, d_model=None,
    budget=None, progress=None))]
#[allow(clippy::too_many_arguments)]
pub fn mad(
    py: Python<'_>,
    arch: &str,
    tasks: Option<Vec<String>>,
    quick: bool,
    out: Option<PathBuf>,
    epochs: Option<usize>,
    seed: u64,
    d_model: Option<usize>,
    budget: Option<u64>,
    progress: Option<Py<PyAny>>,
) -> PyResult<Py<PyAny>> {
    use hyena::data::mad::MadTask;
    use hyena::models::zoo::{parse_layers, ArchConfig};
    let arch_cfg = if arch.ends_with(".json") && Path::new(arch).exists() {
        ArchConfig::read(Path::new(arch)).map_err(to_py)?
    } else {
        let mut a = ArchConfig {
            layers: parse_layers(arch).map_err(to_py)?,
            ..ArchConfig::default()
        };
        if let Some(d) = d_model {
            a.d_model = d;
        }
        a
    };
    let tasks: Vec<MadTask> = match tasks {
        None => MadTask::all().to_vec(),
        Some(t) => t
            .iter()
            .map(|n| MadTask::from_name(n.trim()))
            .collect::<hyena::Result<_>>()
            .map_err(to_py)?,
    };
    let mut proto = if quick {
        MadProtocol::quick()
    } else {
        MadProtocol::full()
    };
    if let Some(e) = epochs {
        proto.train.epochs = e.max(1);
    }
    if let Some(b) = budget {
        proto.token_budget = (b > 0).then_some(b);
    }
    proto.train.seed = seed;
    let report = blocking(py, progress, None, |rep| {
        let r = run_mad(arch, &arch_cfg, &tasks, &proto, &[], &mut |e| match e {
            MadEvent::RunStart {
                task,
                label,
                epochs,
                ..
            } => rep.send(Event {
                unit: "epochs",
                done: 0,
                total: *epochs as u64,
                message: format!("{} {label}", task.name()),
            }),
            MadEvent::Epoch(e) => rep.send(Event {
                unit: "epochs",
                done: e.epoch as u64,
                total: 0,
                message: format!("loss {:.3} acc {:.3}", e.train_loss, e.test_macro),
            }),
            _ => {}
        })?;
        if let Some(dir) = &out {
            std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
            write_results(dir, std::slice::from_ref(&r))?;
        }
        serde_json::to_string(&r).map_err(|e| Error::format("<mad report>", e.to_string()))
    })?;
    to_py_json(py, &report)
}

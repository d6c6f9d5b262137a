//! `hyena convert`: write a released checkpoint (Evo 2: a vortex YAML config beside `NAME.pt`
//! or its `.partN` shards) as a hyena model directory (`config.json` + `model.safetensors`, the
//! weights in their stored precision), which later commands memory-map and start in seconds.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use hyena::checkpoint::load_model;
use hyena::models::striped::{family::convert, Evo2Lm};

use crate::alloc::CountingAlloc;
use crate::args::{check_inputs, check_output, ForceFlag, ModelArg, OutKind};
use crate::ui;

#[derive(clap::Args, Debug)]
pub struct ConvertArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// Output model directory (created): config.json and model.safetensors.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[command(flatten)]
    pub force: ForceFlag,
}

pub fn run_cmd(a: ConvertArgs) -> Result<()> {
    CountingAlloc::mark_installed();
    let t0 = Instant::now();
    let dir = &a.model.model;
    check_inputs(&[("--model", dir)])?;
    check_output(
        "--out",
        &a.out,
        OutKind::Dir,
        a.force.force,
        &[dir.as_path()],
    )?;
    let loaded =
        load_model(dir).with_context(|| format!("loading the model in {}", dir.display()))?;
    ui::print_notes(&loaded.notes);
    let Some(lm) = loaded.model.as_any().downcast_ref::<Evo2Lm>() else {
        bail!(
            "{} holds a `{}` model, which is already in hyena's format; convert reads released \
             Evo 2 checkpoints (a vortex YAML config beside NAME.pt or its .partN shards)",
            dir.display(),
            loaded.family
        );
    };
    eprintln!(
        "loaded {} in {:.1} s",
        lm.net.describe(),
        t0.elapsed().as_secs_f64()
    );
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("creating --out {}", a.out.display()))?;
    convert(lm, &a.out).with_context(|| format!("writing {}", a.out.display()))?;
    println!(
        "wrote {} (config.json, model.safetensors); load it with --model {}",
        a.out.display(),
        a.out.display()
    );
    ui::print_memory(t0);
    Ok(())
}

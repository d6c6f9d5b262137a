//! `hyena embed`: hidden states of the DNA records of a FASTA/FASTQ file as a `.npy` array,
//! pooled per record or per base. The work is `hyena::apps::dna::embed_file` (lean inference,
//! one record at a time).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use hyena::apps::dna::{embed_file, records_tsv, EmbedOptions};
use hyena::apps::sharded::{embed_shard, records_manifest};
use hyena::checkpoint::load_model;

use crate::alloc::CountingAlloc;
use crate::args::{
    check_inputs, check_output, check_shard_output, start_shard, ForceFlag, LeanArgs, ModelArg,
    OutKind, PoolArg, PrecisionArg, RecordsFile, ShardArg, TokenArgs,
};
use crate::ui;

#[derive(clap::Args, Debug)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub model: ModelArg,
    #[command(flatten)]
    pub records: RecordsFile,
    /// Hidden states after this many blocks: 0 = the token embeddings [default: all blocks,
    /// then the final norm, as HyenaDNA's backbone returns them]. Evo 2 models also take the
    /// name of a module output of the reference, e.g. `blocks.28.mlp.l3`, `blocks.3`,
    /// `blocks.5.filter`, `norm`.
    #[arg(long)]
    pub layer: Option<String>,
    /// Reduce positions per record: mean or last (one row per record), none (one per base).
    #[arg(long, value_enum, default_value_t = PoolArg::Mean)]
    pub pool: PoolArg,
    /// Output `.npy` (float32): [records, d_model] pooled, [bases, d_model] with --pool none
    /// (all records' rows in order; `<out>.records.tsv` says which rows are whose).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub tokens: TokenArgs,
    #[command(flatten)]
    pub lean: LeanArgs,
    #[command(flatten)]
    pub precision: PrecisionArg,
    #[command(flatten)]
    pub shard: ShardArg,
    #[command(flatten)]
    pub force: ForceFlag,
}

pub fn run_cmd(a: EmbedArgs) -> Result<()> {
    CountingAlloc::mark_installed();
    let t0 = Instant::now();
    let dir = &a.model.model;
    // Everything that can be checked without the model, before loading it.
    check_inputs(&[("--model", dir), ("--fasta", &a.records.fasta)])?;
    let reads = [dir.as_path(), a.records.fasta.as_path()];
    let force = a.force.force;
    let mut shard = None;
    if let Some(s) = a.shard.shard {
        check_shard_output("--out", &a.out, &a.out, force, &reads)?;
        check_shard_output("--out", &records_tsv(&a.out), &a.out, force, &reads)?;
        let settings = serde_json::json!({
            "layer": a.layer,
            "pool": format!("{:?}", a.pool.pool()),
            "tokenize": a.tokens.options(),
            "precision": format!("{:?}", a.precision),
        });
        let outputs = [("out", a.out.clone()), ("records", records_tsv(&a.out))]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        // The slice: contiguous records balanced by bases, from the FASTA alone.
        let fresh = records_manifest("embed", s, &a.records.fasta, dir, settings, outputs)?;
        match start_shard(&a.out, fresh, force)? {
            None => return Ok(()),
            Some(m) => shard = Some(m),
        }
    } else {
        check_output("--out", &a.out, OutKind::File, force, &reads)?;
        check_output("--out", &records_tsv(&a.out), OutKind::File, force, &reads)?;
    }
    let mut loaded =
        load_model(dir).with_context(|| format!("loading the model in {}", dir.display()))?;
    let precision = a.precision.apply(loaded.model.as_mut())?;
    if precision != hyena::models::Precision::F32 || loaded.family == "evo2" {
        eprintln!("matrix products in {precision}");
    }
    let lm = loaded.model.as_ref();
    ui::print_notes(&loaded.notes);
    eprintln!("model loaded in {:.1} s", t0.elapsed().as_secs_f64());
    let (layer, name) = match a.layer.as_deref().map(|s| (s, s.parse::<usize>())) {
        None => (None, None),
        Some((_, Ok(n))) => (Some(n), None),
        Some((s, Err(_))) => (None, Some(s.to_string())),
    };
    let opts = EmbedOptions {
        layer,
        name: name.clone(),
        pool: a.pool.pool(),
        tokenize: a.tokens.options(),
        lean: a.lean.options(lm),
    };
    eprintln!(
        "model: d_model {}, {} blocks, max length {}; embedding layer {} ({:?} pooling)",
        lm.d_model(),
        lm.n_layer(),
        lm.max_len(),
        name.unwrap_or_else(|| opts.layer.unwrap_or(lm.n_layer()).to_string()),
        opts.pool
    );
    let (bar, f) = ui::record_progress();
    if let Some(mut m) = shard {
        let r = embed_shard(lm, &a.records.fasta, &a.out, &opts, &mut m, Some(f));
        bar.finish_and_clear();
        let resumed = r?;
        println!(
            "shard {}: wrote {} ({} records{}) and {}; manifest {}",
            m.shard,
            a.out.display(),
            m.done,
            if resumed > 0 {
                format!(", resumed after {resumed} done by an interrupted run")
            } else {
                String::new()
            },
            records_tsv(&a.out).display(),
            hyena::apps::shard::manifest_path(&a.out).display()
        );
        ui::print_memory(t0);
        return Ok(());
    }
    let rep = embed_file(lm, &a.records.fasta, &a.out, &opts, Some(f));
    bar.finish_and_clear();
    let rep = rep?;
    println!(
        "wrote {} [{} x {}] float32 from {} record(s) ({} tokens); rows per record in {}",
        rep.out.display(),
        rep.shape[0],
        rep.shape[1],
        rep.records.len(),
        rep.records.iter().map(|r| r.tokens).sum::<usize>(),
        rep.records_tsv.display()
    );
    ui::print_memory(t0);
    Ok(())
}

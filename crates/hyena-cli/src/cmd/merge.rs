//! `hyena merge`: join the outputs of every shard of one `embed`, `score` or `vep` job (run
//! with `--shard I/N`) into what one unsharded run writes. The work, and the checks that the
//! shards are one finished job, are `hyena::apps::sharded::merge`.

use std::path::PathBuf;

use anyhow::Result;
use hyena::apps::sharded::merge;

use crate::args::{check_output, ForceFlag, OutKind};

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example: hyena embed --shard 1/3 --out s1.npy …; … --shard 3/3 --out \
                        s3.npy …; hyena merge s1.npy s2.npy s3.npy --out all.npy"
)]
pub struct MergeArgs {
    /// The shards' outputs (their --out files; each has OUT.shard.json beside it), in any
    /// order: every shard of the job, once.
    #[arg(required = true, num_args = 1..)]
    pub shards: Vec<PathBuf>,
    /// The merged output (for embed also OUT.records.tsv).
    #[arg(long)]
    pub out: PathBuf,
    /// The merged per-base file, for score shards run with --per-base.
    #[arg(long)]
    pub per_base: Option<PathBuf>,
    #[command(flatten)]
    pub force: ForceFlag,
}

pub fn run_cmd(a: MergeArgs) -> Result<()> {
    let reads: Vec<&std::path::Path> = a.shards.iter().map(|p| p.as_path()).collect();
    // MAD shards are directories, and so is their merge.
    let kind = match a
        .shards
        .first()
        .map(|s| hyena::apps::shard::manifest_path(s))
    {
        Some(m) if m.exists() && hyena::apps::shard::Manifest::read(&m)?.command == "mad" => {
            OutKind::Dir
        }
        _ => OutKind::File,
    };
    check_output("--out", &a.out, kind, a.force.force, &reads)?;
    let mut records = a.out.as_os_str().to_owned();
    records.push(".records.tsv");
    let records = PathBuf::from(records);
    if records.exists() {
        check_output("--out", &records, OutKind::File, a.force.force, &reads)?;
    }
    if let Some(p) = &a.per_base {
        check_output("--per-base", p, OutKind::File, a.force.force, &reads)?;
    }
    let rep = merge(&a.shards, &a.out, a.per_base.as_deref())?;
    println!(
        "merged {} {} shards ({} items) into {}",
        rep.shards,
        rep.command,
        rep.items,
        rep.written
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

//! `hyena eval`: score a trained model on held-out data and print the numbers (text or
//! JSON). The work is `hyena::train::run::evaluate_run`.

use anyhow::{Context, Result};
use hyena::train::run::{evaluate_run, EvalOptions};

use crate::args::{at_least_one, check_inputs, DataFiles, JsonFlag, ModelArg};
use crate::ui;

#[derive(clap::Args, Debug)]
#[command(mut_arg(
    "fasta",
    DataFiles::fasta_default("the validation split of the run's data")
))]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArg,
    #[command(flatten)]
    pub data: DataFiles,
    /// Window length, at most the model's l_max [default: the run's training window].
    #[arg(long, value_parser = at_least_one)]
    pub seq_len: Option<usize>,
    /// Windows per forward pass [default: the run's batch size].
    #[arg(long, value_parser = at_least_one)]
    pub batch: Option<usize>,
    /// Score at most this many windows [default: all].
    #[arg(long, value_parser = at_least_one)]
    pub max_windows: Option<usize>,
    #[command(flatten)]
    pub json: JsonFlag,
}

pub fn run_cmd(a: EvalArgs) -> Result<()> {
    let model = &a.model.model;
    let mut inputs = vec![("--model", model.as_path())];
    inputs.extend(a.data.fasta.iter().map(|p| ("--fasta", p.as_path())));
    inputs.extend(a.data.text.iter().map(|p| ("--text", p.as_path())));
    check_inputs(&inputs)?;
    let data = (!a.data.is_empty()).then(|| hyena::data::tokens::DataConfig {
        fasta: a.data.fasta.clone(),
        text: a.data.text.clone(),
        ..Default::default()
    });
    let opts = EvalOptions {
        data,
        seq_len: a.seq_len,
        batch: a.batch,
        max_windows: a.max_windows,
    };
    let bar = ui::bar(
        0,
        "{bar:30} {pos}/{len} windows  [{elapsed_precise} < {eta_precise}]",
    );
    let r = evaluate_run(model, &opts, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .map_err(|e| match e {
        // The operator's advice is about building one; say what the user can change.
        hyena::Error::TooLong { len, l_max, .. } => anyhow::anyhow!(
            "windows of {len} tokens are longer than the model's l_max of {l_max}; pass \
             --seq-len {l_max} or less"
        ),
        e => e.into(),
    })
    .with_context(|| format!("evaluating the model in {}", model.display()))?;
    bar.finish_and_clear();
    if a.json.json {
        println!("{}", r.to_json(model));
        return Ok(());
    }
    println!("data: {}", r.summary);
    if r.unknown > 0 {
        println!(
            "note: {} characters outside the alphabet were mapped to the unknown token",
            r.unknown
        );
    }
    println!(
        "{} tokens in windows of {}: loss {:.4} nats, perplexity {:.4}, {:.4} bits/token, accuracy {:.4}",
        r.stats.tokens,
        r.seq_len,
        r.stats.loss,
        r.stats.perplexity,
        r.stats.bits_per_token,
        r.stats.accuracy
    );
    if !r.baselines.is_empty() {
        let list: Vec<String> = r
            .baselines
            .iter()
            .map(|b| {
                let name = if b.order == 0 {
                    "unigram".to_string()
                } else {
                    format!("order {}", b.order)
                };
                format!("{name} {:.4}", b.bits_per_token)
            })
            .collect();
        println!(
            "baselines fitted on the run's training split (bits/token): {}",
            list.join(", ")
        );
    }
    Ok(())
}

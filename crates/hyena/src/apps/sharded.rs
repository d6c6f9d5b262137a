//! The sharded forms of `hyena embed` and `hyena score` (one shard's records, resumable), and
//! `hyena merge`, which joins the outputs of every shard of a job into the bytes one unsharded
//! run writes. The manifests, partitions and resumable files are [`crate::apps::shard`]'s.
//!
//! Resume: a shard's outputs grow in `.partial` files, each record's rows (or per-base lines)
//! flushed before the line that says the record is done (`OUT.records.tsv.partial` for
//! `embed`, `OUT.partial` of JSON lines for `score`); a resumed shard counts those lines, cuts
//! whatever a kill left after them, and continues with the next record.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use crate::apps::dna::{
    embed_records, embed_width, per_base_lines, record_line, records_tsv, score_records,
    EmbedOptions, ProgressFn, RecordScore, Records, ScoreOptions, TokenizeOptions, PER_BASE_HEADER,
    RECORDS_HEADER,
};
use crate::apps::shard::{manifest_path, partial_path, whole_lines, LineFile, Manifest};
use crate::error::{Error, Result};
use crate::io::npy::{header, parse_header, NpyWriter, HEADER};
use crate::io::tokenizer::NucleotideTokenizer;
use crate::layers::lean::LeanOptions;
use crate::models::LanguageModel;

/// The rows column of a record table's whole lines after its header (`lines` of them).
fn table_rows(path: &Path, lines: usize) -> Result<Vec<u64>> {
    let f = std::fs::File::open(path).map_err(Error::io(path))?;
    let mut out = Vec::with_capacity(lines);
    for (n, line) in BufReader::new(f).lines().enumerate().skip(1).take(lines) {
        let line = line.map_err(Error::io(path))?;
        let rows = line
            .rsplit('\t')
            .next()
            .and_then(|x| x.parse().ok())
            .ok_or_else(|| Error::format(path, format!("line {}: no row count", n + 1)))?;
        out.push(rows);
    }
    Ok(out)
}

/// The fresh manifest of shard `shard` of a `command` (`embed`, `score`) over the records of
/// `fasta`: its contiguous slice balanced by bases, the FASTA's checksum, the model's
/// fingerprint, and `settings` and `outputs` as given.
pub fn records_manifest(
    command: &str,
    shard: crate::apps::shard::Shard,
    fasta: &Path,
    model: &Path,
    settings: serde_json::Value,
    outputs: std::collections::BTreeMap<String, PathBuf>,
) -> Result<Manifest> {
    use crate::apps::shard::{split_contiguous, InputSum, ModelPrint};
    let lengths = crate::apps::dna::record_lengths(fasta)?;
    let range = split_contiguous(&lengths, shard.count)[shard.index - 1].clone();
    let weight = lengths[range.clone()].iter().sum::<u64>() as f64;
    Ok(Manifest::new(
        command,
        shard,
        vec![InputSum::of("fasta", fasta)?],
        Some(ModelPrint::of(model)?),
        settings,
        "records",
        range,
        None,
        lengths.len(),
        weight,
        outputs,
    ))
}

/// Embed the records `m.first..m.end` of `fasta` into `out` (and `OUT.records.tsv`, record
/// numbers and rows counted within the shard), continuing after the records an interrupted
/// run of the same shard finished. `m.done` is updated; the manifest is written at the end.
/// Returns how many records an earlier, interrupted run had already done.
pub fn embed_shard(
    lm: &dyn LanguageModel,
    fasta: &Path,
    out: &Path,
    opts: &EmbedOptions,
    m: &mut Manifest,
    progress: Option<ProgressFn>,
) -> Result<usize> {
    let d = embed_width(lm, opts)?;
    let table = records_tsv(out);
    // The record table says what is done; a missing partial file (a kill between the final
    // renames, or none yet) means starting the shard afresh.
    let have = if partial_path(out).exists() {
        whole_lines(&partial_path(&table))?.saturating_sub(1)
    } else {
        0
    };
    let rows_done = if have > 0 {
        table_rows(&partial_path(&table), have)?
    } else {
        Vec::new()
    };
    let (mut npy, mut tab) = if have == 0 {
        (
            NpyWriter::resumable(out, &partial_path(out), d, 0)?,
            LineFile::create(&table, RECORDS_HEADER)?,
        )
    } else {
        (
            NpyWriter::resumable(out, &partial_path(out), d, rows_done.iter().sum())?,
            LineFile::resume(&table, have + 1)?,
        )
    };
    m.done = have;
    let mut i = have;
    embed_records(
        lm,
        Records::FileRange(fasta, m.first + have, m.end),
        opts,
        false,
        progress,
        |rec, tokens, rows| {
            let row = npy.rows();
            npy.write_rows(rows.as_slice())?;
            npy.flush()?;
            tab.write(&record_line(i, &rec.id, tokens, row, npy.rows() - row))?;
            i += 1;
            Ok(())
        },
    )?;
    npy.finish()?;
    tab.finish()?;
    m.done = i;
    m.finished = true;
    m.write(&manifest_path(out))?;
    Ok(have)
}

/// Score the records `m.first..m.end` of `fasta`: one JSON line per record to `out` (what
/// `hyena score --json` prints), per-base lines to `per_base`; resumable like
/// [`embed_shard`].
#[allow(clippy::too_many_arguments)]
pub fn score_shard(
    lm: &dyn LanguageModel,
    fasta: &Path,
    out: &Path,
    per_base: Option<&Path>,
    tokenize: TokenizeOptions,
    lean: LeanOptions,
    score: ScoreOptions,
    m: &mut Manifest,
    progress: Option<ProgressFn>,
) -> Result<ScoreShard> {
    let have = whole_lines(&partial_path(out))?;
    let have = match per_base {
        Some(p) if have > 0 && !partial_path(p).exists() => 0,
        _ => have,
    };
    let mut scores: Vec<serde_json::Value> = Vec::with_capacity(m.end - m.first);
    let mut jsonl = if have == 0 {
        LineFile::create(out, "")?
    } else {
        let text = std::fs::read_to_string(partial_path(out)).map_err(Error::io(out))?;
        for (n, line) in text.lines().take(have).enumerate() {
            scores.push(serde_json::from_str(line).map_err(|e| {
                Error::format(
                    partial_path(out),
                    format!(
                        "line {}: {e}; remove the shard's manifest to run it again",
                        n + 1
                    ),
                )
            })?);
        }
        LineFile::resume(out, have)?
    };
    let mut pb = match per_base {
        None => None,
        Some(p) if have == 0 => Some(LineFile::create(p, PER_BASE_HEADER)?),
        Some(p) => {
            let lines: u64 = scores
                .iter()
                .map(|s| s["scored"].as_u64().unwrap_or(0))
                .sum();
            Some(LineFile::resume(p, 1 + lines as usize)?)
        }
    };
    m.done = have;
    let tok = NucleotideTokenizer::new(tokenize.uppercase);
    score_records(
        lm,
        Records::FileRange(fasta, m.first + have, m.end),
        tokenize,
        lean,
        progress,
        score,
        |rec, ids, s: RecordScore, lp| {
            if let Some(t) = pb.as_mut() {
                t.write(&per_base_lines(lm, &tok, &rec.id, ids, lp))?;
            }
            let line = serde_json::to_string(&s).map_err(|e| Error::format(out, e.to_string()))?;
            jsonl.write(&format!("{line}\n"))?;
            scores.push(serde_json::to_value(&s).unwrap_or_default());
            Ok(())
        },
    )?;
    if let Some(t) = pb {
        t.finish()?;
    }
    jsonl.finish()?;
    m.done = scores.len();
    m.finished = true;
    m.write(&manifest_path(out))?;
    Ok(ScoreShard {
        scores,
        resumed: have,
    })
}

/// What [`score_shard`] did.
#[derive(Clone, Debug)]
pub struct ScoreShard {
    /// The shard's scores as JSON (those of an interrupted run's records read back).
    pub scores: Vec<serde_json::Value>,
    /// Records an earlier, interrupted run had already scored.
    pub resumed: usize,
}

/// What [`merge`] wrote.
#[derive(Clone, Debug)]
pub struct MergeReport {
    pub command: String,
    pub shards: usize,
    /// Items (records, variants) in the merged output.
    pub items: usize,
    pub written: Vec<PathBuf>,
}

/// Read the manifests of the shard outputs `outs` and check that they are every shard of one
/// finished job; returned in shard order.
pub fn job_manifests(outs: &[PathBuf]) -> Result<Vec<(Manifest, PathBuf)>> {
    if outs.is_empty() {
        return Err(Error::config(
            "merge",
            "no files",
            "give the shard outputs to merge",
        ));
    }
    let mut ms = Vec::with_capacity(outs.len());
    for o in outs {
        let mp = manifest_path(o);
        if !mp.exists() {
            return Err(Error::config(
                "merge",
                o.display(),
                format!(
                    "has no shard manifest {}: give the --out files of a run with --shard",
                    mp.display()
                ),
            ));
        }
        ms.push((Manifest::read(&mp)?, o.clone()));
    }
    ms.sort_by_key(|(m, _)| m.shard.index);
    let n = ms[0].0.shard.count;
    let first = ms[0].0.clone();
    for (m, o) in &ms {
        if m.shard.count != n {
            return Err(Error::config(
                "merge",
                o.display(),
                format!(
                    "is shard {} but {} is of {n} shards: these are not one job",
                    m.shard,
                    ms[0].1.display()
                ),
            ));
        }
        if let Some(why) = first.differs_from(m) {
            return Err(Error::config(
                "merge",
                o.display(),
                format!("is not of the same job as {}: {why}", ms[0].1.display()),
            ));
        }
        if !m.finished {
            return Err(Error::config(
                "merge",
                o.display(),
                format!(
                    "shard {} is not finished ({} of {} {} done): run it again, it resumes",
                    m.shard,
                    m.done,
                    m.end - m.first,
                    m.unit
                ),
            ));
        }
    }
    let mut missing = Vec::new();
    let mut twice = Vec::new();
    for i in 1..=n {
        match ms.iter().filter(|(m, _)| m.shard.index == i).count() {
            0 => missing.push(i.to_string()),
            1 => {}
            _ => twice.push(i.to_string()),
        }
    }
    if !missing.is_empty() || !twice.is_empty() {
        return Err(Error::config(
            "merge",
            format!("{} files", outs.len()),
            format!(
                "a job of {n} shards needs each shard once: {}{}",
                if missing.is_empty() {
                    String::new()
                } else {
                    format!("shard(s) {} of {n} missing ", missing.join(", "))
                },
                if twice.is_empty() {
                    String::new()
                } else {
                    format!("shard(s) {} given twice", twice.join(", "))
                }
            ),
        ));
    }
    // Contiguous shards must tile the job (a check on the manifests themselves).
    if first.members.is_none() {
        let mut next = 0;
        for (m, o) in &ms {
            if m.first != next {
                return Err(Error::format(
                    manifest_path(o),
                    format!(
                        "shard {} starts at {} {} where the one before ended at {next}",
                        m.shard, m.unit, m.first
                    ),
                ));
            }
            next = m.end;
        }
        if next != first.total {
            return Err(Error::format(
                manifest_path(&ms[ms.len() - 1].1),
                format!("the shards end at {next} of {} {}", first.total, first.unit),
            ));
        }
    }
    Ok(ms)
}

/// Join the outputs `outs` of every shard of one job (`hyena embed|score|vep --shard`) into
/// `out` (and its companions: the record table of `embed`; `per_base` for `score` shards that
/// wrote per-base files): the same bytes an unsharded run writes. Each output is written
/// through a temp file and renamed.
pub fn merge(outs: &[PathBuf], out: &Path, per_base: Option<&Path>) -> Result<MergeReport> {
    let ms = job_manifests(outs)?;
    let command = ms[0].0.command.clone();
    let files: Vec<&Path> = ms.iter().map(|(_, o)| o.as_path()).collect();
    let items = ms.iter().map(|(m, _)| m.done).sum();
    let mut written = Vec::new();
    match command.as_str() {
        "embed" => {
            let rows = merge_npy(&files, out)?;
            let tables: Vec<PathBuf> = files.iter().map(|f| records_tsv(f)).collect();
            merge_record_tables(&tables, &records_tsv(out), &rows)?;
            written.push(out.to_path_buf());
            written.push(records_tsv(out));
        }
        "score" => {
            let pbs: Vec<Option<PathBuf>> = ms
                .iter()
                .map(|(m, _)| m.outputs.get("per_base").cloned())
                .collect();
            // Every check before the first write: a refused merge writes nothing.
            match (pbs[0].is_some(), per_base) {
                (true, None) => {
                    return Err(Error::config(
                        "merge",
                        "--per-base",
                        "the shards wrote per-base files: give --per-base FILE for the merged one",
                    ))
                }
                (false, Some(p)) => {
                    return Err(Error::config(
                        "--per-base",
                        p.display(),
                        "the shards wrote no per-base files (run them with --per-base)",
                    ))
                }
                _ => {}
            }
            concat_lines(&files, out, 0)?;
            written.push(out.to_path_buf());
            if let Some(p) = per_base {
                let pbs: Vec<PathBuf> = pbs.into_iter().flatten().collect();
                let refs: Vec<&Path> = pbs.iter().map(|p| p.as_path()).collect();
                concat_lines(&refs, p, 1)?;
                written.push(p.to_path_buf());
            }
        }
        "vep" => {
            concat_lines(&files, out, 2)?;
            written.push(out.to_path_buf());
        }
        "mad" => {
            merge_mad(&ms, out)?;
            written.push(out.to_path_buf());
        }
        other => {
            return Err(Error::config(
                "merge",
                other,
                "this hyena merges embed, score, vep and mad shards",
            ))
        }
    }
    Ok(MergeReport {
        command,
        shards: ms.len(),
        items,
        written,
    })
}

/// Write through `out`'s temp file with `f`, then rename; the temp file is removed on error.
fn write_via_temp(out: &Path, f: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let tmp = crate::io::safetensors::temp_path_beside(out);
    let r = (|| {
        let file = std::fs::File::create(&tmp).map_err(Error::io(out))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        f(&mut w)?;
        let file = w.into_inner().map_err(|e| Error::io(out)(e.into_error()))?;
        file.sync_all().map_err(Error::io(out))?;
        std::fs::rename(&tmp, out).map_err(Error::io(out))
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// Concatenate `.npy` arrays `[r_i, D]` (as [`NpyWriter`] writes them) into `out`, streaming;
/// returns each file's row count.
fn merge_npy(files: &[&Path], out: &Path) -> Result<Vec<u64>> {
    let mut shapes = Vec::with_capacity(files.len());
    for f in files {
        let mut head = vec![0u8; HEADER];
        let mut file = std::fs::File::open(f).map_err(Error::io(*f))?;
        let got = file.read(&mut head).map_err(Error::io(*f))?;
        let (shape, start) = parse_header(&head[..got], f)?;
        if shape.len() != 2 || start != HEADER {
            return Err(Error::format(
                *f,
                format!("shape {shape:?}: not an embedding array written by hyena embed"),
            ));
        }
        let len = file.metadata().map_err(Error::io(*f))?.len();
        if len != (HEADER + shape[0] * shape[1] * 4) as u64 {
            return Err(Error::format(
                *f,
                format!("{len} bytes for shape {shape:?}: truncated"),
            ));
        }
        shapes.push(shape);
    }
    let d = shapes[0][1];
    if let Some((i, s)) = shapes.iter().enumerate().find(|(_, s)| s[1] != d) {
        return Err(Error::shape(
            "merge",
            files[i].display().to_string(),
            format!("[rows, {d}] like {}", files[0].display()),
            format!("{s:?}"),
        ));
    }
    let rows: Vec<u64> = shapes.iter().map(|s| s[0] as u64).collect();
    write_via_temp(out, |w| {
        w.write_all(&header(&[rows.iter().sum(), d as u64]))
            .map_err(Error::io(out))?;
        for f in files {
            let mut file = std::fs::File::open(f).map_err(Error::io(*f))?;
            let mut skip = [0u8; HEADER];
            file.read_exact(&mut skip).map_err(Error::io(*f))?;
            std::io::copy(&mut file, w).map_err(Error::io(out))?;
        }
        Ok(())
    })?;
    Ok(rows)
}

/// Join record tables, numbering records and rows on from the shards before.
fn merge_record_tables(tables: &[PathBuf], out: &Path, rows: &[u64]) -> Result<()> {
    write_via_temp(out, |w| {
        w.write_all(RECORDS_HEADER.as_bytes())
            .map_err(Error::io(out))?;
        let (mut rec, mut row0) = (0usize, 0u64);
        for (t, &shard_rows) in tables.iter().zip(rows) {
            let f = std::fs::File::open(t).map_err(Error::io(t))?;
            for (n, line) in BufReader::new(f).lines().enumerate().skip(1) {
                let line = line.map_err(Error::io(t))?;
                let c: Vec<&str> = line.split('\t').collect();
                let bad = || Error::format(t, format!("line {}: not a record row", n + 1));
                if c.len() < 5 {
                    return Err(bad());
                }
                // The name may hold tabs only if the FASTA header did not; it is everything
                // between the index and the last three columns.
                let k = c.len();
                let name = c[1..k - 3].join("\t");
                let first: u64 = c[k - 2].parse().map_err(|_| bad())?;
                let nrows: u64 = c[k - 1].parse().map_err(|_| bad())?;
                w.write_all(
                    record_line(
                        rec,
                        &name,
                        c[k - 3].parse().map_err(|_| bad())?,
                        row0 + first,
                        nrows,
                    )
                    .as_bytes(),
                )
                .map_err(Error::io(out))?;
                rec += 1;
            }
            row0 += shard_rows;
        }
        Ok(())
    })
}

/// Concatenate text files, keeping the first `header` lines of the first file only (and
/// checking that every file has the same header).
fn concat_lines(files: &[&Path], out: &Path, header: usize) -> Result<()> {
    let mut head: Option<Vec<String>> = None;
    write_via_temp(out, |w| {
        for f in files {
            let file = std::fs::File::open(f).map_err(Error::io(*f))?;
            let mut r = BufReader::new(file);
            let mut mine = Vec::with_capacity(header);
            for _ in 0..header {
                let mut line = String::new();
                r.read_line(&mut line).map_err(Error::io(*f))?;
                mine.push(line);
            }
            match &head {
                None => {
                    for l in &mine {
                        w.write_all(l.as_bytes()).map_err(Error::io(out))?;
                    }
                    head = Some(mine);
                }
                Some(h) if *h != mine => {
                    return Err(Error::format(
                        *f,
                        format!(
                            "its header differs from {}'s: not the same job",
                            files[0].display()
                        ),
                    ))
                }
                Some(_) => {}
            }
            std::io::copy(&mut r, w).map_err(Error::io(out))?;
        }
        Ok(())
    })
}

/// Join MAD shards (`hyena mad --shard`, output directories) into `out`: every setting's
/// record from the shards' progress files (each must be there once), the progress file of the
/// whole protocol and the results an unsharded run writes (`results.json`, `.csv`, the chart;
/// times are the shards' own, summed).
fn merge_mad(ms: &[(Manifest, PathBuf)], out: &Path) -> Result<()> {
    use crate::train::mad::{mad_items, run_mad, write_results, ProgressLog};
    let m0 = &ms[0].0;
    let field = |k: &str| -> Result<serde_json::Value> {
        m0.settings.get(k).cloned().ok_or_else(|| {
            Error::format(manifest_path(&ms[0].1), format!("no `{k}` in the settings"))
        })
    };
    let bad = |e: serde_json::Error| Error::format(manifest_path(&ms[0].1), e.to_string());
    let specs: Vec<String> = serde_json::from_value(field("specs")?).map_err(bad)?;
    let archs: Vec<crate::models::zoo::ArchConfig> =
        serde_json::from_value(field("architectures")?).map_err(bad)?;
    let tasks: Vec<crate::data::mad::MadTask> =
        serde_json::from_value(field("tasks")?).map_err(bad)?;
    let proto: crate::train::mad::MadProtocol =
        serde_json::from_value(field("protocol")?).map_err(bad)?;
    let mut found = Vec::new();
    for (_, dir) in ms {
        found.extend(ProgressLog::read(&dir.join(ProgressLog::FILE))?.records);
    }
    // In the protocol's order, each setting once (a shard's own resumed duplicate is fine).
    let mut records = Vec::new();
    for (a, task, setting) in mad_items(archs.len(), &tasks, &proto) {
        match found
            .iter()
            .find(|r| r.matches(&archs[a], &proto, task, &setting))
        {
            Some(r) => records.push(r.clone()),
            None => {
                return Err(Error::config(
                    "merge",
                    format!("{} {} {}", specs[a], task.name(), setting.label()),
                    "no shard holds this setting's result: run the shard that owns it again \
                     (it resumes), then merge",
                ))
            }
        }
    }
    std::fs::create_dir_all(out).map_err(Error::io(out))?;
    let (mut log, _) = ProgressLog::start(out)?;
    for r in &records {
        log.append(r)?;
    }
    let mut reports = Vec::with_capacity(specs.len());
    for (spec, arch) in specs.iter().zip(&archs) {
        // Every setting is in `records`: nothing is trained.
        reports.push(run_mad(spec, arch, &tasks, &proto, &records, &mut |_| {})?);
    }
    write_results(out, &reports)
}

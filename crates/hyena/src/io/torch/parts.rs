//! Byte-split checkpoints read as one file, and finding a checkpoint in a directory.
//!
//! Large released checkpoints (Evo 2) come either as one `NAME.pt` or as `NAME.pt.part0`,
//! `NAME.pt.part1`, … : the bytes of one `torch.save` file cut at arbitrary offsets. [`Concat`]
//! reads such a series as one virtual file (`Read + Seek` over the concatenation, a seek may
//! cross part boundaries), so nothing is ever joined into a copy on disk or in memory.
//! [`find_checkpoint`] picks the one checkpoint (single file or complete part series) of a
//! directory.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::ReadSeek;
use crate::error::{Error, Result};

/// One part of a [`Concat`]: where it starts in the whole, its length, and its reader.
struct Part {
    start: u64,
    len: u64,
    name: String,
    src: Box<dyn ReadSeek>,
}

/// Several readers read as the concatenation of their bytes.
pub(crate) struct Concat {
    parts: Vec<Part>,
    len: u64,
    pos: u64,
}

impl Concat {
    /// The concatenation of `parts` (`(name for errors, length, reader)`), in order.
    pub(crate) fn new(parts: Vec<(String, u64, Box<dyn ReadSeek>)>) -> Concat {
        let mut start = 0u64;
        let parts = parts
            .into_iter()
            .map(|(name, len, src)| {
                let p = Part {
                    start,
                    len,
                    name,
                    src,
                };
                start = start.saturating_add(len);
                p
            })
            .collect();
        Concat {
            parts,
            len: start,
            pos: 0,
        }
    }

    /// Total length in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }
}

impl Read for Concat {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() || self.pos >= self.len {
            return Ok(0);
        }
        // The part holding `pos`: the last one starting at or before it with bytes past it
        // (empty parts are stepped over).
        let pos = self.pos;
        let Some(part) = self
            .parts
            .iter_mut()
            .find(|p| p.start <= pos && pos - p.start < p.len)
        else {
            return Ok(0);
        };
        let within = pos - part.start;
        let room = part.len - within;
        let want = usize::try_from(room).unwrap_or(usize::MAX).min(buf.len());
        let dst = buf.get_mut(..want).unwrap_or_default();
        let name = part.name.clone();
        let with_name = |e: std::io::Error| std::io::Error::new(e.kind(), format!("{name}: {e}"));
        part.src.seek(SeekFrom::Start(within)).map_err(with_name)?;
        let n = part.src.read(dst).map_err(with_name)?;
        if n == 0 {
            // The part is shorter than when its length was taken (changed on disk).
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "{name}: ends at byte {within}, expected {} bytes; was the file changed \
                     while it was read?",
                    part.len
                ),
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Concat {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let Some(target) = target else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek to a negative or overflowing position",
            ));
        };
        self.pos = target;
        Ok(target)
    }
}

/// The name that stands for a part series in messages: `dir/NAME.pt.part{0..N}` for a regular
/// series, else the first path and the number of parts.
pub(crate) fn series_label(paths: &[PathBuf]) -> PathBuf {
    match paths {
        [] => PathBuf::from("(no files)"),
        [one] => one.clone(),
        [first, ..] => {
            let base = part_number(first).map(|(b, _)| b);
            let regular = paths.iter().enumerate().all(|(i, p)| {
                part_number(p).map(|(b, n)| (Some(b), n)) == Some((base.clone(), i as u64))
            });
            match base {
                Some(base) if regular => {
                    first.with_file_name(format!("{base}.part{{0..{}}}", paths.len() - 1))
                }
                _ => PathBuf::from(format!(
                    "{} (+{} more parts)",
                    first.display(),
                    paths.len() - 1
                )),
            }
        }
    }
}

/// `("NAME.pt", N)` for a file named `NAME.pt.partN` (`N` decimal digits).
fn part_number(p: &Path) -> Option<(String, u64)> {
    let name = p.file_name()?.to_str()?;
    let (base, num) = name.rsplit_once(".part")?;
    if base.len() <= 3 || !base.ends_with(".pt") {
        return None;
    }
    if num.is_empty() || num.len() > 18 || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((base.to_string(), num.parse().ok()?))
}

/// Open the files `paths` as one [`Concat`], with its total length.
pub(crate) fn open_series(paths: &[PathBuf]) -> Result<(Concat, u64)> {
    let mut parts: Vec<(String, u64, Box<dyn ReadSeek>)> = Vec::with_capacity(paths.len());
    for p in paths {
        let f = File::open(p).map_err(Error::io(p))?;
        let len = f.metadata().map_err(Error::io(p))?.len();
        parts.push((p.display().to_string(), len, Box::new(f)));
    }
    let c = Concat::new(parts);
    let len = c.len();
    Ok((c, len))
}

/// The checkpoint of directory `dir`: exactly one `*.pt` file, or one complete series
/// `NAME.pt.part0`, `NAME.pt.part1`, … (returned in numeric order: `part10` after `part9`).
/// `Ok(None)` if there is neither.
///
/// Errors (naming the files): a part number missing from a series (or given twice, as `part1`
/// and `part01`), two candidate checkpoints, or both `NAME.pt` and `NAME.pt.partN` present.
pub fn find_checkpoint(dir: &Path) -> Result<Option<Vec<PathBuf>>> {
    let mut singles: Vec<PathBuf> = Vec::new();
    let mut series: BTreeMap<String, Vec<(u64, PathBuf)>> = BTreeMap::new();
    let listing = std::fs::read_dir(dir).map_err(Error::io(dir))?;
    for entry in listing {
        let entry = entry.map_err(Error::io(dir))?;
        let path = entry.path();
        // Follow links: a linked file counts as a file.
        if !std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            continue;
        }
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some((base, n)) = part_number(&path) {
            series.entry(base).or_default().push((n, path));
        } else if name.len() > 3 && name.ends_with(".pt") {
            singles.push(path);
        }
    }
    singles.sort();
    let list = |ps: &[PathBuf]| {
        ps.iter()
            .map(|p| format!("`{}`", p.display()))
            .collect::<Vec<_>>()
            .join(", ")
    };

    for single in &singles {
        let name = single.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(parts) = series.get(name) {
            let mut ps: Vec<PathBuf> = parts.iter().map(|(_, p)| p.clone()).collect();
            ps.sort();
            return Err(Error::format(
                dir,
                format!(
                    "both `{name}` and its parts ({}) are here; keep one: delete the parts if \
                     `{name}` is complete (they are its bytes cut into pieces), or the single \
                     file if it is an incomplete join",
                    list(&ps)
                ),
            ));
        }
    }

    let mut candidates: Vec<(String, Vec<PathBuf>)> = singles
        .iter()
        .map(|p| (p.display().to_string(), vec![p.clone()]))
        .collect();
    for (base, mut parts) in series {
        parts.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        for (i, (n, p)) in parts.iter().enumerate() {
            let want = i as u64;
            if *n == want {
                continue;
            }
            let all: Vec<PathBuf> = parts.iter().map(|(_, p)| p.clone()).collect();
            let msg = if *n < want {
                format!(
                    "part {n} of `{base}` is there twice (`{}` and another name with the same \
                     number) among {}; keep one",
                    p.display(),
                    list(&all)
                )
            } else {
                format!(
                    "`{base}` is split into parts but `{base}.part{want}` is missing (found {}); \
                     download the missing part: the parts are the bytes of one file and all \
                     are needed",
                    list(&all)
                )
            };
            return Err(Error::format(dir, msg));
        }
        let label = series_label(&parts.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>());
        candidates.push((
            label.display().to_string(),
            parts.into_iter().map(|(_, p)| p).collect(),
        ));
    }
    match candidates.len() {
        0 => Ok(None),
        1 => Ok(candidates.pop().map(|(_, ps)| ps)),
        _ => Err(Error::format(
            dir,
            format!(
                "several checkpoints here ({}); expected one `*.pt` file or one \
                 `*.pt.part0..N` series: move the others away or name the file to load",
                candidates
                    .iter()
                    .map(|(l, _)| format!("`{l}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn concat(parts: &[&[u8]]) -> Concat {
        Concat::new(
            parts
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    (
                        format!("p{i}"),
                        p.len() as u64,
                        Box::new(Cursor::new(p.to_vec())) as Box<dyn ReadSeek>,
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn reads_and_seeks_across_boundaries() {
        let whole: Vec<u8> = (0..=255u8).collect();
        let mut c = concat(&[
            &whole[..10],
            &[],
            &whole[10..11],
            &whole[11..200],
            &whole[200..],
        ]);
        assert_eq!(c.len(), 256);
        let mut all = Vec::new();
        c.read_to_end(&mut all).unwrap();
        assert_eq!(all, whole);
        for (at, n) in [
            (0u64, 256usize),
            (5, 10),
            (9, 3),
            (10, 1),
            (199, 2),
            (255, 1),
        ] {
            c.seek(SeekFrom::Start(at)).unwrap();
            let mut buf = vec![0u8; n];
            c.read_exact(&mut buf).unwrap();
            assert_eq!(buf, &whole[at as usize..at as usize + n], "at {at}");
        }
        assert_eq!(c.seek(SeekFrom::End(-6)).unwrap(), 250);
        assert_eq!(c.seek(SeekFrom::Current(-240)).unwrap(), 10);
        let mut b = [0u8; 1];
        c.read_exact(&mut b).unwrap();
        assert_eq!(b[0], 10);
        assert!(c.seek(SeekFrom::Current(-100)).is_err());
        // Past the end: reads nothing.
        c.seek(SeekFrom::Start(1000)).unwrap();
        assert_eq!(c.read(&mut b).unwrap(), 0);
    }

    #[test]
    fn part_names() {
        assert_eq!(
            part_number(Path::new("/d/evo2_7b.pt.part10")),
            Some(("evo2_7b.pt".into(), 10))
        );
        assert_eq!(part_number(Path::new("x.pt.part")), None);
        assert_eq!(part_number(Path::new("x.pt.part1a")), None);
        assert_eq!(part_number(Path::new("x.bin.part1")), None);
        assert_eq!(part_number(Path::new(".pt.part1")), None);
        let ps: Vec<PathBuf> = (0..3).map(|i| format!("/d/m.pt.part{i}").into()).collect();
        assert_eq!(series_label(&ps), PathBuf::from("/d/m.pt.part{0..2}"));
    }
}

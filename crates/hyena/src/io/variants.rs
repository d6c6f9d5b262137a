//! Variant files for variant-effect scoring: VCF and a plain TSV, plain or compressed (any
//! compression [`open_decompressed`] reads).
//!
//! - **VCF** (detected by a `##fileformat=VCF` or `#CHROM` header line): columns `CHROM POS
//!   ID REF ALT …` separated by tabs; `#` lines are headers; several comma-separated ALT
//!   alleles give one variant each. Symbolic alleles (`<DEL>`), breakends (`A[chr2:1[`), the
//!   spanning deletion `*` and the missing `.` are refused by line: they have no sequence to
//!   score.
//! - **TSV**: columns `chrom pos ref alt` and optionally `id`, tab or space separated; `#`
//!   lines and a first line starting with `chrom` are headers.
//!
//! Positions are 1-based, as in both formats; alleles are bases (`ACGTN`, either case, kept as
//! written). Every error names the file and the line and says what to fix.

use std::path::Path;

use super::text::read_text;
use crate::error::{Error, Result};

/// One variant: REF replaced by ALT at `pos`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variant {
    /// The line of the file it came from (1-based).
    pub line: usize,
    pub chrom: String,
    /// 1-based position of the first base of `reference`.
    pub pos: u64,
    /// The ID column (`.` when there is none).
    pub id: String,
    pub reference: Vec<u8>,
    pub alt: Vec<u8>,
}

impl Variant {
    /// `chrom:pos REF>ALT`, for messages and output.
    pub fn label(&self) -> String {
        format!(
            "{}:{} {}>{}",
            self.chrom,
            self.pos,
            String::from_utf8_lossy(&self.reference),
            String::from_utf8_lossy(&self.alt)
        )
    }
}

/// The two layouts a variant file may have (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VariantFormat {
    Vcf,
    Tsv,
}

/// Read every variant of `path` (VCF or TSV, detected from its content).
pub fn read_variants(path: impl AsRef<Path>) -> Result<Vec<Variant>> {
    let path = path.as_ref();
    let text = read_text(path)?;
    parse_variants(&text, detect_format(&text), path)
}

/// VCF when a line before the first data line is a VCF header, else TSV.
pub fn detect_format(text: &[u8]) -> VariantFormat {
    for line in text.split(|&b| b == b'\n') {
        if line.starts_with(b"##fileformat=VCF") || line.starts_with(b"#CHROM") {
            return VariantFormat::Vcf;
        }
        if !line.starts_with(b"#") && !line.iter().all(u8::is_ascii_whitespace) {
            break;
        }
    }
    VariantFormat::Tsv
}

/// The variants of `text` in `format`; `file` names it in errors.
pub fn parse_variants(text: &[u8], format: VariantFormat, file: &Path) -> Result<Vec<Variant>> {
    let mut out = Vec::new();
    let mut seen_data = false;
    for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) || raw.starts_with(b"#") {
            continue;
        }
        let err = |msg: String| Error::format(file, format!("line {line}: {msg}"));
        let s = std::str::from_utf8(raw).map_err(|_| err("not UTF-8 text".into()))?;
        let fields: Vec<&str> = if s.contains('\t') {
            s.split('\t').map(str::trim).collect()
        } else {
            s.split_whitespace().collect()
        };
        if format == VariantFormat::Tsv
            && !seen_data
            && fields
                .first()
                .is_some_and(|f| f.eq_ignore_ascii_case("chrom") || f.eq_ignore_ascii_case("chr"))
        {
            // A header line.
            seen_data = true;
            continue;
        }
        seen_data = true;
        let (chrom, pos, id, refa, alts) = match format {
            VariantFormat::Vcf => {
                if fields.len() < 5 {
                    return Err(err(format!(
                        "{} column(s); a VCF record needs at least CHROM POS ID REF ALT, \
                         separated by tabs",
                        fields.len()
                    )));
                }
                (fields[0], fields[1], fields[2], fields[3], fields[4])
            }
            VariantFormat::Tsv => {
                if fields.len() < 4 {
                    return Err(err(format!(
                        "{} column(s); a variant line needs chrom, pos, ref and alt (and \
                         optionally an id)",
                        fields.len()
                    )));
                }
                (
                    fields[0],
                    fields[1],
                    fields.get(4).copied().unwrap_or("."),
                    fields[2],
                    fields[3],
                )
            }
        };
        if chrom.is_empty() {
            return Err(err("an empty chromosome name".into()));
        }
        let pos: u64 = match pos.parse() {
            Ok(p) if p >= 1 => p,
            _ => {
                return Err(err(format!(
                    "position {pos:?} is not a positive whole number (positions are 1-based)"
                )))
            }
        };
        let reference = bases(refa).map_err(|m| err(format!("REF {refa:?}: {m}")))?;
        for alt in alts.split(',') {
            if alt == "." || alt == "*" || alt.starts_with('<') || alt.contains(['[', ']']) {
                return Err(err(format!(
                    "ALT {alt:?} is not a sequence (symbolic, breakend, spanning-deletion or \
                     missing allele); only SNVs and small indels written as bases can be \
                     scored: remove this record"
                )));
            }
            let alt_b = bases(alt).map_err(|m| err(format!("ALT {alt:?}: {m}")))?;
            if alt_b.eq_ignore_ascii_case(&reference) {
                return Err(err(format!(
                    "ALT {alt:?} equals REF: not a variant, remove this record"
                )));
            }
            out.push(Variant {
                line,
                chrom: chrom.to_string(),
                pos,
                id: if id.is_empty() { "." } else { id }.to_string(),
                reference: reference.clone(),
                alt: alt_b,
            });
        }
    }
    Ok(out)
}

/// An allele's bases, or what is wrong with it.
fn bases(s: &str) -> std::result::Result<Vec<u8>, String> {
    if s.is_empty() {
        return Err("empty allele".into());
    }
    if let Some(c) = s
        .chars()
        .find(|c| !matches!(c.to_ascii_uppercase(), 'A' | 'C' | 'G' | 'T' | 'N'))
    {
        return Err(format!("{c:?} is not a base (A, C, G, T or N)"));
    }
    Ok(s.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Variant>> {
        let t = text.as_bytes();
        parse_variants(t, detect_format(t), Path::new("v.vcf"))
    }

    #[test]
    fn vcf_records_split_multiallelic_alts() {
        let v = parse(
            "##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\n\
             17\t100\trs1\tA\tG,T\t.\n17\t105\t.\tAC\tA\t50\n",
        )
        .unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].label(), "17:100 A>G");
        assert_eq!(v[1].alt, b"T");
        assert_eq!((v[1].line, v[2].line), (3, 4));
        assert_eq!(
            (v[2].reference.as_slice(), v[2].alt.as_slice()),
            (&b"AC"[..], &b"A"[..])
        );
        assert_eq!(v[0].id, "rs1");
    }

    #[test]
    fn tsv_with_header_and_optional_id() {
        let v = parse("chrom\tpos\tref\talt\nchr1 5 c t\nchr1\t9\tG\tGA\tmy_id\n").unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].pos, v[0].id.as_str()), (5, "."));
        assert_eq!(v[1].id, "my_id");
        assert_eq!(v[0].reference, b"c");
    }

    #[test]
    fn malformed_lines_are_named() {
        for (text, want) in [
            (
                "##fileformat=VCF\n1\t0\t.\tA\tG\n",
                "line 2: position \"0\"",
            ),
            ("##fileformat=VCF\n1\tx\t.\tA\tG\n", "position \"x\""),
            ("##fileformat=VCF\n1\t5\t.\tA\n", "line 2: 4 column(s)"),
            ("##fileformat=VCF\n1\t5\t.\tA\t<DEL>\n", "not a sequence"),
            ("##fileformat=VCF\n1\t5\t.\tA\tG[2:7[\n", "not a sequence"),
            ("##fileformat=VCF\n1\t5\t.\tA\t.\n", "not a sequence"),
            ("##fileformat=VCF\n1\t5\t.\tA\tA\n", "equals REF"),
            ("1 5 A\n", "line 1: 3 column(s)"),
            ("1 5 R G\n", "REF \"R\": 'R' is not a base"),
            ("1 5 A G\n1 6 A Z\n", "line 2: ALT \"Z\""),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(e.starts_with("v.vcf: "), "{e}");
        }
    }

    #[test]
    fn format_detection_reads_the_header() {
        assert_eq!(detect_format(b"##fileformat=VCFv4.3\n"), VariantFormat::Vcf);
        assert_eq!(detect_format(b"#CHROM\tPOS\n1\t2\n"), VariantFormat::Vcf);
        assert_eq!(detect_format(b"# note\nchr1 1 A G\n"), VariantFormat::Tsv);
        assert_eq!(detect_format(b""), VariantFormat::Tsv);
    }
}

//! File framing of OTLP records, shared by the `file` source, `spanflow gen --out`
//! and the Alibaba importer.
//!
//! `otlp_proto`: per record a 4-byte big-endian length, then the bytes (the
//! OpenTelemetry Collector's file exporter framing). `otlp_json`: one JSON request per
//! line.

use std::fs::File;
use std::io::{self, BufWriter, ErrorKind, Write};
use std::path::Path;

use crate::formats::InputFormat;

/// File framing for `spanflow gen --out` and the `file` source:
/// otlp_proto: per record a 4-byte big-endian length then the bytes; otlp_json: one
/// JSON request per line.
pub fn write_records(
    path: &Path,
    format: InputFormat,
    records: impl IntoIterator<Item = impl AsRef<[u8]>>,
) -> io::Result<()> {
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    for (i, record) in records.into_iter().enumerate() {
        let record = record.as_ref();
        match format {
            InputFormat::OtlpProto | InputFormat::Avro => {
                let len = u32::try_from(record.len()).map_err(|_| {
                    io::Error::new(
                        ErrorKind::InvalidInput,
                        format!(
                            "{}: record {i} is {} bytes, more than a 4-byte length can frame",
                            path.display(),
                            record.len()
                        ),
                    )
                })?;
                out.write_all(&len.to_be_bytes())?;
                out.write_all(record)?;
            }
            InputFormat::OtlpJson => {
                if record.contains(&b'\n') {
                    return Err(io::Error::new(
                        ErrorKind::InvalidInput,
                        format!(
                            "{}: record {i} contains a newline and cannot be framed as one line",
                            path.display()
                        ),
                    ));
                }
                out.write_all(record)?;
                out.write_all(b"\n")?;
            }
        }
    }
    out.flush()
}

/// Reads records back (same framing); a truncated/corrupt frame yields Err with the
/// byte offset. Used by the file source.
///
/// JSON lines are returned undecoded (a bad line is the decoder's business, not a
/// framing error), blank lines are skipped and a trailing `\r` is dropped. Only a last
/// line without its newline that is not complete JSON counts as truncated.
pub fn read_records(path: &Path, format: InputFormat) -> io::Result<Vec<Vec<u8>>> {
    let data = std::fs::read(path)?;
    match format {
        InputFormat::OtlpProto | InputFormat::Avro => read_proto(path, &data),
        InputFormat::OtlpJson => read_json(path, &data),
    }
}

fn read_proto(path: &Path, data: &[u8]) -> io::Result<Vec<Vec<u8>>> {
    let mut records = Vec::new();
    let mut offset = 0usize;
    while offset < data.len() {
        let rest = &data[offset..];
        let Some(header) = rest.first_chunk::<4>() else {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                format!(
                    "{}: truncated record at byte offset {offset}: {} of the 4 length bytes present",
                    path.display(),
                    rest.len()
                ),
            ));
        };
        let len = u32::from_be_bytes(*header) as usize;
        let body = &rest[4..];
        if body.len() < len {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                format!(
                    "{}: truncated record at byte offset {offset}: length says {len} bytes, only {} follow",
                    path.display(),
                    body.len()
                ),
            ));
        }
        records.push(body[..len].to_vec());
        offset += 4 + len;
    }
    Ok(records)
}

fn read_json(path: &Path, data: &[u8]) -> io::Result<Vec<Vec<u8>>> {
    let mut records = Vec::new();
    let mut offset = 0usize;
    while offset < data.len() {
        let rest = &data[offset..];
        let (line, next, terminated) = match rest.iter().position(|&b| b == b'\n') {
            Some(n) => (&rest[..n], offset + n + 1, true),
            None => (rest, data.len(), false),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if !line.iter().all(u8::is_ascii_whitespace) {
            if !terminated && serde_json::from_slice::<serde::de::IgnoredAny>(line).is_err() {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!(
                        "{}: truncated record at byte offset {offset}: last line has no newline and is not complete JSON",
                        path.display()
                    ),
                ));
            }
            records.push(line.to_vec());
        }
        offset = next;
    }
    Ok(records)
}

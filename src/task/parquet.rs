//! Reading the Hugging Face Hub's Parquet dataset layout
//! (`<split>-*.parquet`) with polars, as JSON rows for the task layer.

use std::path::PathBuf;

use polars::prelude::*;
use serde_json::Value;

/// The [`crate::task::ParquetReader`] backed by polars.
pub struct PolarsParquet;

impl crate::task::ParquetReader for PolarsParquet {
    fn read_rows(&self, files: &[PathBuf]) -> Result<Vec<Value>, String> {
        let mut rows = Vec::new();
        for f in files {
            let file = std::fs::File::open(f).map_err(|e| format!("{}: {e}", f.display()))?;
            let mut df = ParquetReader::new(file)
                .finish()
                .map_err(|e| format!("{}: not a readable Parquet file: {e}", f.display()))?;
            let mut buf = Vec::new();
            JsonWriter::new(&mut buf)
                .with_json_format(JsonFormat::JsonLines)
                .finish(&mut df)
                .map_err(|e| format!("{}: {e}", f.display()))?;
            for line in buf.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                rows.push(
                    serde_json::from_slice(line).map_err(|e| format!("{}: {e}", f.display()))?,
                );
            }
        }
        Ok(rows)
    }
}

/// Writes JSON rows as a Parquet file (used by tests and data conversion).
pub fn write_rows(rows: &[Value], path: &std::path::Path) -> Result<(), String> {
    let mut text = Vec::new();
    for r in rows {
        text.extend(serde_json::to_vec(r).map_err(|e| e.to_string())?);
        text.push(b'\n');
    }
    let mut df = JsonReader::new(std::io::Cursor::new(text))
        .with_json_format(JsonFormat::JsonLines)
        .finish()
        .map_err(|e| e.to_string())?;
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    ParquetWriter::new(file)
        .finish(&mut df)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

//! Opening an obtained model: its weights file (GGUF) or folder
//! (safetensors) with metadata read and tensors not, and its tokenizer.

use std::path::Path;

use crate::model::gguf::{GgufError, GgufFile};
use crate::model::safetensors::SafetensorsError;
use crate::model::tokenizer::{TextTokenizer, TokenizerError};
use crate::spec::models::{Format, ModelSpec};

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Safetensors(#[from] SafetensorsError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// Opens a model file (GGUF) or folder (safetensors) and its tokenizer.
pub fn open_model(spec: &ModelSpec, path: &Path) -> Result<(GgufFile, TextTokenizer), OpenError> {
    let gguf = open_weights(spec, path)?;
    let tokenizer = open_tokenizer(spec, path, &gguf)?;
    Ok((gguf, tokenizer))
}

/// A model file (GGUF) or folder (safetensors), metadata read, tensors not.
pub fn open_weights(spec: &ModelSpec, path: &Path) -> Result<GgufFile, OpenError> {
    Ok(match spec.format {
        Format::Gguf => GgufFile::open(path)?,
        Format::Safetensors => crate::model::safetensors::open_dir(path)?,
    })
}

/// The model's tokenizer: `spec.tokenizer`, the folder's `tokenizer.json`
/// or the GGUF metadata of `gguf`.
pub fn open_tokenizer(
    spec: &ModelSpec,
    path: &Path,
    gguf: &GgufFile,
) -> Result<TextTokenizer, OpenError> {
    Ok(match (&spec.tokenizer, spec.format) {
        (Some(p), _) => TextTokenizer::from_json_file(p, Some(gguf))?,
        (None, Format::Safetensors) => {
            TextTokenizer::from_json_file(&path.join("tokenizer.json"), Some(gguf))?
        }
        (None, Format::Gguf) => TextTokenizer::from_gguf(gguf)?,
    })
}

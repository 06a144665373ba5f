//! The model's own tokenizer (`tokenizer.json`), with truncation set from the model's files
//! rather than whatever the file happens to carry.

use std::path::Path;

use tokenizers::{Tokenizer, TruncationParams};

#[derive(Debug, thiserror::Error)]
#[error("cannot use the tokenizer {path}: {detail}")]
pub struct TokenizerError {
    pub path: String,
    pub detail: String,
}

pub struct TextTokenizer {
    inner: Tokenizer,
    lowercase: bool,
    vocab_size: usize,
}

impl TextTokenizer {
    /// Loads `tokenizer.json`, truncating to `max_len` tokens (special tokens included) and never
    /// padding: batches are padded to their own longest member later.
    pub fn from_file(path: &Path, max_len: usize, lowercase: bool) -> Result<Self, TokenizerError> {
        let err = |detail: String| TokenizerError { path: path.display().to_string(), detail };
        let mut inner = Tokenizer::from_file(path).map_err(|e| err(e.to_string()))?;
        inner
            .with_truncation(Some(TruncationParams { max_length: max_len, ..TruncationParams::default() }))
            .map_err(|e| err(e.to_string()))?;
        inner.with_padding(None);
        let vocab_size = inner.get_vocab_size(true);
        Ok(TextTokenizer { inner, lowercase, vocab_size })
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Token ids of `text` with the model's special tokens, truncated.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        let encoding = if self.lowercase {
            self.inner.encode(text.to_lowercase(), true)
        } else {
            self.inner.encode(text, true)
        };
        encoding.map(|e| e.get_ids().to_vec()).map_err(|e| format!("cannot tokenize the input: {e}"))
    }
}

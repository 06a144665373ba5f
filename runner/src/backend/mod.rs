//! The narrow interface between the embeddings task and a model: a flat batch of token sequences in,
//! one pooled vector per sequence out. Models implement it; the task knows nothing else.

pub mod tokenizer;

pub use tokenizer::TextTokenizer;

/// Token sequences packed end to end: sequence `i` is `ids[offsets[i]..offsets[i + 1]]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    pub ids: Vec<u32>,
    pub offsets: Vec<usize>,
    pub max_len: usize,
}

impl Batch {
    pub fn new() -> Self {
        Batch { ids: Vec::new(), offsets: vec![0], max_len: 0 }
    }

    pub fn push(&mut self, seq: &[u32]) {
        self.ids.extend_from_slice(seq);
        self.offsets.push(self.ids.len());
        self.max_len = self.max_len.max(seq.len());
    }

    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn seq(&self, i: usize) -> &[u32] {
        &self.ids[self.offsets[i]..self.offsets[i + 1]]
    }

    /// Tokens the model computes once every sequence is padded to the longest.
    pub fn padded_tokens(&self) -> usize {
        self.len() * self.max_len
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("the model failed on a batch of {sequences} sequences of up to {max_len} tokens: {source}")]
    Forward {
        sequences: usize,
        max_len: usize,
        #[source]
        source: candle_core::Error,
    },
    #[error("the model failed during generation: {source}")]
    Generation {
        #[source]
        source: candle_core::Error,
    },
}

/// An embedding model. Called from one dedicated thread; implementations may keep scratch state.
pub trait Embedder: Send {
    /// Length of each returned vector.
    fn dimensions(&self) -> usize;

    /// Embeds every sequence of `batch`: `batch.len() * dimensions()` values, row by row, pooled
    /// and normalised as the model's own files say.
    fn embed(&mut self, batch: &Batch) -> Result<Vec<f32>, BackendError>;
}

/// Returns zero vectors without computing anything: measures everything around the model
/// (reading, parsing, tokenizing, writing) in benchmarks.
pub struct NullEmbedder {
    pub dimensions: usize,
}

impl Embedder for NullEmbedder {
    fn dimensions(&self) -> usize {
        self.dimensions
    }

    fn embed(&mut self, batch: &Batch) -> Result<Vec<f32>, BackendError> {
        Ok(vec![0.0; batch.len() * self.dimensions])
    }
}

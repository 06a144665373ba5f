//! GGUF files: typed access to the metadata the decoder needs, and the tensors either in their
//! own blocks (for the quantized kernels) or dequantized to f32 (for f32 GEMMs).

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};

use super::quant::{self, QRows};
use crate::models::ModelError;

pub struct Gguf {
    path: PathBuf,
    content: Content,
    reader: BufReader<File>,
}

impl Gguf {
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let bad = |detail: String| ModelError::BadFile { path: path.display().to_string(), detail };
        let file = File::open(path).map_err(|e| bad(e.to_string()))?;
        let mut reader = BufReader::new(file);
        // candle's reader trusts the header (an alignment of 0 divides by zero): a hostile file
        // must be an error, never a panic of the runner.
        let content = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Content::read(&mut reader)))
            .map_err(|_| bad("not a readable GGUF file: its header is malformed".into()))?
            .map_err(|e| bad(format!("not a readable GGUF file: {e}")))?;
        Ok(Gguf { path: path.to_path_buf(), content, reader })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn bad(&self, detail: String) -> ModelError {
        ModelError::BadFile { path: self.path.display().to_string(), detail }
    }

    pub fn architecture(&self) -> Result<String, ModelError> {
        self.string("general.architecture")?.ok_or_else(|| self.bad("no general.architecture key".into()))
    }

    fn value(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    pub fn string(&self, key: &str) -> Result<Option<String>, ModelError> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.bad(format!("{key} is {:?}, expected a string", other.value_type()))),
        }
    }

    pub fn usize(&self, key: &str) -> Result<Option<usize>, ModelError> {
        match self.value(key) {
            None => Ok(None),
            Some(v) => {
                as_usize(v).map(Some).ok_or_else(|| self.bad(format!("{key} is not a non-negative integer")))
            }
        }
    }

    pub fn required_usize(&self, key: &str) -> Result<usize, ModelError> {
        self.usize(key)?.ok_or_else(|| self.bad(format!("the metadata key {key} is missing")))
    }

    pub fn f32(&self, key: &str) -> Result<Option<f32>, ModelError> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::F32(v)) => Ok(Some(*v)),
            Some(Value::F64(v)) => Ok(Some(*v as f32)),
            Some(v) => {
                as_usize(v).map(|n| Some(n as f32)).ok_or_else(|| self.bad(format!("{key} is not a number")))
            }
        }
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>, ModelError> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.bad(format!("{key} is not a boolean"))),
        }
    }

    /// The array `key`, each item converted by `item` (`None` names the item `what` is not).
    fn array<T>(
        &self,
        key: &str,
        what: &str,
        item: impl Fn(&Value) -> Option<T>,
    ) -> Result<Option<Vec<T>>, ModelError> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| item(v).ok_or_else(|| self.bad(format!("{key} holds a non-{what}"))))
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(self.bad(format!("{key} is not an array"))),
        }
    }

    pub fn strings(&self, key: &str) -> Result<Option<Vec<String>>, ModelError> {
        self.array(key, "string", |v| match v {
            Value::String(s) => Some(s.clone()),
            _ => None,
        })
    }

    pub fn floats(&self, key: &str) -> Result<Option<Vec<f32>>, ModelError> {
        self.array(key, "float", |v| match v {
            Value::F32(x) => Some(*x),
            Value::F64(x) => Some(*x as f32),
            _ => None,
        })
    }

    pub fn integers(&self, key: &str) -> Result<Option<Vec<i64>>, ModelError> {
        self.array(key, "integer", as_i64)
    }

    /// The storage type of tensor `name` (F32 when absent).
    pub fn tensor_type(&self, name: &str) -> candle_core::quantized::GgmlDType {
        self.content.tensor_infos.get(name).map_or(candle_core::quantized::GgmlDType::F32, |i| i.ggml_dtype)
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Tensor `name` (a Linear weight, (out, in)) in its own blocks for the quantized kernels;
    /// `None` when its format is not one they run.
    pub fn blocks(&mut self, name: &str) -> Result<Option<QRows>, ModelError> {
        let dtype = self.tensor_type(name);
        if !quant::supports(dtype) {
            return Ok(None);
        }
        let weights =
            |source| ModelError::Weights { path: format!("{}:{name}", self.path.display()), source };
        let q = self.content.tensor(&mut self.reader, name, &Device::Cpu).map_err(weights)?;
        let [rows, cols] = *q.shape().dims() else {
            return Ok(None);
        };
        let data = q.data().map_err(weights)?;
        QRows::from_blocks(dtype, rows, cols, &data).map(Some).ok_or_else(|| {
            self.bad(format!("tensor {name} ({rows}x{cols}, {dtype:?}) has a size its format cannot have"))
        })
    }

    /// The tensor `name` in f32 on the CPU, shaped as candle orders GGUF dimensions:
    /// a Linear weight comes out (out, in).
    pub fn tensor(&mut self, name: &str) -> Result<Tensor, ModelError> {
        let weights =
            |source| ModelError::Weights { path: format!("{}:{name}", self.path.display()), source };
        let q = self.content.tensor(&mut self.reader, name, &Device::Cpu).map_err(weights)?;
        q.dequantize(&Device::Cpu).map_err(weights)
    }
}

fn as_i64(v: &Value) -> Option<i64> {
    Some(match v {
        Value::U8(x) => *x as i64,
        Value::I8(x) => *x as i64,
        Value::U16(x) => *x as i64,
        Value::I16(x) => *x as i64,
        Value::U32(x) => *x as i64,
        Value::I32(x) => *x as i64,
        Value::U64(x) => i64::try_from(*x).ok()?,
        Value::I64(x) => *x,
        _ => return None,
    })
}

fn as_usize(v: &Value) -> Option<usize> {
    as_i64(v).and_then(|x| usize::try_from(x).ok())
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::gguf_file;

    use super::*;

    /// A GGUF file with these metadata and no tensors.
    pub(crate) fn gguf_with(dir: &Path, metadata: &[(&str, Value)]) -> PathBuf {
        let path = dir.join("hostile.gguf");
        let mut file = std::fs::File::create(&path).expect("create");
        let refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
        gguf_file::write(&mut file, &refs, &[]).expect("write a GGUF");
        path
    }

    #[test]
    fn a_header_with_alignment_zero_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = gguf_with(dir.path(), &[("general.alignment", Value::U32(0))]);
        let err = Gguf::open(&path).err().expect("refused");
        assert!(err.to_string().contains("malformed"), "{err}");
    }

    #[test]
    fn zero_heads_or_layers_are_refused_with_the_shape_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (heads, layers) in [(0u32, 62u32), (4, 0)] {
            let path = gguf_with(
                dir.path(),
                &[
                    ("general.architecture", Value::String("gemma3".into())),
                    ("gemma3.embedding_length", Value::U32(64)),
                    ("gemma3.attention.head_count", Value::U32(heads)),
                    ("gemma3.block_count", Value::U32(layers)),
                    ("gemma3.feed_forward_length", Value::U32(128)),
                    ("gemma3.vocab_size", Value::U32(10)),
                ],
            );
            let g = Gguf::open(&path).expect("a readable header");
            let err = super::super::llama::LlamaConfig::from_gguf(&g).expect_err("refused");
            assert!(err.to_string().contains("inconsistent shape"), "{err}");
        }
    }
}

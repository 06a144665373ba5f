//! A decoder's vocabulary: the tokenizer (from `tokenizer.json`, or built from a GGUF file's
//! `tokenizer.ggml.*` metadata the way llama.cpp reads it), the bytes each token stands for
//! (so generated text and stop strings are tracked token by token without re-decoding), and
//! the special tokens that end a turn.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Value, json};
use tokenizers::Tokenizer;

use super::gguf::Gguf;
use super::spm::Spm;
use crate::models::ModelError;

/// GGUF token types (llama.cpp's `llama_token_type`).
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;

/// Control tokens that end a turn in common chat formats; llama.cpp treats them as
/// end-of-generation too, whatever the file's EOS id says.
const END_OF_TURN: [&str; 6] =
    ["<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>", "<|eom_id|>"];

/// The pre-tokenizer split expression llama.cpp uses for Llama 3 style vocabularies.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How text becomes ids.
enum Encoder {
    /// A Hugging Face tokenizer (`tokenizer.json`, or built from GGUF BPE metadata).
    Hf(Box<Tokenizer>),
    /// SentencePiece merges from GGUF metadata.
    Spm(Box<Spm>),
}

pub struct Vocab {
    encoder: Encoder,
    /// Output bytes of each id: empty for control tokens, which are never part of the text.
    pieces: Vec<Vec<u8>>,
    stop_ids: Vec<u32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// Prepend BOS to every prompt (unless a chat template already wrote it).
    pub add_bos: bool,
    pub bos_text: String,
    pub eos_text: String,
    pub chat_template: Option<String>,
}

impl Vocab {
    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Token ids of `text`; special-token markup in the text (a rendered chat template) becomes
    /// the special token itself. BOS is not added here: see [`Vocab::prompt_ids`].
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        match &self.encoder {
            Encoder::Hf(t) => t
                .encode(text, false)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| format!("cannot tokenize the prompt: {e}")),
            Encoder::Spm(spm) => Ok(spm.encode(text)),
        }
    }

    /// A prompt's ids with BOS in front when the model wants one and the text lacks it.
    pub fn prompt_ids(&self, text: &str) -> Result<Vec<u32>, String> {
        let mut ids = self.encode(text)?;
        if self.add_bos
            && let Some(bos) = self.bos
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    pub fn piece(&self, id: u32) -> &[u8] {
        self.pieces.get(id as usize).map_or(&[], Vec::as_slice)
    }

    pub fn is_stop(&self, id: u32) -> bool {
        self.stop_ids.contains(&id)
    }

    /// The text of `ids` as the user sees it (control tokens dropped, invalid UTF-8 replaced).
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| self.piece(id).iter().copied()).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Built from a GGUF file's metadata.
    pub fn from_gguf(gguf: &Gguf) -> Result<Self, ModelError> {
        let bad = |detail: String| ModelError::BadFile { path: gguf.path().display().to_string(), detail };
        let model = gguf.string("tokenizer.ggml.model")?.unwrap_or_default();
        if model == "llama" {
            return Self::sentencepiece_from_gguf(gguf);
        }
        if model != "gpt2" {
            return Err(ModelError::Unsupported {
                what: format!(
                    "GGUF tokenizer model `{model}` in {} (supported: gpt2 byte-level BPE and llama SentencePiece)",
                    gguf.path().display()
                ),
            });
        }
        let (doc, tokens, types) = Self::bpe_tokenizer_json(gguf)?;
        let tokenizer = Tokenizer::from_bytes(doc.to_string().as_bytes())
            .map_err(|e| bad(format!("cannot build a tokenizer from the GGUF vocabulary: {e}")))?;
        let unicode_to_byte = byte_level_decoder();
        let pieces = tokens
            .iter()
            .zip(&types)
            .map(|(t, &ty)| match ty {
                TYPE_CONTROL => Vec::new(),
                TYPE_USER_DEFINED => t.as_bytes().to_vec(),
                _ => byte_level_bytes(t, &unicode_to_byte),
            })
            .collect();
        Self::from_gguf_parts(gguf, &tokens, &types, pieces, false, Encoder::Hf(Box::new(tokenizer)))
    }

    /// A byte-level BPE GGUF vocabulary (`tokenizer.ggml.model` = `gpt2`) as the Hugging Face
    /// `tokenizer.json` that tokenizes like llama.cpp, with the tokens and their types.
    pub fn bpe_tokenizer_json(gguf: &Gguf) -> Result<(Value, Vec<String>, Vec<i64>), ModelError> {
        let bad = |detail: String| ModelError::BadFile { path: gguf.path().display().to_string(), detail };
        let tokens =
            gguf.strings("tokenizer.ggml.tokens")?.ok_or_else(|| bad("no tokenizer.ggml.tokens".into()))?;
        let merges = gguf.strings("tokenizer.ggml.merges")?.unwrap_or_default();
        let types = gguf.integers("tokenizer.ggml.token_type")?.unwrap_or_else(|| vec![1; tokens.len()]);
        if types.len() != tokens.len() {
            return Err(bad(format!("{} token types for {} tokens", types.len(), tokens.len())));
        }
        let pre = gguf.string("tokenizer.ggml.pre")?.unwrap_or_else(|| "default".into());
        let pre_tokenizer = match pre.as_str() {
            "default" | "gpt2" | "gpt-2" => {
                json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})
            }
            "smollm" => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]}),
            "llama3" | "llama-v3" | "llama-bpe" => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}),
            other => {
                return Err(ModelError::Unsupported {
                    what: format!(
                        "GGUF pre-tokenizer `{other}` in {} (supported: gpt2, smollm, llama3)",
                        gguf.path().display()
                    ),
                });
            }
        };
        let vocab: serde_json::Map<String, Value> =
            tokens.iter().enumerate().map(|(id, t)| (t.clone(), json!(id))).collect();
        let added: Vec<Value> = tokens
            .iter()
            .zip(&types)
            .enumerate()
            .filter(|(_, (_, ty))| matches!(**ty, TYPE_CONTROL | TYPE_USER_DEFINED))
            .map(|(id, (t, ty))| {
                json!({"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                       "normalized": false, "special": *ty == TYPE_CONTROL})
            })
            .collect();
        let doc = json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": null, "pre_tokenizer": pre_tokenizer, "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                      "ignore_merges": false, "vocab": vocab, "merges": merges},
        });
        Ok((doc, tokens, types))
    }

    /// A SentencePiece vocabulary (`tokenizer.ggml.model` = `llama`): tokens with scores.
    fn sentencepiece_from_gguf(gguf: &Gguf) -> Result<Self, ModelError> {
        let bad = |detail: String| ModelError::BadFile { path: gguf.path().display().to_string(), detail };
        let tokens =
            gguf.strings("tokenizer.ggml.tokens")?.ok_or_else(|| bad("no tokenizer.ggml.tokens".into()))?;
        let scores = gguf.floats("tokenizer.ggml.scores")?.unwrap_or_else(|| vec![0.0; tokens.len()]);
        let types = gguf.integers("tokenizer.ggml.token_type")?.unwrap_or_else(|| vec![1; tokens.len()]);
        if types.len() != tokens.len() || scores.len() != tokens.len() {
            return Err(bad(format!(
                "{} tokens, {} scores and {} types",
                tokens.len(),
                scores.len(),
                types.len()
            )));
        }
        let special: Vec<u32> = types
            .iter()
            .enumerate()
            .filter(|(_, t)| matches!(**t, TYPE_CONTROL | TYPE_USER_DEFINED))
            .map(|(i, _)| i as u32)
            .collect();
        let pieces = tokens
            .iter()
            .zip(&types)
            .map(|(t, &ty)| if ty == TYPE_CONTROL { Vec::new() } else { sentencepiece_bytes(t) })
            .collect();
        let unknown = gguf_token_id(gguf, "tokenizer.ggml.unknown_token_id", tokens.len())?;
        let add_space_prefix = gguf.bool("tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
        let spm = Spm::new(&tokens, scores, &special, unknown, add_space_prefix);
        Self::from_gguf_parts(gguf, &tokens, &types, pieces, true, Encoder::Spm(Box::new(spm)))
    }

    /// What both GGUF vocabularies read alike: special ids, BOS policy, chat template.
    fn from_gguf_parts(
        gguf: &Gguf,
        tokens: &[String],
        types: &[i64],
        pieces: Vec<Vec<u8>>,
        add_bos_default: bool,
        encoder: Encoder,
    ) -> Result<Self, ModelError> {
        let id = |key: &str| gguf_token_id(gguf, key, tokens.len());
        let (bos, eos, eot) = (
            id("tokenizer.ggml.bos_token_id")?,
            id("tokenizer.ggml.eos_token_id")?,
            id("tokenizer.ggml.eot_token_id")?,
        );
        let control: Vec<bool> = types.iter().map(|&t| t == TYPE_CONTROL).collect();
        let text = |id: Option<u32>| id.map(|i| tokens[i as usize].clone()).unwrap_or_default();
        Ok(Vocab {
            stop_ids: stop_ids(tokens, &control, [eos, eot]),
            pieces,
            bos,
            eos,
            add_bos: gguf.bool("tokenizer.ggml.add_bos_token")?.unwrap_or(add_bos_default),
            bos_text: text(bos),
            eos_text: text(eos),
            chat_template: gguf.string("tokenizer.chat_template")?,
            encoder,
        })
    }

    /// From a model folder's `tokenizer.json` and `tokenizer_config.json`.
    pub fn from_folder(
        dir: &Path,
        config_eos: Option<u32>,
        config_bos: Option<u32>,
    ) -> Result<Self, ModelError> {
        let path = dir.join("tokenizer.json");
        let bad = |detail: String| ModelError::BadFile { path: path.display().to_string(), detail };
        let raw = std::fs::read(&path).map_err(|_| ModelError::MissingFile {
            dir: dir.display().to_string(),
            file: "tokenizer.json",
        })?;
        let doc: Value = serde_json::from_slice(&raw).map_err(|e| bad(e.to_string()))?;
        let tokenizer = Tokenizer::from_bytes(&raw).map_err(|e| bad(e.to_string()))?;
        let byte_level = doc["decoder"]["type"] == "ByteLevel"
            || doc["decoder"]["decoders"]
                .as_array()
                .is_some_and(|d| d.iter().any(|x| x["type"] == "ByteLevel"));
        let size = tokenizer.get_vocab_size(true);
        let special: HashMap<u32, bool> =
            tokenizer.get_added_tokens_decoder().into_iter().map(|(id, t)| (id, t.special)).collect();
        let unicode_to_byte = byte_level_decoder();
        let mut tokens = Vec::with_capacity(size);
        let mut control = Vec::with_capacity(size);
        let mut pieces = Vec::with_capacity(size);
        for id in 0..size as u32 {
            let t = tokenizer.id_to_token(id).unwrap_or_default();
            let is_special = special.get(&id).copied().unwrap_or(false);
            pieces.push(if is_special {
                Vec::new()
            } else if special.contains_key(&id) {
                t.as_bytes().to_vec()
            } else if byte_level {
                byte_level_bytes(&t, &unicode_to_byte)
            } else {
                sentencepiece_bytes(&t)
            });
            control.push(is_special);
            tokens.push(t);
        }
        let config: Value = std::fs::read(dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let named = |key: &str| -> Option<u32> {
            let v = &config[key];
            let text = v.as_str().or_else(|| v["content"].as_str())?;
            tokenizer.token_to_id(text)
        };
        let bos = named("bos_token").or(config_bos);
        let eos = named("eos_token").or(config_eos);
        let chat_template = std::fs::read_to_string(dir.join("chat_template.jinja")).ok().or_else(|| {
            match &config["chat_template"] {
                Value::String(s) => Some(s.clone()),
                Value::Array(list) => list
                    .iter()
                    .find(|t| t["name"] == "default")
                    .and_then(|t| t["template"].as_str().map(str::to_string)),
                _ => None,
            }
        });
        let text = |id: Option<u32>| id.map(|i| tokens[i as usize].clone()).unwrap_or_default();
        Ok(Vocab {
            stop_ids: stop_ids(&tokens, &control, [eos, None]),
            pieces,
            bos,
            eos,
            add_bos: config["add_bos_token"].as_bool().unwrap_or(false),
            bos_text: text(bos),
            eos_text: text(eos),
            chat_template,
            encoder: Encoder::Hf(Box::new(tokenizer)),
        })
    }
}

/// A token id from GGUF metadata, `None` when absent or outside the vocabulary.
fn gguf_token_id(gguf: &Gguf, key: &str, vocab: usize) -> Result<Option<u32>, ModelError> {
    Ok(gguf.usize(key)?.and_then(|v| u32::try_from(v).ok()).filter(|&v| (v as usize) < vocab))
}

fn stop_ids(tokens: &[String], control: &[bool], named: [Option<u32>; 2]) -> Vec<u32> {
    let mut ids: Vec<u32> = named.into_iter().flatten().collect();
    for (id, t) in tokens.iter().enumerate() {
        if control[id] && END_OF_TURN.contains(&t.as_str()) && !ids.contains(&(id as u32)) {
            ids.push(id as u32);
        }
    }
    ids
}

/// GPT-2's reversible map from bytes to printable characters, inverted.
fn byte_level_decoder() -> HashMap<char, u8> {
    let mut printable: Vec<u8> = (b'!'..=b'~').chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut chars: Vec<u32> = printable.iter().map(|&b| b as u32).collect();
    let mut extra = 0;
    for b in 0..=255u8 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + extra);
            extra += 1;
        }
    }
    printable.into_iter().zip(chars).filter_map(|(b, c)| char::from_u32(c).map(|c| (c, b))).collect()
}

fn byte_level_bytes(token: &str, map: &HashMap<char, u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(token.len());
    for c in token.chars() {
        match map.get(&c) {
            Some(&b) => out.push(b),
            None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    out
}

/// SentencePiece pieces: `▁` is a space and `<0xAB>` one raw byte.
fn sentencepiece_bytes(token: &str) -> Vec<u8> {
    if let Some(hex) = token.strip_prefix("<0x").and_then(|t| t.strip_suffix('>'))
        && hex.len() == 2
        && let Ok(b) = u8::from_str_radix(hex, 16)
    {
        return vec![b];
    }
    token.replace('\u{2581}', " ").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_map_round_trips_every_byte() {
        let map = byte_level_decoder();
        assert_eq!(map.len(), 256);
        assert_eq!(byte_level_bytes("Ġhello", &map), b" hello");
        assert_eq!(byte_level_bytes("Ċ", &map), b"\n");
    }

    #[test]
    fn sentencepiece_pieces_map_spaces_and_bytes() {
        assert_eq!(sentencepiece_bytes("\u{2581}the"), b" the");
        assert_eq!(sentencepiece_bytes("<0x0A>"), b"\n");
    }
}

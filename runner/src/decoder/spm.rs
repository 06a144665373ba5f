//! SentencePiece-style tokenization for GGUF vocabularies of type `llama` (Gemma, Llama 2):
//! the text split on special tokens, spaces written as `▁`, then adjacent pieces merged, best
//! score first, while their concatenation is in the vocabulary, as llama.cpp does; characters
//! outside the vocabulary fall back to `<0xAB>` byte tokens.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use aho_corasick::{AhoCorasick, MatchKind};

pub struct Spm {
    ids: HashMap<String, u32>,
    scores: Vec<f32>,
    bytes: [Option<u32>; 256],
    unknown: Option<u32>,
    /// Special and user-defined tokens, matched in the raw text first.
    specials: Option<(AhoCorasick, Vec<u32>)>,
    add_space_prefix: bool,
}

#[derive(PartialEq)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl Eq for Bigram {}

impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        // Highest score first; on ties the leftmost pair.
        self.score.total_cmp(&other.score).then(other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Spm {
    /// `special` lists the ids matched verbatim in raw text (control and user-defined tokens).
    pub fn new(
        tokens: &[String],
        scores: Vec<f32>,
        special: &[u32],
        unknown: Option<u32>,
        add_space_prefix: bool,
    ) -> Self {
        let ids: HashMap<String, u32> =
            tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let mut bytes = [None; 256];
        for (b, slot) in bytes.iter_mut().enumerate() {
            *slot = ids.get(&format!("<0x{b:02X}>")).copied();
        }
        let patterns: Vec<(&str, u32)> = special
            .iter()
            .map(|&id| (tokens[id as usize].as_str(), id))
            .filter(|(t, _)| !t.is_empty())
            .collect();
        let specials = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(patterns.iter().map(|(t, _)| *t))
            .ok()
            .map(|ac| (ac, patterns.iter().map(|(_, id)| *id).collect()));
        Spm { ids, scores, bytes, unknown, specials, add_space_prefix }
    }

    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let mut at = 0;
        if let Some((ac, ids)) = &self.specials {
            for m in ac.find_iter(text) {
                self.encode_piece(&text[at..m.start()], at == 0, &mut out);
                out.push(ids[m.pattern().as_usize()]);
                at = m.end();
            }
        }
        self.encode_piece(&text[at..], at == 0, &mut out);
        out
    }

    fn encode_piece(&self, text: &str, first: bool, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let mut s = String::with_capacity(text.len() + 3);
        if self.add_space_prefix && first {
            s.push('\u{2581}');
        }
        s.push_str(&text.replace(' ', "\u{2581}"));
        // Symbols as (start, len) in bytes, linked left and right; len 0 marks a merged-away one.
        let mut sym: Vec<(usize, usize)> = s.char_indices().map(|(i, c)| (i, c.len_utf8())).collect();
        let n = sym.len();
        let mut prev: Vec<Option<usize>> = (0..n).map(|i| i.checked_sub(1)).collect();
        let mut next: Vec<Option<usize>> = (0..n).map(|i| Some(i + 1).filter(|&j| j < n)).collect();
        let mut heap = BinaryHeap::new();
        let push = |heap: &mut BinaryHeap<Bigram>, sym: &[(usize, usize)], l: usize, r: usize| {
            let (start, len) = (sym[l].0, sym[l].1 + sym[r].1);
            if let Some(&id) = self.ids.get(&s[start..start + len]) {
                heap.push(Bigram {
                    score: self.scores.get(id as usize).copied().unwrap_or(0.0),
                    left: l,
                    right: r,
                    len,
                });
            }
        };
        for i in 1..n {
            push(&mut heap, &sym, i - 1, i);
        }
        while let Some(b) = heap.pop() {
            let r = b.right;
            // Stale: one side changed since this pair was queued.
            if next[b.left] != Some(r)
                || sym[b.left].1 == 0
                || sym[r].1 == 0
                || sym[b.left].1 + sym[r].1 != b.len
            {
                continue;
            }
            sym[b.left].1 = b.len;
            sym[r].1 = 0;
            next[b.left] = next[r];
            if let Some(nr) = next[r] {
                prev[nr] = Some(b.left);
            }
            if let Some(p) = prev[b.left] {
                push(&mut heap, &sym, p, b.left);
            }
            if let Some(nr) = next[b.left] {
                push(&mut heap, &sym, b.left, nr);
            }
        }
        let mut i = Some(0);
        while let Some(k) = i {
            let (start, len) = sym[k];
            let piece = &s[start..start + len];
            match self.ids.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    for b in piece.bytes() {
                        if let Some(id) = self.bytes[b as usize].or(self.unknown) {
                            out.push(id);
                        }
                    }
                }
            }
            i = next[k];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_best_scores_first_and_falls_back_to_bytes() {
        let tokens: Vec<String> = ["<unk>", "<0x21>", "\u{2581}", "a", "b", "ab", "\u{2581}ab", "<eot>"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = vec![0.0, 0.0, -1.0, -1.0, -1.0, -0.5, -0.1, 0.0];
        let spm = Spm::new(&tokens, scores, &[7], Some(0), false);
        assert_eq!(spm.encode("ab"), vec![5]);
        assert_eq!(spm.encode(" ab"), vec![6]);
        assert_eq!(spm.encode("ab!<eot>b"), vec![5, 1, 7, 4]);
    }
}

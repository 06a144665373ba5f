//! The batched KV cache: one pool of fixed-size blocks shared by every running sequence. A
//! sequence holds a table of block ids and grows a block at a time, so memory follows the
//! tokens actually held, and the pool's size is the memory budget: when it is full, new
//! sequences wait (and, as a last resort, the newest running one is set back to wait).

use std::sync::Mutex;

/// Tokens per block: small enough that a sequence wastes little, large enough that block
/// tables stay short.
pub const BLOCK: usize = 16;

/// One layer's keys and values: row `block * BLOCK + i` holds token `i` of that block.
pub struct LayerKv {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

pub struct KvCache {
    layers: Vec<Mutex<LayerKv>>,
    free: Vec<u32>,
    blocks: usize,
}

impl KvCache {
    /// Bytes one token takes across all layers (keys and values, f32).
    pub fn bytes_per_token(layers: usize, kv_dim: usize) -> usize {
        layers * 2 * kv_dim * std::mem::size_of::<f32>()
    }

    /// A pool of `blocks` blocks. The buffers are zero-allocated, so the OS commits pages only
    /// as tokens are written: resident memory tracks use, not the budget.
    pub fn new(layers: usize, kv_dim: usize, blocks: usize) -> Self {
        let rows = blocks * BLOCK * kv_dim;
        KvCache {
            layers: (0..layers)
                .map(|_| Mutex::new(LayerKv { k: vec![0.0; rows], v: vec![0.0; rows] }))
                .collect(),
            // Popped from the end: low ids first, so a small job touches little memory.
            free: (0..blocks as u32).rev().collect(),
            blocks,
        }
    }

    pub fn layer(&self, i: usize) -> &Mutex<LayerKv> {
        &self.layers[i]
    }

    pub fn total_blocks(&self) -> usize {
        self.blocks
    }

    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }

    pub fn alloc(&mut self) -> Option<u32> {
        self.free.pop()
    }

    pub fn release(&mut self, blocks: &mut Vec<u32>) {
        self.free.append(blocks);
    }
}

/// Blocks needed to hold `tokens` tokens.
pub fn blocks_for(tokens: usize) -> usize {
    tokens.div_ceil(BLOCK)
}

/// The cache row of position `pos` in a sequence with block table `table`.
#[inline]
pub fn row(table: &[u32], pos: usize) -> usize {
    table[pos / BLOCK] as usize * BLOCK + pos % BLOCK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_come_back_to_the_pool() {
        let mut cache = KvCache::new(2, 4, 3);
        let mut held: Vec<u32> = (0..3).filter_map(|_| cache.alloc()).collect();
        assert_eq!(held, vec![0, 1, 2]);
        assert_eq!(cache.alloc(), None);
        cache.release(&mut held);
        assert_eq!(cache.free_blocks(), 3);
        assert_eq!(row(&[2, 0], 17), 1);
        assert_eq!(row(&[2, 0], 3), 2 * BLOCK + 3);
    }
}

//! Packs sequences into batches: sorted by length so padding stays small, bounded by a count
//! and by padded tokens (what the model actually computes).

/// Batches of indices into `lengths`. Every index appears exactly once. A batch holds at most
/// `max_size` sequences and `len(longest) * count <= max_tokens`, except that a single sequence
/// longer than `max_tokens` still gets a batch of its own.
pub fn plan(lengths: &[usize], max_size: usize, max_tokens: usize) -> Vec<Vec<usize>> {
    let max_size = max_size.max(1);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    // Stable: equal lengths keep input order, so plans are deterministic.
    order.sort_by_key(|&i| lengths[i]);
    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for i in order {
        // Ascending order: the newcomer is the longest, so it sets the padded width.
        let padded = lengths[i] * (current.len() + 1);
        if !current.is_empty() && (current.len() == max_size || padded > max_tokens) {
            batches.push(std::mem::take(&mut current));
        }
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn padded(lengths: &[usize], batch: &[usize]) -> usize {
        batch.iter().map(|&i| lengths[i]).max().unwrap_or(0) * batch.len()
    }

    #[test]
    fn every_sequence_lands_in_exactly_one_batch_within_bounds() {
        let lengths: Vec<usize> = (0..500).map(|i| 5 + (i * 37) % 120).collect();
        for (size, tokens) in [(1, 10_000), (8, 10_000), (32, 2_000), (64, 300)] {
            let batches = plan(&lengths, size, tokens);
            let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..500).collect::<Vec<_>>());
            for b in &batches {
                assert!(b.len() <= size);
                assert!(b.len() == 1 || padded(&lengths, b) <= tokens, "{b:?}");
            }
        }
    }

    #[test]
    fn sorting_by_length_cuts_padding() {
        let lengths: Vec<usize> = (0..256).map(|i| if i % 2 == 0 { 8 } else { 100 }).collect();
        let sorted: usize = plan(&lengths, 32, usize::MAX).iter().map(|b| padded(&lengths, b)).sum();
        let in_order: usize =
            lengths.chunks(32).map(|c| c.iter().max().copied().unwrap_or(0) * c.len()).sum();
        assert_eq!(in_order, 256 * 100);
        assert_eq!(sorted, 128 * 8 + 128 * 100);
    }

    #[test]
    fn an_oversized_sequence_gets_its_own_batch() {
        assert_eq!(plan(&[3, 50, 4], 8, 20), vec![vec![0, 2], vec![1]]);
        assert!(plan(&[], 8, 20).is_empty());
    }
}

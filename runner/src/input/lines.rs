//! Streams the lines of one shard of an object with bounded memory, reconnecting after a
//! dropped connection.
//!
//! Guarantees: every line that starts inside the shard's range is yielded exactly once, in order,
//! with its 1-based number within the shard and the offset just past it (where a resumed run
//! starts reading). A line over the size limit is yielded as [`LineBody::TooLong`] without being
//! held in memory.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;

use crate::storage::{ByteReader, ObjectStore, StorageError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineBody {
    Text(Vec<u8>),
    /// Longer than the limit; `len` bytes were skipped.
    TooLong {
        len: u64,
    },
    /// Only whitespace: not a request, but it still counts for line numbers.
    Blank,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// 1-based, within the shard.
    pub number: u64,
    /// Absolute offset just past this line's newline.
    pub end: u64,
    pub body: LineBody,
}

/// How many times a dropped stream is reopened at the same offset before the error is returned.
const REOPEN_ATTEMPTS: u32 = 5;

pub struct LineReader {
    store: Arc<dyn ObjectStore>,
    key: String,
    src: ByteReader,
    /// Absolute offset of the next byte `src` yields.
    pos: u64,
    /// Lines that start at or after `end` belong to the next shard.
    end: u64,
    next_number: u64,
    max_line: usize,
    /// The input version the job started with: every (re)open reads only that version.
    version: Option<String>,
    /// Where the next line starts when that is not `pos` (`u64::MAX` otherwise): after a
    /// skipped byte-order mark the first line starts at 0, so it is the first shard's even when
    /// that shard ends inside the mark (the property test found a 4-byte file in 2 shards that
    /// lost its only line).
    line_start: u64,
}

async fn open(
    store: &dyn ObjectStore,
    key: &str,
    version: Option<&str>,
    offset: u64,
) -> Result<ByteReader, StorageError> {
    match version {
        Some(v) => store.read_version_from(key, offset, v).await,
        None => store.read_from(key, offset).await,
    }
}

impl LineReader {
    /// Opens the shard `[start, end)` of `key`, skipping the partial line that an earlier shard owns.
    pub async fn open_shard(
        store: Arc<dyn ObjectStore>,
        key: &str,
        version: Option<&str>,
        (start, end): (u64, u64),
        max_line: usize,
    ) -> Result<Self, StorageError> {
        if start == 0 {
            let mut reader = Self::resume(store, key, version, 0, end, 1, max_line).await?;
            reader.skip_bom().await?;
            return Ok(reader);
        }
        // The byte before `start` decides: a newline there means a line starts exactly at `start`.
        let mut reader = Self::resume(store, key, version, start - 1, end, 1, max_line).await?;
        reader.skip_through_newline().await?;
        Ok(reader)
    }

    /// Continues at `offset`, a line start recorded by a checkpoint.
    pub async fn resume(
        store: Arc<dyn ObjectStore>,
        key: &str,
        version: Option<&str>,
        offset: u64,
        end: u64,
        next_number: u64,
        max_line: usize,
    ) -> Result<Self, StorageError> {
        let src = open(store.as_ref(), key, version, offset).await?;
        Ok(LineReader {
            store,
            key: key.to_string(),
            src,
            pos: offset,
            end,
            next_number,
            max_line,
            version: version.map(str::to_string),
            line_start: u64::MAX,
        })
    }

    /// The offset where the next line starts.
    pub fn position(&self) -> u64 {
        self.pos
    }

    async fn fill(&mut self) -> Result<&[u8], StorageError> {
        let mut attempt = 0;
        loop {
            match self.src.fill_buf().await {
                Ok(_) => break,
                Err(e) if attempt < REOPEN_ATTEMPTS => {
                    attempt += 1;
                    tracing::warn!(uri = %self.store.uri(&self.key), offset = self.pos, attempt, error = %e, "input stream broke; reopening");
                    tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
                    match open(self.store.as_ref(), &self.key, self.version.as_deref(), self.pos).await {
                        Ok(src) => self.src = src,
                        Err(e) if e.is_transient() => continue,
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => {
                    return Err(StorageError::Io { op: "read", uri: self.store.uri(&self.key), source: e });
                }
            }
        }
        // Already buffered, so this does no IO; returning the first borrow from inside the loop
        // is what the borrow checker cannot accept yet.
        self.src.fill_buf().await.map_err(|e| StorageError::Io {
            op: "read",
            uri: self.store.uri(&self.key),
            source: e,
        })
    }

    fn consume(&mut self, n: usize) {
        self.src.as_mut().consume(n);
        self.pos += n as u64;
    }

    async fn skip_bom(&mut self) -> Result<(), StorageError> {
        const BOM: &[u8] = b"\xEF\xBB\xBF";
        let buf = self.fill().await?;
        if buf.starts_with(BOM) {
            let start = self.pos;
            self.consume(BOM.len());
            self.line_start = start;
        }
        Ok(())
    }

    async fn skip_through_newline(&mut self) -> Result<(), StorageError> {
        loop {
            let buf = self.fill().await?;
            if buf.is_empty() {
                return Ok(());
            }
            match memchr::memchr(b'\n', buf) {
                Some(i) => {
                    self.consume(i + 1);
                    return Ok(());
                }
                None => {
                    let n = buf.len();
                    self.consume(n);
                }
            }
        }
    }

    /// The next line of the shard, or `None` at its end.
    pub async fn next_line(&mut self) -> Result<Option<Line>, StorageError> {
        let starts_at = std::mem::replace(&mut self.line_start, u64::MAX).min(self.pos);
        if starts_at >= self.end {
            return Ok(None);
        }
        let mut text = Vec::new();
        let mut len: u64 = 0;
        let mut saw_any = false;
        loop {
            let max_line = self.max_line;
            let buf = self.fill().await?;
            if buf.is_empty() {
                if !saw_any {
                    return Ok(None);
                }
                break;
            }
            saw_any = true;
            let (take, done) = match memchr::memchr(b'\n', buf) {
                Some(i) => (i, true),
                None => (buf.len(), false),
            };
            if len + take as u64 <= max_line as u64 {
                text.extend_from_slice(&buf[..take]);
            } else if !text.is_empty() {
                text = Vec::new(); // over the limit: stop holding it
            }
            len += take as u64;
            self.consume(take + usize::from(done));
            if done {
                break;
            }
        }
        let number = self.next_number;
        self.next_number += 1;
        if text.last() == Some(&b'\r') {
            text.pop();
            len = len.saturating_sub(1);
        }
        let body = if len > self.max_line as u64 {
            LineBody::TooLong { len }
        } else if text.iter().all(u8::is_ascii_whitespace) {
            LineBody::Blank
        } else {
            LineBody::Text(text)
        };
        Ok(Some(Line { number, end: self.pos, body }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::shard_range;
    use crate::storage::LocalStore;
    use barge_api::ShardId;
    use bytes::Bytes;

    async fn store_with(content: &str) -> (tempfile::TempDir, Arc<dyn ObjectStore>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(dir.path().to_path_buf());
        store.put("in.jsonl", Bytes::from(content.to_string())).await.expect("put");
        (dir, Arc::new(store))
    }

    async fn read_all(reader: &mut LineReader) -> Vec<Line> {
        let mut out = Vec::new();
        while let Some(line) = reader.next_line().await.expect("read") {
            out.push(line);
        }
        out
    }

    fn text(line: &Line) -> String {
        match &line.body {
            LineBody::Text(t) => String::from_utf8_lossy(t).into_owned(),
            other => format!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn numbers_lines_marks_blank_and_too_long_ones_and_strips_crlf() {
        let (_d, store) = store_with("\u{feff}a\r\n\n   \nbbbbbbbbbbbb\nc").await;
        let mut r = LineReader::open_shard(store, "in.jsonl", None, (0, u64::MAX), 5).await.expect("open");
        let lines = read_all(&mut r).await;
        let shown: Vec<_> = lines.iter().map(|l| (l.number, text(l))).collect();
        assert_eq!(
            shown,
            [
                (1, "a".to_string()),
                (2, "Blank".into()),
                (3, "Blank".into()),
                (4, "TooLong { len: 12 }".into()),
                (5, "c".into())
            ]
        );
        assert_eq!(lines[0].end, 6); // BOM (3) + "a\r\n"
    }

    /// The first line starts at byte 0, its byte-order mark included: it is the first shard's
    /// even when that shard ends inside the mark.
    #[tokio::test]
    async fn a_first_shard_that_ends_inside_the_byte_order_mark_still_reads_the_first_line() {
        let (_d, store) = store_with("\u{feff}a").await;
        let mut first =
            LineReader::open_shard(store.clone(), "in.jsonl", None, (0, 2), 64).await.expect("open");
        let lines = read_all(&mut first).await;
        assert_eq!(lines.iter().map(text).collect::<Vec<_>>(), ["a"]);
        let mut second = LineReader::open_shard(store, "in.jsonl", None, (2, 4), 64).await.expect("open");
        assert!(read_all(&mut second).await.is_empty(), "and only that shard reads it");
    }

    #[tokio::test]
    async fn shards_split_lines_exactly_once_at_any_boundary() {
        let content: String = (0..40).map(|i| format!("line-{i}-{}\n", "x".repeat(i % 7))).collect();
        let (_d, store) = store_with(&content).await;
        let size = content.len() as u64;
        for count in 1..=9 {
            let mut seen = Vec::new();
            for index in 0..count {
                let range = shard_range(size, ShardId { index, count });
                let mut r = LineReader::open_shard(store.clone(), "in.jsonl", None, range, 1 << 20)
                    .await
                    .expect("open");
                seen.extend(read_all(&mut r).await.iter().map(text));
            }
            let expected: Vec<_> = content.lines().map(str::to_string).collect();
            assert_eq!(seen, expected, "{count} shards");
        }
    }

    /// An input replaced mid-run was read as a mix of two versions: a reader pinned to the
    /// version the job started with refuses the new one instead.
    #[tokio::test]
    async fn a_pinned_reader_refuses_an_input_replaced_since_the_job_started() {
        let (_d, store) = store_with("one\ntwo\nthree\n").await;
        let started = store.head("in.jsonl").await.expect("head").expect("exists").etag;
        let mut r = LineReader::open_shard(store.clone(), "in.jsonl", Some(&started), (0, 14), 100)
            .await
            .expect("open");
        let first = r.next_line().await.expect("read").expect("a line");
        store.put("in.jsonl", bytes::Bytes::from_static(b"other\ncontent, longer\n")).await.expect("replace");
        let err = LineReader::resume(store.clone(), "in.jsonl", Some(&started), first.end, 14, 2, 100)
            .await
            .err()
            .expect("refused");
        assert!(matches!(err, StorageError::Changed { .. }), "{err}");
        assert!(err.to_string().contains("changed while the job read it"), "{err}");
    }

    #[tokio::test]
    async fn resuming_at_a_recorded_offset_continues_numbering() {
        let (_d, store) = store_with("one\ntwo\nthree\n").await;
        let mut r =
            LineReader::open_shard(store.clone(), "in.jsonl", None, (0, 14), 100).await.expect("open");
        let first = r.next_line().await.expect("read").expect("a line");
        let mut r = LineReader::resume(store, "in.jsonl", None, first.end, 14, 2, 100).await.expect("resume");
        let rest: Vec<_> = read_all(&mut r).await.iter().map(|l| (l.number, text(l))).collect();
        assert_eq!(rest, [(2, "two".to_string()), (3, "three".into())]);
    }
}

//! A container's termination message, with the kubelet's limits: the message file's first
//! 4 KiB, or under `FallbackToLogsOnError` (when the file is empty and the exit code is not 0)
//! the log's last 80 lines, at most 2 KiB.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

pub const MAX_MESSAGE_BYTES: usize = 4096;
pub const FALLBACK_LOG_LINES: usize = 80;
pub const FALLBACK_LOG_BYTES: usize = 2048;
pub const FALLBACK_TO_LOGS_ON_ERROR: &str = "FallbackToLogsOnError";

/// The message from the file's content, falling back to `log_tail()` where the policy says so.
pub fn message(
    file: &[u8],
    policy: Option<&str>,
    exit_code: i32,
    log_tail: impl FnOnce() -> Vec<u8>,
) -> String {
    let file = &file[..file.len().min(MAX_MESSAGE_BYTES)];
    if file.is_empty() && exit_code != 0 && policy == Some(FALLBACK_TO_LOGS_ON_ERROR) {
        return tail(&log_tail(), FALLBACK_LOG_LINES, FALLBACK_LOG_BYTES);
    }
    String::from_utf8_lossy(file).into_owned()
}

/// The last `lines` lines of `log`, cut to its last `bytes` bytes (at a character boundary).
pub fn tail(log: &[u8], lines: usize, bytes: usize) -> String {
    let body = log.strip_suffix(b"\n").unwrap_or(log);
    let start =
        body.iter().enumerate().rev().filter(|(_, b)| **b == b'\n').nth(lines - 1).map_or(0, |(i, _)| i + 1);
    let kept = &log[start.max(log.len().saturating_sub(bytes))..];
    let text = String::from_utf8_lossy(kept);
    text.trim_start_matches('\u{FFFD}').to_string()
}

/// Reads the message of a container that exited with `exit_code`.
pub fn read(message_file: &Path, log_file: &Path, policy: Option<&str>, exit_code: i32) -> String {
    let mut content = Vec::new();
    if let Ok(f) = std::fs::File::open(message_file) {
        // A missing or unreadable file is an empty message, as for the kubelet.
        let _ = f.take(MAX_MESSAGE_BYTES as u64).read_to_end(&mut content);
    }
    message(&content, policy, exit_code, || read_end(log_file, 64 * 1024))
}

/// The last `bytes` bytes of a file; empty when it cannot be read.
fn read_end(path: &Path, bytes: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let Ok(mut f) = std::fs::File::open(path) else { return out };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if f.seek(SeekFrom::Start(len.saturating_sub(bytes))).is_ok() {
        let _ = f.read_to_end(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_wins_when_it_has_content() {
        let m = message(b"{\"done\":3}", Some(FALLBACK_TO_LOGS_ON_ERROR), 1, || b"log".to_vec());
        assert_eq!(m, "{\"done\":3}");
    }

    #[test]
    fn an_empty_file_falls_back_to_the_log_only_on_error_and_when_asked() {
        assert_eq!(message(b"", Some(FALLBACK_TO_LOGS_ON_ERROR), 2, || b"boom\n".to_vec()), "boom\n");
        assert_eq!(message(b"", Some(FALLBACK_TO_LOGS_ON_ERROR), 0, || b"boom\n".to_vec()), "");
        assert_eq!(message(b"", Some("File"), 2, || b"boom\n".to_vec()), "");
        assert_eq!(message(b"", None, 2, || b"boom\n".to_vec()), "");
    }

    #[test]
    fn a_long_message_is_cut_at_four_kib() {
        let long = vec![b'x'; 5000];
        assert_eq!(message(&long, None, 0, Vec::new).len(), MAX_MESSAGE_BYTES);
    }

    #[test]
    fn the_log_fallback_keeps_the_last_80_lines_and_2_kib() {
        let log: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        let t = tail(log.as_bytes(), FALLBACK_LOG_LINES, FALLBACK_LOG_BYTES);
        assert!(t.starts_with("line 21\n"), "{t}");
        assert!(t.ends_with("line 100\n"));
        let wide: String = (1..=10).map(|i| format!("{i}{}\n", "y".repeat(500))).collect();
        let t = tail(wide.as_bytes(), FALLBACK_LOG_LINES, FALLBACK_LOG_BYTES);
        assert_eq!(t.len(), FALLBACK_LOG_BYTES);
        assert!(t.ends_with("y\n"));
    }

    #[test]
    fn a_short_log_is_kept_whole() {
        assert_eq!(tail(b"a\nb", 80, 2048), "a\nb");
        assert_eq!(tail(b"", 80, 2048), "");
    }
}
